"""``run_phase5``: the entry point for the ZeMosaic worker.

ZeMosaic's worker calls Phase 5 with master tiles (FITS paths, or arrays in memory), its own
config keys and its GUI ``progress_callback(message_key, progress, level)``.  This module
adapts all three to :func:`zemosaic_ooc.phase5.pipeline.run_pipeline`:

* **tiles**: a FITS path is used as is.  An in-memory record ``(data, wcs, alpha, nframes)``
  (HWC float32, astropy WCS, (H, W) ALPHA or None, frame count or None) is written as a
  ZeMosaic-style master-tile FITS (primary float32 (3, H, W) with the WCS, SIP included, every
  WCS number written with all its digits; ``MT_NFRAMES``; ``ZMT_ID``; an ``ALPHA`` extension)
  into a temporary folder, which is removed at the end.  float32 FITS is lossless, so a record
  gives exactly the numbers of the FITS file it was read from.  Records and paths may be mixed.
* **options**: a mapping of ZeMosaic config keys (PHASE5_SPEC §9) and ours, validated by
  :meth:`~zemosaic_ooc.options.Phase5Options.from_mapping` (an unknown key is an
  ``OptionError`` naming the closest known key; a whole ZeMosaic config is accepted).
* **progress**: :class:`CallbackProgress` turns the pipeline's stages and blocks into
  ``progress_callback(message_key, fraction, level)`` calls with a non-decreasing fraction
  that is 1.0 exactly once, at the end.

The result (:class:`Phase5Result`) is the autocrop window of the output grid: mosaic
(H, W, 3) float32 (NaN = no data), coverage (H, W) float32, alpha (H, W) uint8, and the WCS of
that window.  The arrays are numpy arrays when the window fits ``in_memory_limit`` bytes, else
read-only :class:`ZarrWindow` views of the store, which is then kept.
"""
from __future__ import annotations

import copy
import logging
import math
import os
import shutil
import tempfile
import threading
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

import numpy as np
from astropy.io import fits
from astropy.wcs import WCS, FITSFixedWarning

from .errors import InputError, OptionError, StoreError
from .options import Phase5Options, parse_size
from .phase5.pipeline import RunSummary, run_pipeline

log = logging.getLogger(__name__)

__all__ = ["run_phase5", "Phase5Result", "TileRecordInput", "CallbackProgress", "ZarrWindow",
           "write_record_fits", "STAGE_WEIGHTS"]

ProgressCallback = Callable[[str, "float | None", str], Any]

#: Bytes per output pixel of a returned window: mosaic 3 x float32 + coverage float32 + alpha uint8.
RESULT_BYTES_PER_PIXEL = 3 * 4 + 4 + 1

#: Relative duration of each stage, for the progress fraction.  A stage that is not listed
#: (the pipeline's stage list grows) gets ``DEFAULT_STAGE_WEIGHT``.
STAGE_WEIGHTS: dict[str, float] = {
    "write tiles": 2.0,     # in-memory records -> temporary FITS (API only)
    "ingest": 4.0,
    "calibrate": 5.0,
    "background": 5.0,
    "pass1": 30.0,
    "finish": 6.0,
    "coverage blur": 4.0,
    "two-pass gains": 3.0,
    "pass2": 20.0,
    "merge": 4.0,
    "patchwork blur": 5.0,
    "patchwork": 5.0,
    "load result": 2.0,     # reading the window into memory (API only)
}
DEFAULT_STAGE_WEIGHT = 3.0
_END_RESERVE = 1.0          # weight held back so that only the very end reports 1.0

_LEVELS = {"debug": "DEBUG", "info": "INFO", "warning": "WARN", "warn": "WARN", "error": "ERROR",
           "critical": "ERROR", "success": "SUCCESS"}


# --------------------------------------------------------------------------- progress

class CallbackProgress:
    """A :class:`~zemosaic_ooc.progress.ProgressSink` that calls ZeMosaic's progress callback.

    Calls are ``callback(message_key, fraction, level)`` with three positional arguments:

    * ``"phase5_ooc:<stage>:start"``, level ``"INFO"``, at the start of each stage;
    * ``"phase5_ooc:<stage>:<done>/<total>"``, level ``"DEBUG"``, as blocks (tiles, pairs)
      complete (at most about 200 per stage);
    * ``"phase5_ooc:<stage>:done"``, level ``"INFO"``, at the end of each stage;
    * the pipeline's own messages as they are (level ``"INFO"``, ``"WARN"``, ``"ERROR"``) with
      fraction None;
    * ``"phase5_ooc:done"`` with fraction exactly 1.0, level ``"SUCCESS"``, once, from
      :meth:`close`.

    The fraction never decreases and stays below 1.0 until :meth:`close`.  Each stage gets a
    share of the remaining range in proportion to its weight among the stages still expected
    (``planned``), so a stage that turns out not to run (or a stage nobody planned for) only
    changes the pace, never the monotonicity.  A callback that raises is logged once and
    otherwise ignored, as ZeMosaic's worker does.
    """

    def __init__(self, callback: ProgressCallback | None, planned: Iterable[str] = (),
                 weights: Mapping[str, float] | None = None, max_ticks_per_stage: int = 200):
        self.callback = callback
        self.weights = dict(STAGE_WEIGHTS if weights is None else weights)
        self.remaining: list[str] = list(planned)
        self.max_ticks = max(1, int(max_ticks_per_stage))
        self.value = 0.0
        self.closed = False
        self._stages: dict[str, dict[str, float]] = {}
        self._lock = threading.RLock()
        self._callback_failed = False

    # --- helpers
    def _weight(self, stage: str) -> float:
        w = self.weights.get(stage, DEFAULT_STAGE_WEIGHT)
        return float(w) if w and w > 0 else DEFAULT_STAGE_WEIGHT

    def _emit(self, key: str, fraction: float | None, level: str) -> None:
        if self.callback is None:
            return
        try:
            self.callback(key, fraction, level)
        except Exception as exc:  # the worker swallows GUI errors; so do we
            if not self._callback_failed:
                log.warning("progress_callback raised %s: %s (further errors not logged)",
                            exc.__class__.__name__, exc)
                self._callback_failed = True

    def _set(self, value: float) -> float:
        # non-decreasing, and below 1.0 until close()
        value = min(float(value), math.nextafter(1.0, 0.0))
        if value > self.value:
            self.value = value
        return self.value

    # --- ProgressSink
    def start(self, stage: str, total: int, unit: str = "block") -> None:
        with self._lock:
            if stage in self.remaining:
                self.remaining.remove(stage)
            weight = self._weight(stage)
            rest = sum(self._weight(s) for s in self.remaining) + _END_RESERVE
            begin = self.value
            span = (1.0 - begin) * weight / (weight + rest)
            self._stages[stage] = {"begin": begin, "span": span, "total": max(0, int(total)),
                                   "done": 0, "emitted": 0}
            self._emit(f"phase5_ooc:{stage}:start", self._set(begin), "INFO")

    def advance(self, stage: str, n: int = 1) -> None:
        if n <= 0:
            return
        with self._lock:
            state = self._stages.get(stage)
            if state is None:       # advance without start: open it on the fly
                self.start(stage, 0)
                state = self._stages[stage]
            state["done"] += n
            total = state["total"]
            done = state["done"]
            if total <= 0:
                return
            frac = min(1.0, done / total)
            step = max(1.0, total / self.max_ticks)
            if done >= total or done - state["emitted"] >= step:
                state["emitted"] = done
                value = self._set(state["begin"] + state["span"] * frac)
                self._emit(f"phase5_ooc:{stage}:{min(done, total)}/{total}", value, "DEBUG")

    def finish(self, stage: str) -> None:
        with self._lock:
            state = self._stages.pop(stage, None)
            if state is not None:
                self._set(state["begin"] + state["span"])
            self._emit(f"phase5_ooc:{stage}:done", self.value, "INFO")

    def message(self, text: str, level: str = "info") -> None:
        with self._lock:
            self._emit(str(text), None, _LEVELS.get(str(level).lower(), str(level).upper()))

    def close(self) -> None:
        """Report 1.0 (once)."""
        with self._lock:
            if self.closed:
                return
            self.closed = True
            self.value = 1.0
            self._emit("phase5_ooc:done", 1.0, "SUCCESS")


def planned_stages(opts: Phase5Options, n_tiles: int, has_records: bool) -> list[str]:
    """The stages a run with these options is expected to report, in order."""
    stages = ["write tiles"] if has_records else []
    stages += ["ingest"]
    if opts.intertile_photometric_match and n_tiles >= 2:
        stages.append("calibrate")
    stages += ["background", "pass1", "finish"]
    if opts.two_pass_coverage_renorm:
        stages += ["coverage blur", "two-pass gains", "pass2", "merge"]
    if opts.patchwork_suppressor_enabled:
        stages += ["patchwork blur", "patchwork"]
    return stages


# --------------------------------------------------------------------------- records

@dataclass
class TileRecordInput:
    """One in-memory master tile, as the worker holds it.

    ``data``: (H, W, 3) float32 (HWC, ZeMosaic's in-memory layout) or (H, W) mono; ``wcs``: its
    celestial astropy WCS (SIP kept); ``alpha``: (H, W) ALPHA in its raw dtype (uint8 0..255 as
    ZeMosaic writes it; bool is taken as 0/255) or None; ``nframes``: frames stacked into the
    tile (``MT_NFRAMES``; None = unknown, weight 1); ``header``: optional extra FITS cards for
    the tile (e.g. ``ZMT_SUPID``, ``ZMT_EMPT``); ``tile_id``: ZeMosaic's ``ZMT_ID`` (default:
    the position in the tile list).
    """

    data: Any
    wcs: Any
    alpha: Any = None
    nframes: float | None = None
    header: Any = None
    tile_id: int | None = None


def _as_record(item: Any, index: int) -> TileRecordInput | None:
    """A :class:`TileRecordInput` from a record-like item, or None for a path."""
    if isinstance(item, (str, os.PathLike)):
        return None
    if isinstance(item, TileRecordInput):
        return item
    if isinstance(item, Mapping):
        unknown = set(item) - {"data", "wcs", "alpha", "nframes", "header", "tile_id"}
        if unknown or "data" not in item or "wcs" not in item:
            raise InputError(f"tiles[{index}]", "a tile record mapping needs 'data' and 'wcs' and "
                             "may have 'alpha', 'nframes', 'header', 'tile_id'"
                             + (f" (unknown: {', '.join(sorted(map(str, unknown)))})" if unknown else ""))
        return TileRecordInput(**dict(item))
    if isinstance(item, (tuple, list)):
        if not 2 <= len(item) <= 4:
            raise InputError(f"tiles[{index}]", f"a tile record is (data, wcs, alpha, nframes); "
                             f"got a sequence of {len(item)} items")
        return TileRecordInput(*item)
    if hasattr(item, "data") and hasattr(item, "wcs"):
        return TileRecordInput(item.data, item.wcs, getattr(item, "alpha", None),
                               getattr(item, "nframes", None), getattr(item, "header", None),
                               getattr(item, "tile_id", None))
    raise InputError(f"tiles[{index}]", f"not a FITS path nor a (data, wcs, alpha, nframes) record "
                     f"({type(item).__name__})")


def _float_card(key: str, value: float, comment: str | None = None) -> fits.Card:
    """A card whose value keeps every digit of ``value`` (astropy would cut it to 20 columns)."""
    text = repr(float(value)).upper().replace("INF", "inf")
    if "." not in text and "E" not in text:
        text += ".0"
    image = f"{key:<8}= {text:>20}"
    if comment:
        image += f" / {comment}"
    return fits.Card.fromstring(image[:80].ljust(80))


def _celestial(wcs: Any, where: str) -> WCS:
    if isinstance(wcs, fits.Header):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FITSFixedWarning)
            wcs = WCS(wcs, naxis=2, relax=True)
    if not isinstance(wcs, WCS):
        raise InputError(where, f"wcs must be an astropy WCS (or a FITS header), got {type(wcs).__name__}")
    if not wcs.has_celestial:
        raise InputError(where, "no celestial WCS (need RA/DEC CTYPEs, CRVAL, CRPIX and CD or CDELT)")
    if wcs.naxis != 2:
        sip = wcs.sip
        wcs = wcs.celestial
        if sip is not None and wcs.sip is None:
            wcs.sip = sip
    return wcs


def wcs_cards(wcs: WCS) -> fits.Header:
    """The tile WCS as FITS cards, SIP included, every number written with all its digits.

    ``WCS.to_header(relax=True)`` writes at most 14 significant digits and turns a CD matrix
    into PC + CDELT; here the keys are those of ``to_header`` (CD kept as CD) and the values
    are the WCS's own doubles, so ``WCS(header)`` rebuilds the same WCS bit for bit.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        hdr = wcs.to_header(relax=True)
    w = wcs.wcs
    exact: dict[str, float] = {}
    for i in range(2):
        exact[f"CRPIX{i + 1}"] = float(w.crpix[i])
        exact[f"CRVAL{i + 1}"] = float(w.crval[i])
    exact["LONPOLE"] = float(w.lonpole)
    exact["LATPOLE"] = float(w.latpole)
    if w.has_cd():
        for key in [k for k in hdr if k.startswith("PC") or k.startswith("CDELT")]:
            del hdr[key]
        for i in range(2):
            for j in range(2):
                hdr[f"CD{i + 1}_{j + 1}"] = float(w.cd[i, j])
                exact[f"CD{i + 1}_{j + 1}"] = float(w.cd[i, j])
    elif not w.has_crota():
        pc = w.get_pc()
        cdelt = w.get_cdelt()
        for i in range(2):
            exact[f"CDELT{i + 1}"] = float(cdelt[i])
            for j in range(2):
                exact[f"PC{i + 1}_{j + 1}"] = float(pc[i, j])
    try:
        for i, m, value in w.get_pv():
            exact[f"PV{i}_{m}"] = float(value)
    except Exception:  # pragma: no cover - exotic WCS
        pass
    sip = wcs.sip
    if sip is not None:
        for name, matrix in (("A", sip.a), ("B", sip.b), ("AP", sip.ap), ("BP", sip.bp)):
            if matrix is None:
                continue
            for p in range(matrix.shape[0]):
                for q in range(matrix.shape[1]):
                    exact[f"{name}_{p}_{q}"] = float(matrix[p, q])
    out = fits.Header()
    for card in hdr.cards:
        key = card.keyword
        value = exact.get(key)
        if value is not None and math.isfinite(value) and isinstance(card.value, (int, float)) \
                and not isinstance(card.value, bool):
            out.append(_float_card(key, value, card.comment or None))
        else:
            out.append(card)
    return out


def write_record_fits(path: str | Path, record: TileRecordInput, index: int) -> Path:
    """Write one in-memory tile as a ZeMosaic master-tile FITS (CHW float32 + ALPHA)."""
    where = f"tiles[{index}]"
    wcs = _celestial(record.wcs, where)
    data = np.asarray(record.data)
    if data.ndim == 3 and data.shape[-1] == 3:
        image = np.ascontiguousarray(np.moveaxis(data, -1, 0), dtype=np.float32)   # HWC -> CHW
    elif data.ndim == 3 and data.shape[-1] == 1:
        image = np.ascontiguousarray(data[..., 0], dtype=np.float32)
    elif data.ndim == 2:
        image = np.ascontiguousarray(data, dtype=np.float32)
    else:
        raise InputError(where, f"data has shape {data.shape}; expected (H, W, 3) HWC or (H, W) mono")
    if not np.issubdtype(data.dtype, np.number) or np.iscomplexobj(data):
        raise InputError(where, f"data has non-numeric or complex dtype {data.dtype}")
    if data.dtype != np.float32:
        log.debug("%s: data converted from %s to float32", where, data.dtype)
    height, width = image.shape[-2:]
    header = fits.Header()
    for card in wcs_cards(wcs).cards:
        header.append(card)
    if record.nframes is not None:
        try:
            nframes = float(record.nframes)
        except (TypeError, ValueError):
            raise InputError(where, f"nframes must be a number, got {record.nframes!r}") from None
        header["HIERARCH MT_NFRAMES"] = (int(nframes) if nframes.is_integer() else nframes,
                                "Frames stacked into this master tile")
    header["ZMT_TYPE"] = ("Master Tile", "ZeMosaic Processed Tile")
    header["ZMT_ID"] = (int(index if record.tile_id is None else record.tile_id), "Master Tile ID")
    if record.header is not None:
        extra = record.header if isinstance(record.header, fits.Header) else \
            fits.Header(list(dict(record.header).items()))
        for card in extra.cards:
            if card.keyword and card.keyword not in header and not card.keyword.startswith("NAXIS") \
                    and card.keyword not in ("SIMPLE", "BITPIX", "NAXIS", "EXTEND", "END"):
                header.append(card)
    hdus = [fits.PrimaryHDU(image, header=header)]
    if record.alpha is not None:
        alpha = np.asarray(record.alpha)
        if alpha.dtype == bool:
            alpha = alpha.astype(np.uint8) * np.uint8(255)
        elif alpha.dtype == np.float16:
            alpha = alpha.astype(np.float32)
        elif not (np.issubdtype(alpha.dtype, np.integer) or np.issubdtype(alpha.dtype, np.floating)):
            raise InputError(where, f"alpha has unsupported dtype {alpha.dtype}")
        if np.squeeze(alpha).shape != (height, width):
            log.warning("%s: alpha shape %s differs from the data's %s (ignored, as ZeMosaic does)",
                        where, alpha.shape, (height, width))
        hdus[0].header["ALPHAEXT"] = (1, "Alpha mask ext present")
        hdus.append(fits.ImageHDU(alpha, name="ALPHA"))
    path = Path(path)
    fits.HDUList(hdus).writeto(path, overwrite=True)
    return path


# --------------------------------------------------------------------------- results

class ZarrWindow:
    """A read-only numpy-like view of a window of a Zarr array (the store is not copied).

    ``shape``, ``dtype``, ``ndim``, ``nbytes``; ``view[...]`` reads (ints, slices with any step,
    ``...``) and returns numpy arrays; ``np.asarray(view)`` reads the whole window.
    """

    def __init__(self, array: Any, y0: int, y1: int, x0: int, x1: int):
        self.array = array
        self.window = (int(y0), int(y1), int(x0), int(x1))
        self.shape = (int(y1 - y0), int(x1 - x0)) + tuple(int(n) for n in array.shape[2:])
        self.dtype = np.dtype(array.dtype)

    ndim = property(lambda self: len(self.shape))
    size = property(lambda self: int(np.prod(self.shape)))
    nbytes = property(lambda self: self.size * self.dtype.itemsize)

    def __len__(self) -> int:
        return self.shape[0]

    def __repr__(self) -> str:
        return f"ZarrWindow(shape={self.shape}, dtype={self.dtype}, window={list(self.window)})"

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        out = self[...]
        return out if dtype is None else out.astype(dtype, copy=False)

    def __getitem__(self, key: Any) -> np.ndarray:
        if not isinstance(key, tuple):
            key = (key,)
        n_ellipsis = sum(1 for k in key if k is Ellipsis)
        if n_ellipsis > 1:
            raise IndexError("an index can only have a single ellipsis ('...')")
        if n_ellipsis:
            at = next(i for i, k in enumerate(key) if k is Ellipsis)
            key = key[:at] + (slice(None),) * (self.ndim - (len(key) - 1)) + key[at + 1:]
        if len(key) > self.ndim:
            raise IndexError(f"too many indices for a {self.ndim}-d array")
        key = key + (slice(None),) * (self.ndim - len(key))
        offsets = (self.window[0], self.window[2]) + (0,) * (self.ndim - 2)
        read: list[slice] = []
        picks: list[Any] = []           # per axis: None (all), an index array, or an int
        for axis, (k, n, off) in enumerate(zip(key, self.shape, offsets)):
            if isinstance(k, (int, np.integer)) and not isinstance(k, (bool, np.bool_)):
                i = int(k) + (n if k < 0 else 0)
                if not 0 <= i < n:
                    raise IndexError(f"index {int(k)} is out of bounds for axis {axis} with size {n}")
                read.append(slice(off + i, off + i + 1))
                picks.append(0)
            elif isinstance(k, slice):
                r = range(*k.indices(n))
                if len(r) == 0:
                    read.append(slice(off, off))
                    picks.append(None)
                    continue
                lo, hi = min(r[0], r[-1]), max(r[0], r[-1]) + 1
                read.append(slice(off + lo, off + hi))
                picks.append(None if r.step == 1 else np.asarray(r) - lo)
            else:
                raise TypeError("ZarrWindow supports integer, slice and ... indices; use "
                                "np.asarray(view) for fancy indexing")
        out = np.asarray(self.array[tuple(read)])
        for axis in reversed(range(len(picks))):
            pick = picks[axis]
            if pick is not None:
                out = np.take(out, pick, axis=axis)
        return out


@dataclass
class Phase5Result:
    """The Phase-5 result: the autocrop window of the output grid.

    ``mosaic`` (H, W, 3) float32, NaN = no data; ``coverage`` (H, W) float32 (sum of coadd
    weights); ``alpha`` (H, W) uint8 (0 = no data); ``wcs`` the WCS of the window (the grid's
    WCS with CRPIX shifted by the window origin, pixel_shape (W, H)); ``summary`` the run's
    :class:`~zemosaic_ooc.phase5.pipeline.RunSummary`.  The arrays are numpy arrays when
    ``in_memory``, else :class:`ZarrWindow` views of the store at ``store_path``.
    ``store_path`` is None when the store was temporary and has been removed.
    ``grid_shape_hw`` and ``window`` (``(y0, y1, x0, x1)``) place the window on the grid.
    """

    mosaic: Any
    coverage: Any
    alpha: Any
    wcs: WCS
    summary: RunSummary
    in_memory: bool
    store_path: Path | None
    window: tuple[int, int, int, int]
    grid_shape_hw: tuple[int, int]
    temporary: bool = False
    warnings: list[str] = field(default_factory=list)

    @property
    def shape_hw(self) -> tuple[int, int]:
        return (self.window[1] - self.window[0], self.window[3] - self.window[2])

    def export_fits(self, path: str | Path, *, overwrite: bool = False) -> Path:
        """Write the result as ZeMosaic's mosaic FITS (primary (3, H, W) + COVERAGE + ALPHA)."""
        if self.store_path is not None:
            from .store.export import export_fits
            with warnings.catch_warnings():   # the store also holds journal.sqlite
                warnings.filterwarnings("ignore", message=".*not recognized as a component.*")
                return export_fits(self.store_path, path, overwrite=overwrite)
        path = Path(path)
        hdr = self.wcs.to_header(relax=True)
        hdus = [fits.PrimaryHDU(np.moveaxis(np.asarray(self.mosaic), -1, 0), header=hdr),
                fits.ImageHDU(np.asarray(self.coverage), header=hdr, name="COVERAGE"),
                fits.ImageHDU(np.asarray(self.alpha), name="ALPHA")]
        fits.HDUList(hdus).writeto(path, overwrite=overwrite)
        return path

    def cleanup(self) -> None:
        """Remove the store if run_phase5 made it (a temporary one); the arrays become unusable
        when they are Zarr-backed."""
        if self.temporary and self.store_path is not None:
            shutil.rmtree(self.store_path.parent, ignore_errors=True)
            self.store_path = None


def _window_wcs(header_text: str, window: tuple[int, int, int, int]) -> WCS:
    """The grid WCS (as the pipeline used it) with CRPIX shifted to the window, like ZeMosaic's
    autocrop does on its WCS object."""
    y0, y1, x0, x1 = window
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FITSFixedWarning)
        wcs = WCS(fits.Header.fromstring(header_text), naxis=2, relax=True)
    if x0 or y0:
        wcs.wcs.crpix = wcs.wcs.crpix - np.array([x0, y0], dtype=np.float64)
        if wcs.sip is not None:
            from astropy.wcs import Sip
            s = wcs.sip
            wcs.sip = Sip(s.a, s.b, s.ap, s.bp, np.asarray(s.crpix) - np.array([x0, y0], dtype=np.float64))
        wcs.wcs.set()
    wcs.pixel_shape = (x1 - x0, y1 - y0)
    return wcs


# --------------------------------------------------------------------------- run_phase5

def _build_options(options: Any, on_bad_tile: str) -> Phase5Options:
    if on_bad_tile not in ("skip", "raise"):
        raise OptionError(f"on_bad_tile={on_bad_tile!r}: expected 'skip' (ZeMosaic's behaviour) or 'raise'")
    skip = on_bad_tile == "skip"
    if options is None:
        mapping: dict[str, Any] = {}
    elif isinstance(options, Phase5Options):
        mapping = {**options.ignored, **options.to_dict()}
    elif isinstance(options, Mapping):
        mapping = dict(options)
    else:
        raise OptionError(f"options must be a mapping of option keys, got {type(options).__name__}")
    opts = Phase5Options.from_mapping(mapping)
    if "skip_bad_tiles" in mapping and bool(opts.skip_bad_tiles) != skip \
            and not isinstance(options, Phase5Options):
        raise OptionError(f"option 'skip_bad_tiles'={mapping['skip_bad_tiles']!r} contradicts "
                          f"on_bad_tile={on_bad_tile!r}; use on_bad_tile only")
    opts.skip_bad_tiles = skip
    return opts


def _in_memory_limit(value: Any, opts: Phase5Options) -> int:
    if value is None:
        return int(opts.memory_budget)
    if isinstance(value, (int, np.integer)) and not isinstance(value, bool) and int(value) == 0:
        return 0
    try:
        return parse_size(value)
    except OptionError as exc:
        raise OptionError(f"in_memory_limit: {exc}") from None


def _resolve_grid(output_wcs: Any, output_shape_hw: Any) -> tuple[WCS, tuple[int, int]] | None:
    if output_wcs is None:
        if output_shape_hw is not None:
            raise OptionError("output_shape_hw was given without output_wcs")
        return None
    if isinstance(output_wcs, fits.Header):
        header = output_wcs
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FITSFixedWarning)
            wcs = WCS(header, naxis=2, relax=True)
        if output_shape_hw is None and "NAXIS1" in header and "NAXIS2" in header:
            output_shape_hw = (int(header["NAXIS2"]), int(header["NAXIS1"]))
    elif isinstance(output_wcs, WCS):
        wcs = copy.deepcopy(output_wcs)
    else:
        raise OptionError(f"output_wcs must be an astropy WCS or a FITS header, got "
                          f"{type(output_wcs).__name__}")
    if not wcs.has_celestial:
        raise OptionError("output_wcs has no celestial WCS")
    if output_shape_hw is None:
        if wcs.array_shape is None:
            raise OptionError("output_shape_hw is needed (output_wcs has no pixel_shape)")
        output_shape_hw = tuple(wcs.array_shape)
    try:
        height, width = (int(v) for v in output_shape_hw)
    except (TypeError, ValueError):
        raise OptionError(f"output_shape_hw must be (H, W), got {output_shape_hw!r}") from None
    if height <= 0 or width <= 0:
        raise OptionError(f"output_shape_hw must be positive, got {output_shape_hw!r}")
    wcs.pixel_shape = (width, height)
    return wcs, (height, width)


def run_phase5(tiles: Sequence[Any], output_wcs: Any = None, output_shape_hw: Any = None,
               options: Mapping[str, Any] | Phase5Options | None = None,
               progress_callback: ProgressCallback | None = None,
               store: str | os.PathLike | None = None, on_bad_tile: str = "skip", *,
               in_memory_limit: int | str | None = None, tmp_dir: str | os.PathLike | None = None,
               workers: int | None = None) -> Phase5Result:
    """ZeMosaic's Phase 5 (reproject & coadd + post-stack pipeline), out of core.

    Parameters
    ----------
    tiles
        Master tiles in ZeMosaic's order: FITS paths (CHW as ZeMosaic writes them, optional
        ``ALPHA`` extension) and/or in-memory records ``(data, wcs, alpha, nframes)`` (tuple,
        mapping, :class:`TileRecordInput` or any object with those attributes): data (H, W, 3)
        float32 HWC, an astropy celestial WCS (SIP kept), ALPHA (H, W) uint8 or None, frame
        count or None.
    output_wcs, output_shape_hw
        The output grid (ZeMosaic's Phase-4 ``final_output_wcs`` and shape (H, W)); both None:
        computed from the tiles as ZeMosaic's Phase 4 does (spec §1).  A FITS header with NAXIS1/2
        is also accepted as ``output_wcs``.
    options
        ZeMosaic config keys (PHASE5_SPEC §9; a whole worker config is accepted) and our own
        keys (``memory_budget``, ``block_size``, ``gpu``, ...).  Unknown keys raise
        :class:`~zemosaic_ooc.errors.OptionError` naming the closest known key; refused keys
        raise it unless they have their default.
    progress_callback
        ``callback(message_key, fraction, level)``; see :class:`CallbackProgress`.
    store
        Where to keep the output Zarr store (kept after the call).  None: a temporary store,
        removed once the result is in memory (kept when the result is Zarr-backed; call
        :meth:`Phase5Result.cleanup` to remove it).
    on_bad_tile
        ``"skip"`` (default, ZeMosaic's behaviour): an unreadable, WCS-less or empty tile is
        skipped with a warning (in ``result.summary.warnings``); ``"raise"``: it raises
        :class:`~zemosaic_ooc.errors.InputError` naming the tile before anything is written.
    in_memory_limit
        Largest window (mosaic + coverage + alpha bytes) returned as numpy arrays; larger
        results are Zarr-backed.  Default: the ``memory_budget`` option (2 GiB by default);
        0 always returns Zarr-backed arrays.
    tmp_dir
        Folder for the temporary store and the FITS copies of in-memory records (default:
        beside ``store`` for the records, the system temporary folder otherwise).
    workers
        Threads for block tasks (default: min(CPUs, 8)).
    """
    opts = _build_options(options, on_bad_tile)
    limit = _in_memory_limit(in_memory_limit, opts)
    grid = _resolve_grid(output_wcs, output_shape_hw)
    if isinstance(tiles, (str, os.PathLike, bytes)):
        raise InputError(None, "tiles must be a list of FITS paths and/or tile records")
    items = list(tiles)
    if not items:
        raise InputError(None, "no input tiles were given")
    records = [_as_record(item, k) for k, item in enumerate(items)]
    n_records = sum(r is not None for r in records)

    progress = CallbackProgress(progress_callback,
                                planned_stages(opts, len(items), n_records > 0) + ["load result"])
    temporary = store is None
    if not temporary:
        store_path = Path(store)
        if store_path.exists() and any(store_path.iterdir()) and not opts.overwrite:
            raise StoreError(f"{store_path}: output store already exists (set the option "
                             "overwrite=True to replace it)")
    if tmp_dir is not None:
        Path(tmp_dir).mkdir(parents=True, exist_ok=True)
    # work_root: the temporary store and/or the FITS copies of in-memory records.  With a kept
    # store and no tmp_dir the copies go beside the store (same disk, which holds the tiles anyway).
    work_root: Path | None = None
    if temporary or (n_records and tmp_dir is not None):
        work_root = Path(tempfile.mkdtemp(prefix="zemosaic_ooc_", dir=tmp_dir))
    elif n_records:
        parent = store_path.parent if str(store_path.parent) else Path(".")
        parent.mkdir(parents=True, exist_ok=True)
        work_root = Path(tempfile.mkdtemp(prefix=f".{store_path.name}.records_", dir=parent))
    if temporary:
        store_path = work_root / "phase5.zarr"
    keep_store_root = False
    records_dir = None if work_root is None else work_root / "records"
    names: dict[str, str] = {}
    skipped: list[str] = []
    try:
        # ---- in-memory records -> ZeMosaic-style FITS (one at a time)
        paths: list[str] = []
        if n_records:
            records_dir.mkdir()
            progress.start("write tiles", n_records, unit="tile")
        for k, (item, record) in enumerate(zip(items, records)):
            if record is None:
                paths.append(os.fspath(item))
                continue
            path = records_dir / f"record_{k:04d}.fits"
            try:
                write_record_fits(path, record, k)
            except InputError as exc:
                if on_bad_tile == "raise":
                    raise
                log.warning("skipping bad tile %s", exc)
                skipped.append(str(exc))
            else:
                names[str(path)] = f"tiles[{k}]"
                paths.append(str(path))
            progress.advance("write tiles")
        if n_records:
            progress.finish("write tiles")
        if not paths:
            raise InputError(None, "no usable input tile (all were skipped: " + "; ".join(skipped) + ")")

        # ---- the pipeline
        try:
            summary = run_pipeline(paths, store_path, opts, progress=progress, grid=grid,
                                   workers=workers)
        except InputError as exc:
            if exc.path in names:
                raise InputError(names[exc.path], _rename(exc.problem, names)) from exc
            raise InputError(exc.path, _rename(exc.problem, names)) from exc
        summary.warnings = [f"skipped bad tile {text}" for text in skipped] + \
            [_rename(w, names) for w in summary.warnings]
        for text in summary.warnings:
            progress.message(text, "warning")

        # ---- the result: the autocrop window
        import zarr
        group = zarr.open_group(str(store_path), mode="r")
        y0, y1, x0, x1 = (int(v) for v in group.attrs.get("window", [0, summary.shape_hw[0], 0,
                                                                      summary.shape_hw[1]]))
        window = (y0, y1, x0, x1)
        wcs = _window_wcs(str(group.attrs["output_wcs_header"]), window)
        nbytes = (y1 - y0) * (x1 - x0) * RESULT_BYTES_PER_PIXEL
        in_memory = nbytes <= limit
        progress.start("load result", 3 if in_memory else 0, unit="array")
        if in_memory:
            mosaic = group["mosaic"][y0:y1, x0:x1, :]
            progress.advance("load result")
            coverage = group["coverage"][y0:y1, x0:x1]
            progress.advance("load result")
            alpha = group["alpha"][y0:y1, x0:x1]
            progress.advance("load result")
        else:
            mosaic = ZarrWindow(group["mosaic"], y0, y1, x0, x1)
            coverage = ZarrWindow(group["coverage"], y0, y1, x0, x1)
            alpha = ZarrWindow(group["alpha"], y0, y1, x0, x1)
            keep_store_root = temporary
            log.info("result of %.1f MiB exceeds in_memory_limit (%.1f MiB): Zarr-backed arrays "
                     "in %s", nbytes / 2**20, limit / 2**20, store_path)
        progress.finish("load result")
        result = Phase5Result(
            mosaic=mosaic, coverage=coverage, alpha=alpha, wcs=wcs, summary=summary,
            in_memory=in_memory,
            store_path=None if (temporary and in_memory) else Path(store_path),
            window=window, grid_shape_hw=tuple(summary.shape_hw), temporary=temporary,
            warnings=list(summary.warnings))
    finally:
        if work_root is not None:
            if keep_store_root:
                shutil.rmtree(work_root / "records", ignore_errors=True)
            else:
                shutil.rmtree(work_root, ignore_errors=True)
    progress.close()
    return result


def _rename(text: str, names: Mapping[str, str]) -> str:
    """Replace the temporary FITS names of in-memory records by ``tiles[k]`` in a message."""
    for path, name in names.items():
        text = text.replace(path, name).replace(Path(path).name, name)
    return text
