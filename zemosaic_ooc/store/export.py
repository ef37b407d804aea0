"""Export a finished mosaic store: FITS in row slabs, and an 8-bit PNG preview.

The mosaic store is a zarr v3 group with the arrays ``mosaic`` (H, W, 3) float32 (NaN = no
data), ``coverage`` (H, W) float32 and ``alpha`` (H, W) uint8, and the attributes
``output_wcs_header`` (FITS header text of the output WCS for the full grid), ``window``
(``[y0, y1, x0, x1]``, the autocrop window; the full grid when absent) and optionally
``bunit``.

FITS layout (as ZeMosaic writes its mosaic): primary float32 (3, h, w) with the output WCS
shifted to the window (``CRPIX1 -= x0``, ``CRPIX2 -= y0``), then image extensions ``COVERAGE``
(float32, same WCS) and ``ALPHA`` (uint8).  The extensions are plain (not tile-compressed)
images, so every slab can be written in place.

Memory: the file is laid out first (astropy writes the headers; the data areas are left as
holes of the right size), then filled piece by piece with positioned writes.  A piece is a
band of whole chunk rows of the store (``slab_rows`` rows, rounded to whole chunk rows: zarr
decodes whole chunks, so a chunk is never split and never decoded twice) by as many whole
chunk columns as fit in ``max_piece_bytes``.  What is held at once is about one piece plus the
chunks zarr decodes for it, whatever the mosaic's width and height.  The file is written as
``<fits_path>.partial`` and renamed when complete.
"""
from __future__ import annotations

import logging
import math
import os
import warnings
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import zarr
from astropy.io import fits

from .files import written_atomically

log = logging.getLogger(__name__)

ORIGIN = "zemosaic_ooc"
FITS_BLOCK = 2880

# cards that describe the HDU structure, never copied from the WCS header text
_STRUCTURAL = {
    "SIMPLE", "BITPIX", "NAXIS", "EXTEND", "XTENSION", "PCOUNT", "GCOUNT", "BSCALE", "BZERO",
    "BLANK", "EXTNAME", "EXTVER", "END", "CHECKSUM", "DATASUM", "ZIMAGE", "ZBITPIX",
    "ZCMPTYPE", "ORIGIN", "BUNIT",
}

__all__ = ["export_fits", "write_preview_png", "store_window", "window_wcs_header"]


# --------------------------------------------------------------------------------------
# store helpers
# --------------------------------------------------------------------------------------

def _open(store_path: str | Path):
    return zarr.open_group(str(store_path), mode="r")


def store_window(group, shape_hw: tuple[int, int] | None = None) -> tuple[int, int, int, int]:
    """The export window ``(y0, y1, x0, x1)`` of a mosaic group, checked against its shape."""
    if shape_hw is None:
        shape_hw = tuple(group["mosaic"].shape[:2])
    h, w = int(shape_hw[0]), int(shape_hw[1])
    win = group.attrs.get("window")
    if win is None:
        return 0, h, 0, w
    y0, y1, x0, x1 = (int(v) for v in win)
    if not (0 <= y0 < y1 <= h and 0 <= x0 < x1 <= w):
        raise ValueError(f"window {[y0, y1, x0, x1]} does not fit the mosaic grid {h} x {w}")
    return y0, y1, x0, x1


def read_window(store_path: str | Path) -> tuple[np.ndarray, np.ndarray, np.ndarray, dict[str, Any]]:
    """The final arrays inside the export window, in memory: mosaic (h, w, 3) float32 HWC,
    coverage (h, w) float32, alpha (h, w) uint8, and the group's attributes."""
    group = _open(store_path)
    y0, y1, x0, x1 = store_window(group)
    return (group["mosaic"][y0:y1, x0:x1, :], group["coverage"][y0:y1, x0:x1],
            group["alpha"][y0:y1, x0:x1], dict(group.attrs))


def _parse_header(text: Any) -> fits.Header:
    if isinstance(text, fits.Header):
        return text.copy()
    if isinstance(text, dict):
        hdr = fits.Header()
        for k, v in text.items():
            hdr[k] = v
        return hdr
    text = str(text)
    if "\n" in text:
        return fits.Header.fromstring(text, sep="\n")
    return fits.Header.fromstring(text)


def window_wcs_header(wcs_text: Any, y0: int, x0: int) -> fits.Header:
    """The output WCS cards (structure cards dropped) with CRPIX shifted to the window origin."""
    src = _parse_header(wcs_text)
    out = fits.Header()
    for card in src.cards:
        key = card.keyword
        if not key or key.upper() in _STRUCTURAL or key.upper().startswith("NAXIS"):
            continue
        if key in ("COMMENT", "HISTORY", ""):
            continue
        out.append(card)
    if "CRPIX1" in out:
        out["CRPIX1"] = float(out["CRPIX1"]) - x0
    if "CRPIX2" in out:
        out["CRPIX2"] = float(out["CRPIX2"]) - y0
    if "WCSAXES" not in out:
        out.insert(0, ("WCSAXES", 2, "Number of coordinate axes"))
    return out


def _read_unit(arr) -> tuple[int, int]:
    """Rows and columns of the store's unit of decoding: shards when sharded, else chunks."""
    unit = getattr(arr, "shards", None) or arr.chunks
    return int(unit[0]), int(unit[1])


def _bands(y0: int, y1: int, chunk_rows: int, slab_rows: int) -> Iterator[tuple[int, int]]:
    """Row bands covering [y0, y1): whole chunk rows (clipped to the window), grouped up to
    ``slab_rows`` rows; a chunk row taller than ``slab_rows`` is one band of its own."""
    chunk_rows = max(1, int(chunk_rows))
    per_band = max(1, int(slab_rows) // chunk_rows)
    r = y0
    while r < y1:
        end = min(y1, (r // chunk_rows + per_band) * chunk_rows)
        yield r, end
        r = end


def _pieces(y0: int, y1: int, x0: int, x1: int, chunks: tuple[int, int], slab_rows: int,
            max_piece_bytes: int, bytes_per_px: int) -> Iterator[tuple[int, int, int, int]]:
    """(r0, r1, c0, c1) pieces of the window aligned to the chunk grid (see module doc)."""
    chunk_rows, chunk_cols = max(1, int(chunks[0])), max(1, int(chunks[1]))
    for r0, r1 in _bands(y0, y1, chunk_rows, slab_rows):
        rows = r1 - r0
        max_cols = max(1, int(max_piece_bytes) // max(1, rows * bytes_per_px))
        per_piece = max(1, max_cols // chunk_cols)
        c = x0
        while c < x1:
            end = min(x1, (c // chunk_cols + per_piece) * chunk_cols)
            yield r0, r1, c, end
            c = end


def _write_at(f, offset: int, buf) -> None:
    """Write every byte of ``buf`` at ``offset`` (an unbuffered write may be partial)."""
    mv = memoryview(buf).cast("B")
    f.seek(offset)
    while mv.nbytes:
        n = f.write(mv)
        if not n:
            raise OSError(f"could not write to {getattr(f, 'name', 'the file')}")
        mv = mv[n:]


def _write_rect(f, base: int, block: np.ndarray, row: int, col: int, width: int) -> None:
    """Write a C-contiguous 2-D block into a row-major image of ``width`` columns stored at
    file offset ``base``, top-left at (row, col): one write if it spans whole rows."""
    isz = block.dtype.itemsize
    rows, cols = block.shape
    if cols == width:
        _write_at(f, base + row * width * isz, block)
        return
    for i in range(rows):
        _write_at(f, base + ((row + i) * width + col) * isz, block[i])


# --------------------------------------------------------------------------------------
# FITS
# --------------------------------------------------------------------------------------

def _padded(nbytes: int) -> int:
    return int(math.ceil(nbytes / FITS_BLOCK) * FITS_BLOCK)


def _image_header(kind: str, bitpix: int, shape_fits: tuple[int, ...], *, name: str | None,
                  extra: fits.Header | None) -> fits.Header:
    hdr = fits.Header()
    if kind == "primary":
        hdr["SIMPLE"] = (True, "conforms to FITS standard")
    else:
        hdr["XTENSION"] = ("IMAGE", "Image extension")
    hdr["BITPIX"] = (bitpix, "array data type")
    hdr["NAXIS"] = (len(shape_fits), "number of array dimensions")
    for i, n in enumerate(shape_fits, start=1):
        hdr[f"NAXIS{i}"] = int(n)
    if kind == "primary":
        hdr["EXTEND"] = True
    else:
        hdr["PCOUNT"] = 0
        hdr["GCOUNT"] = 1
        hdr["EXTNAME"] = (name, "extension name")
    if extra is not None:
        for card in extra.cards:
            hdr.append(card)
    return hdr


def export_fits(mosaic_store_path: str | Path, fits_path: str | Path, *, slab_rows: int = 256,
                overwrite: bool = False, max_piece_bytes: int = 32 * 2**20) -> Path:
    """Write the mosaic window as FITS (primary (3, h, w) float32 + COVERAGE + ALPHA).

    Reads chunk-aligned pieces of at most ``slab_rows`` rows (rounded to whole chunk rows) and
    about ``max_piece_bytes`` (memory does not grow with the mosaic), writes them in place
    into ``<fits_path>.partial`` and renames that when every byte is written.  Returns the
    final path.  An existing ``fits_path`` is only replaced with ``overwrite=True``.
    """
    fits_path = Path(fits_path)
    if fits_path.exists() and not overwrite:
        raise FileExistsError(f"{fits_path} exists (pass overwrite=True to replace it)")
    g = _open(mosaic_store_path)
    mosaic = g["mosaic"]
    if mosaic.ndim != 3 or mosaic.shape[2] != 3:
        raise ValueError(f"mosaic must be (H, W, 3), got {mosaic.shape}")
    H, W = int(mosaic.shape[0]), int(mosaic.shape[1])
    y0, y1, x0, x1 = store_window(g, (H, W))
    h, w = y1 - y0, x1 - x0
    # looked up by name: listing the group (``array_keys``) walks the store's folder, where
    # zarr warns about the run's journal.sqlite as an object it does not recognise
    coverage = g["coverage"] if "coverage" in g else None
    alpha = g["alpha"] if "alpha" in g else None
    for arr, label in ((coverage, "coverage"), (alpha, "alpha")):
        if arr is not None and tuple(arr.shape) != (H, W):
            raise ValueError(f"{label} has shape {arr.shape}, mosaic grid is {(H, W)}")

    wcs_text = g.attrs.get("output_wcs_header")
    wcs_hdr = window_wcs_header(wcs_text, y0, x0) if wcs_text else fits.Header()
    bunit = g.attrs.get("bunit")

    prim_extra = wcs_hdr.copy()
    prim_extra["ORIGIN"] = (ORIGIN, "software that made this file")
    if bunit:
        prim_extra["BUNIT"] = (str(bunit), "same units as the input master tiles")
    prim_extra["ZMWINDOW"] = (f"{y0} {y1} {x0} {x1}", "exported window y0 y1 x0 x1 of the grid")

    hdus: list[tuple[fits.Header, str, np.dtype, int]] = []   # header, what, dtype, nbytes
    hdus.append((_image_header("primary", -32, (w, h, 3), name=None, extra=prim_extra),
                 "mosaic", np.dtype(">f4"), 3 * h * w * 4))
    if coverage is not None:
        cov_extra = wcs_hdr.copy()
        cov_extra["COMMENT"] = "sum of the coadd weights"
        hdus.append((_image_header("image", -32, (w, h), name="COVERAGE", extra=cov_extra),
                     "coverage", np.dtype(">f4"), h * w * 4))
    if alpha is not None:
        a_extra = fits.Header()
        a_extra["ALPHADSC"] = "1=opaque(in), 0=transparent(out)"
        hdus.append((_image_header("image", 8, (w, h), name="ALPHA", extra=a_extra),
                     "alpha", np.dtype("u1"), h * w))

    fits_path.parent.mkdir(parents=True, exist_ok=True)
    with written_atomically(fits_path) as partial:
        offsets: dict[str, int] = {}
        with open(partial, "w+b", buffering=0) as f:
            # 1. layout: headers written by astropy, data areas left as holes (read as zeros)
            pos = 0
            for hdr, what, _dt, nbytes in hdus:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", fits.verify.VerifyWarning)
                    text = hdr.tostring(padding=True).encode("ascii")
                _write_at(f, pos, text)
                pos += len(text)
                offsets[what] = pos
                pos += _padded(nbytes)
            f.truncate(pos)

            # 2. data, piece by piece, at their offsets
            plane = h * w
            bpp = 12 + (4 if coverage is not None else 0) + (1 if alpha is not None else 0)
            chunks = _read_unit(mosaic)
            for r0, r1, c0, c1 in _pieces(y0, y1, x0, x1, chunks, slab_rows,
                                          max_piece_bytes, bpp):
                row, col = r0 - y0, c0 - x0
                block = np.asarray(mosaic[r0:r1, c0:c1, :], dtype=np.float32)
                for c in range(3):
                    be = np.ascontiguousarray(block[:, :, c], dtype=">f4")
                    _write_rect(f, offsets["mosaic"] + c * plane * 4, be, row, col, w)
                    del be
                del block
                if coverage is not None:
                    cov = np.ascontiguousarray(coverage[r0:r1, c0:c1], dtype=">f4")
                    _write_rect(f, offsets["coverage"], cov, row, col, w)
                    del cov
                if alpha is not None:
                    a = np.ascontiguousarray(alpha[r0:r1, c0:c1], dtype=np.uint8)
                    _write_rect(f, offsets["alpha"], a, row, col, w)
                    del a
            os.fsync(f.fileno())

        # 3. sanity: astropy reads the layout we wrote (headers only, no data touched)
        with fits.open(partial, memmap=True, lazy_load_hdus=False) as hl:
            for (hdr, what, _dt, _n), hdu in zip(hdus, hl):
                if hdu.fileinfo()["datLoc"] != offsets[what]:
                    raise RuntimeError(f"FITS layout mismatch for {what}")
    return fits_path


# --------------------------------------------------------------------------------------
# PNG preview
# --------------------------------------------------------------------------------------

def _read_strided(mosaic, y0: int, y1: int, x0: int, x1: int, stride: int,
                  max_piece_bytes: int = 32 * 2**20) -> np.ndarray:
    """``mosaic[y0:y1:stride, x0:x1:stride, :]`` read in chunk-aligned pieces (bounded memory)."""
    out = np.empty((len(range(y0, y1, stride)), len(range(x0, x1, stride)), 3), dtype=np.float32)
    chunks = _read_unit(mosaic)
    for r0, r1, c0, c1 in _pieces(y0, y1, x0, x1, chunks, 0, max_piece_bytes, 12):
        fr = r0 + ((y0 - r0) % stride)           # first sampled row (y0 + k * stride) >= r0
        fc = c0 + ((x0 - c0) % stride)
        if fr >= r1 or fc >= c1:
            continue
        part = np.asarray(mosaic[fr:r1:stride, fc:c1:stride, :], dtype=np.float32)
        i, j = (fr - y0) // stride, (fc - x0) // stride
        out[i:i + part.shape[0], j:j + part.shape[1]] = part
    return out


def _asinh(x: np.ndarray, soft: float) -> np.ndarray:
    return np.arcsinh(soft * x) / math.asinh(soft)


def auto_softening(median_norm: float, target: float = 0.25) -> float:
    """The asinh softening that maps the normalised background median to ``target``."""
    m = float(median_norm)
    if not np.isfinite(m) or m <= 0.0 or m >= target:
        return 1.0 if (np.isfinite(m) and m >= target) else 500.0
    lo, hi = 1e-3, 1e5
    for _ in range(80):
        mid = math.sqrt(lo * hi)
        if math.asinh(mid * m) / math.asinh(mid) < target:
            lo = mid
        else:
            hi = mid
    return math.sqrt(lo * hi)


def stretch_rgb(rgb: np.ndarray, *, stretch: str = "auto", linked: bool = True,
                black_pct: float = 0.5, white_pct: float = 99.8,
                asinh_softening: float = 10.0) -> np.ndarray:
    """(h, w, 3) float -> (h, w, 3) uint8; non-finite pixels (any channel) are black."""
    if stretch not in ("auto", "asinh", "linear"):
        raise ValueError(f"stretch must be 'auto', 'asinh' or 'linear', got {stretch!r}")
    rgb = np.asarray(rgb, dtype=np.float32)
    valid = np.isfinite(rgb).all(axis=-1)
    out = np.zeros(rgb.shape, dtype=np.float32)
    if not valid.any():
        return out.astype(np.uint8)
    vals = rgb[valid]                                     # (n, 3)
    if linked:
        lo, hi = np.percentile(vals, [black_pct, white_pct])
        lo = np.full(3, lo)
        hi = np.full(3, hi)
    else:
        lo, hi = np.percentile(vals, [black_pct, white_pct], axis=0)
    span = np.where(hi > lo, hi - lo, 1.0)
    norm = np.clip((vals - lo) / span, 0.0, 1.0)
    if stretch == "auto":
        if linked:
            soft = np.full(3, auto_softening(float(np.median(norm))))
        else:
            soft = np.array([auto_softening(float(np.median(norm[:, c]))) for c in range(3)])
        norm = np.stack([_asinh(norm[:, c], soft[c]) for c in range(3)], axis=-1)
    elif stretch == "asinh":
        norm = _asinh(norm, asinh_softening)
    out[valid] = norm
    return np.clip(np.rint(out * 255.0), 0, 255).astype(np.uint8)


def write_preview_png(mosaic_store_path: str | Path, png_path: str | Path, *,
                      max_side: int = 2048, stretch: str = "auto",
                      linked: bool = True) -> tuple[int, int]:
    """An 8-bit RGB PNG of the mosaic window, decimated by an integer stride so that its
    longer side is <= ``max_side``.  ``stretch``: ``auto`` (P0.5/P99.8 black/white points,
    then asinh with the softening that puts the median at 25 % grey), ``asinh`` (same
    points, fixed softening 10) or ``linear``.  ``linked`` uses one set of points for
    R, G and B.  Non-finite pixels are black.  Returns the PNG size (width, height).
    """
    from PIL import Image

    if max_side < 1:
        raise ValueError("max_side must be >= 1")
    g = _open(mosaic_store_path)
    mosaic = g["mosaic"]
    y0, y1, x0, x1 = store_window(g)
    stride = max(1, int(math.ceil(max(y1 - y0, x1 - x0) / float(max_side))))
    rgb = _read_strided(mosaic, y0, y1, x0, x1, stride)
    img8 = stretch_rgb(rgb, stretch=stretch, linked=linked)
    del rgb
    png_path = Path(png_path)
    png_path.parent.mkdir(parents=True, exist_ok=True)
    with written_atomically(Path(png_path)) as partial:
        Image.fromarray(img8).save(partial, format="PNG")
    return int(img8.shape[1]), int(img8.shape[0])
