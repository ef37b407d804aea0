"""Bounded-memory reads of a finished mosaic store for the report.

Nothing here ever holds a full-resolution array of the whole mosaic: previews are
read with an integer stride in chunk-aligned pieces (zarr decodes whole chunks, so
a piece is a band of whole chunk rows by as many whole chunk columns as fit in
``max_piece_bytes``), and scattered sample points are gathered chunk by chunk.
"""
from __future__ import annotations

import math
import sqlite3
import warnings
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import zarr

PIECE_BYTES = 16 * 2**20


def open_store(path: str | Path) -> zarr.Group:
    """The store's zarr group, read-only (the journal file in it is not a zarr node)."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such store")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        group = zarr.open_group(str(path), mode="r")
    return group


def has_array(group: zarr.Group, name: str) -> bool:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            node = group[name]
        except KeyError:
            return False
    return isinstance(node, zarr.Array)


def get_array(group: zarr.Group, name: str) -> zarr.Array | None:
    return group[name] if has_array(group, name) else None


def read_unit(arr: zarr.Array) -> tuple[int, int]:
    """Rows and columns of the array's unit of decoding (shards when sharded, else chunks)."""
    unit = getattr(arr, "shards", None) or arr.chunks
    return int(unit[0]), int(unit[1])


def pieces(y0: int, y1: int, x0: int, x1: int, unit: tuple[int, int], bytes_per_px: int,
           max_piece_bytes: int = PIECE_BYTES) -> Iterator[tuple[int, int, int, int]]:
    """Chunk-aligned (r0, r1, c0, c1) pieces of [y0, y1) x [x0, x1): one chunk row high,
    as many whole chunk columns wide as fit in ``max_piece_bytes`` (at least one)."""
    ur, uc = max(1, unit[0]), max(1, unit[1])
    r = y0
    while r < y1:
        r_end = min(y1, (r // ur + 1) * ur)
        per = max(1, int(max_piece_bytes) // max(1, ur * uc * bytes_per_px))
        c = x0
        while c < x1:
            c_end = min(x1, (c // uc + per) * uc)
            yield r, r_end, c, c_end
            c = c_end
        r = r_end


def strided(arr: zarr.Array, box: tuple[int, int, int, int], stride: int, *,
            dtype: Any = None, max_piece_bytes: int = PIECE_BYTES) -> np.ndarray:
    """``arr[y0:y1:stride, x0:x1:stride, ...]`` read piece by piece (bounded memory)."""
    y0, y1, x0, x1 = (int(v) for v in box)
    stride = max(1, int(stride))
    extra = tuple(int(n) for n in arr.shape[2:])
    dtype = np.dtype(dtype or arr.dtype)
    out = np.zeros((len(range(y0, y1, stride)), len(range(x0, x1, stride))) + extra, dtype=dtype)
    bpp = int(np.dtype(arr.dtype).itemsize * max(1, int(np.prod(extra)) if extra else 1))
    for r0, r1, c0, c1 in pieces(y0, y1, x0, x1, read_unit(arr), bpp, max_piece_bytes):
        fr = r0 + ((y0 - r0) % stride)
        fc = c0 + ((x0 - c0) % stride)
        if fr >= r1 or fc >= c1:
            continue
        part = np.asarray(arr[fr:r1:stride, fc:c1:stride], dtype=dtype)
        i, j = (fr - y0) // stride, (fc - x0) // stride
        out[i:i + part.shape[0], j:j + part.shape[1]] = part
        del part
    return out


def gather_points(arr: zarr.Array, ys: np.ndarray, xs: np.ndarray, *,
                  dtype: Any = np.float32) -> np.ndarray:
    """``arr[ys[k], xs[k], ...]`` for integer pixel positions, one chunk read at a time."""
    ys = np.asarray(ys, dtype=np.int64)
    xs = np.asarray(xs, dtype=np.int64)
    extra = tuple(int(n) for n in arr.shape[2:])
    out = np.full((ys.size,) + extra, np.nan if np.dtype(dtype).kind == "f" else 0, dtype=dtype)
    if ys.size == 0:
        return out
    ur, uc = read_unit(arr)
    ncx = int(math.ceil(arr.shape[1] / uc))
    key = (ys // ur) * ncx + (xs // uc)
    order = np.argsort(key, kind="stable")
    sorted_keys = key[order]
    bounds = np.flatnonzero(np.diff(sorted_keys)) + 1
    for idx in np.split(order, bounds):
        k = int(key[idx[0]])
        cy, cx = divmod(k, ncx)
        r0, c0 = cy * ur, cx * uc
        ly, lx = ys[idx] - r0, xs[idx] - c0
        sub = np.asarray(arr[r0 + int(ly.min()):r0 + int(ly.max()) + 1,
                             c0 + int(lx.min()):c0 + int(lx.max()) + 1], dtype=dtype)
        out[idx] = sub[ly - ly.min(), lx - lx.min()]
        del sub
    return out


def window_of(group: zarr.Group, shape_hw: tuple[int, int]) -> tuple[int, int, int, int]:
    """The autocrop window (y0, y1, x0, x1), the whole grid when absent or invalid."""
    h, w = int(shape_hw[0]), int(shape_hw[1])
    win = group.attrs.get("window")
    try:
        y0, y1, x0, x1 = (int(v) for v in win)
        if 0 <= y0 < y1 <= h and 0 <= x0 < x1 <= w:
            return y0, y1, x0, x1
    except (TypeError, ValueError):
        pass
    return 0, h, 0, w


class JournalReader:
    """The run journal (``journal.sqlite`` in the store), read-only and streamed: a huge run
    has millions of block rows, so they are read ``batch`` rows at a time."""

    def __init__(self, path: Path):
        self.path = path
        self.conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
        self.tables = {r[0] for r in self.conn.execute(
            "SELECT name FROM sqlite_master WHERE type='table'")}

    def columns(self, table: str) -> list[str]:
        if table not in self.tables:
            return []
        return [r[1] for r in self.conn.execute(f"PRAGMA table_info({table})")]

    def stages(self) -> list[dict[str, Any]]:
        cols = self.columns("stages")
        if not cols:
            return []
        return [dict(zip(cols, r)) for r in self.conn.execute("SELECT * FROM stages")]

    def count_blocks(self) -> int:
        if "blocks" not in self.tables:
            return 0
        return int(self.conn.execute("SELECT COUNT(*) FROM blocks").fetchone()[0])

    def iter_blocks(self, batch: int = 65536) -> Iterator[list[dict[str, Any]]]:
        cols = self.columns("blocks")
        if not cols:
            return
        cur = self.conn.execute("SELECT * FROM blocks")
        while True:
            rows = cur.fetchmany(batch)
            if not rows:
                break
            yield [dict(zip(cols, r)) for r in rows]

    def close(self) -> None:
        self.conn.close()


def open_journal(store_path: str | Path) -> JournalReader | None:
    """The store's run journal, or None when there is none (or it cannot be read)."""
    path = Path(store_path) / "journal.sqlite"
    if not path.is_file():
        return None
    try:
        return JournalReader(path)
    except sqlite3.Error:
        return None


def parse_block(text: str) -> tuple[int, int, int, int] | None:
    """'y0:y1,x0:x1' -> (y0, y1, x0, x1)."""
    try:
        rows, cols = str(text).split(",")
        y0, y1 = (int(v) for v in rows.split(":"))
        x0, x1 = (int(v) for v in cols.split(":"))
        return y0, y1, x0, x1
    except (ValueError, AttributeError):
        return None
