"""Reads and writes of the project's own Zarr arrays on the calling thread, chunk file by chunk file.

zarr-python runs every read and write through its one event-loop thread: the chunk files and
the checksums go to its thread pool, but each chunk read is copied into the result on the loop
thread, and each operation's Python machinery runs there too.  Every worker queues on it: with
2 workers reading whole 1472² RGB blocks the loop thread was busy 14–20 ms per 26 MB block,
about all of the time (its CPU time; tools/BENCHMARKS.md §9) — a serial floor under every block
stage however many cores the machine has, and under the GPU path whatever its kernels cost.

The arrays this project writes are all one simple layout (:func:`.codecs.create_checked_array`:
regular chunks, raw little-endian bytes in C order, then a CRC-32C of them), so
:class:`DirectArray` reads such an array's chunk files itself, on the calling thread: one
``readinto`` per chunk (the GIL released), the checksum checked (the GIL released), the bytes
viewed as the array — a read of exactly one whole chunk is that chunk's buffer, with no copy.
A write made of whole chunks writes their files the way zarr does (the same bytes, through a
temporary file renamed over the old one).  The file layout, chunk keys and fill value come from
the array's own zarr metadata; a missing chunk reads as the fill value, and a damaged one
raises the error zarr raises.  Other writes, and arrays of any other layout or store, go
through zarr unchanged.
"""
from __future__ import annotations

import itertools
import os
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import zarr
from zarr.codecs import BytesCodec, Crc32cCodec
from zarr.storage import LocalStore

from .codecs import check_chunk, chunk_checksum
from .files import written_atomically


class _Layout:
    """Where an array's chunk files are and what they hold."""

    def __init__(self, array: zarr.Array) -> None:
        self.metadata = array.metadata
        self.folder = Path(array.store.root) / array.path
        self.dtype = np.dtype(array.dtype)
        self.shape = tuple(int(n) for n in array.shape)
        self.chunks = tuple(int(n) for n in array.chunks)
        self.fill_value = np.array(array.fill_value, dtype=self.dtype)

    def chunk_path(self, coords: tuple[int, ...]) -> Path:
        return self.folder / self.metadata.encode_chunk_key(coords)


def _direct_layout(array: zarr.Array) -> _Layout | None:
    """The layout when ``array`` is one this module reads itself, else None."""
    try:
        meta = array.metadata
        codecs = tuple(meta.codecs)
        if (meta.zarr_format != 3 or not isinstance(array.store, LocalStore) or len(codecs) != 2
                or not isinstance(codecs[0], BytesCodec) or not isinstance(codecs[1], Crc32cCodec)
                or type(meta.chunk_grid).__name__ != "RegularChunkGrid"):
            return None
        dtype = np.dtype(array.dtype)
        endian = getattr(codecs[0].endian, "value", codecs[0].endian)
        if dtype.hasobject or (dtype.itemsize > 1 and endian != "little") or not np.little_endian:
            return None
        return _Layout(array)
    except Exception:   # any other array, store or zarr version: zarr reads it
        return None


def read_chunk(layout: _Layout, coords: tuple[int, ...]) -> np.ndarray:
    """One whole chunk as a writable array of the chunk shape (the fill value if never written)."""
    path = layout.chunk_path(coords)
    size = int(np.prod(layout.chunks)) * layout.dtype.itemsize
    buffer = np.empty(size + 4, dtype=np.uint8)
    try:
        with open(path, "rb") as fh:
            got = fh.readinto(buffer)
            extra = fh.read(1)
    except FileNotFoundError:
        return np.full(layout.chunks, layout.fill_value, dtype=layout.dtype)
    if got != size + 4 or extra:
        raise ValueError(f"{path}: chunk of {got + len(extra)} bytes where {size + 4} were expected")
    data = buffer[:size]
    check_chunk(data, bytes(buffer[size:]))
    return data.view(layout.dtype).reshape(layout.chunks)


def read_region(layout: _Layout, bounds: list[tuple[int, int]]) -> np.ndarray:
    """The region ``bounds`` ([start, stop) per axis, inside the array) as a new array."""
    spans = [range(lo // c, -(-hi // c)) if hi > lo else range(0) for (lo, hi), c in zip(bounds, layout.chunks)]
    shape = tuple(hi - lo for lo, hi in bounds)
    if len(spans) and all(len(s) == 1 for s in spans):
        coords = tuple(s[0] for s in spans)
        whole = all(lo == k * c and hi == min(n, (k + 1) * c)
                    for (lo, hi), k, c, n in zip(bounds, coords, layout.chunks, layout.shape))
        if whole:                   # exactly one chunk (an edge chunk is stored at full size)
            chunk = read_chunk(layout, coords)
            if shape == layout.chunks:
                return chunk
            return np.ascontiguousarray(chunk[tuple(slice(0, s) for s in shape)])
    out = np.empty(shape, dtype=layout.dtype)
    for coords in itertools.product(*spans):
        chunk = read_chunk(layout, coords)
        src, dst = [], []
        for (lo, hi), k, c in zip(bounds, coords, layout.chunks):
            a, b = max(lo, k * c), min(hi, (k + 1) * c)
            src.append(slice(a - k * c, b - k * c))
            dst.append(slice(a - lo, b - lo))
        out[tuple(dst)] = chunk[tuple(src)]
    return out


def _whole_chunk_spans(layout: _Layout, bounds: list[tuple[int, int]]) -> list[range] | None:
    """The chunk indices per axis of a region made of whole chunks (an edge chunk up to the
    array's edge), or None when the region cuts a chunk or is empty."""
    spans = []
    for (lo, hi), c, n in zip(bounds, layout.chunks, layout.shape):
        if hi <= lo or lo % c or (hi % c and hi != n):
            return None
        spans.append(range(lo // c, -(-hi // c)))
    return spans


def write_region(layout: _Layout, bounds: list[tuple[int, int]], value: Any) -> bool:
    """Write ``value`` (broadcast to the region) over ``bounds`` when the region is made of whole
    chunks (an edge chunk up to the array's edge): each chunk file as zarr writes it (the values,
    the fill value beyond the array's edge, then the CRC-32C), through a temporary file renamed
    over the old one.  False, writing nothing, for any other region (zarr then writes it)."""
    spans = _whole_chunk_spans(layout, bounds)
    if spans is None:
        return False
    values = np.broadcast_to(np.asarray(value).astype(layout.dtype, copy=False),
                             tuple(hi - lo for lo, hi in bounds))
    for coords in itertools.product(*spans):
        part = values[tuple(slice(k * c - lo, min(hi, (k + 1) * c) - lo)
                            for (lo, hi), k, c in zip(bounds, coords, layout.chunks))]
        if part.shape != layout.chunks:                  # an edge chunk: the fill value beyond
            whole = np.full(layout.chunks, layout.fill_value, dtype=layout.dtype)
            whole[tuple(slice(0, s) for s in part.shape)] = part
            part = whole
        data = np.ascontiguousarray(part).reshape(-1).view(np.uint8)
        path = layout.chunk_path(coords)
        path.parent.mkdir(parents=True, exist_ok=True)
        with written_atomically(path, unique=True) as partial, open(partial, "wb") as fh:
            fh.write(data)
            fh.write(chunk_checksum(data))
    return True


def _same_layout(a: _Layout, b: _Layout) -> bool:
    return (a.shape == b.shape and a.chunks == b.chunks and a.dtype == b.dtype
            and np.array_equal(a.fill_value, b.fill_value, equal_nan=a.dtype.kind in "fc"))


def link_region(source: _Layout, target: _Layout, bounds: list[tuple[int, int]]) -> bool:
    """Make ``target``'s chunks over ``bounds`` the same files as ``source``'s: a hard link per
    chunk file (no bytes read or written), through a temporary name renamed over the old file;
    a chunk ``source`` never wrote is removed from ``target`` (both read as the fill value).
    Chunk files are only ever replaced by a rename, never rewritten in place, so a later write
    to either array leaves the other's chunk as it was.  False, having linked a part or none,
    when the two layouts differ, the region is not made of whole chunks, or the file system
    refuses hard links: the caller then copies the values (over any linked part)."""
    spans = _whole_chunk_spans(target, bounds) if _same_layout(source, target) else None
    if spans is None:
        return False
    for coords in itertools.product(*spans):
        path = target.chunk_path(coords)
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_name(f"{path.name}.{uuid.uuid4().hex}.partial")
        try:
            os.link(source.chunk_path(coords), partial)
        except FileNotFoundError:
            path.unlink(missing_ok=True)
            continue
        except OSError:
            return False
        try:
            os.replace(partial, path)
        except BaseException:
            partial.unlink(missing_ok=True)
            raise
    return True


class DirectArray:
    """A zarr array whose slices are read and written on the calling thread (the module's text).

    ``array[...]`` with basic slices (step 1) of an array of the project's layout reads the
    chunk files directly, and writes them directly where the slice is made of whole chunks;
    every other selection or write, and every attribute, is zarr's.
    """

    def __init__(self, array: zarr.Array) -> None:
        self._array = array
        self._layout = _direct_layout(array)

    @property
    def zarr_array(self) -> zarr.Array:
        return self._array

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_"):             # not found on this object (e.g. while unpickling)
            raise AttributeError(name)
        return getattr(self._array, name)

    def __reduce__(self) -> tuple:
        return (DirectArray, (self._array,))

    def __len__(self) -> int:
        return len(self._array)

    def _bounds(self, selection: Any) -> list[tuple[int, int]] | None:
        if self._layout is None:
            return None
        if not isinstance(selection, tuple):
            selection = (selection,)
        if any(s is Ellipsis for s in selection):
            if sum(s is Ellipsis for s in selection) > 1:
                return None
            at = selection.index(Ellipsis)
            fill = len(self._layout.shape) - (len(selection) - 1)
            selection = selection[:at] + (slice(None),) * fill + selection[at + 1:]
        if len(selection) > len(self._layout.shape):
            return None
        selection = selection + (slice(None),) * (len(self._layout.shape) - len(selection))
        bounds = []
        for s, n in zip(selection, self._layout.shape):
            if not isinstance(s, slice):
                return None
            start, stop, step = s.indices(n)
            if step != 1:
                return None
            bounds.append((start, max(start, stop)))
        return bounds

    def __getitem__(self, selection: Any) -> Any:
        bounds = self._bounds(selection)
        if bounds is None:
            return self._array[selection]
        return read_region(self._layout, bounds)

    def _writable_bounds(self, selection: Any) -> list[tuple[int, int]] | None:
        """The selection's bounds when this module may write it (a store opened read-only is
        left to zarr, which raises)."""
        if bool(getattr(self._array.store, "read_only", False)):
            return None
        return self._bounds(selection)

    def __setitem__(self, selection: Any, value: Any) -> None:
        bounds = self._writable_bounds(selection)
        if bounds is None or not write_region(self._layout, bounds, value):
            self._array[selection] = value

    def copy_from(self, source: "DirectArray", selection: Any) -> None:
        """``self[selection] = source[selection]``; whole chunks of two arrays of the same layout
        are linked (:func:`link_region`), not read and written."""
        bounds = self._writable_bounds(selection)
        if bounds is None or source._layout is None or not link_region(source._layout, self._layout, bounds):
            self[selection] = source[selection]
