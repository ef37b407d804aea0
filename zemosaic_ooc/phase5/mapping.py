"""Output pixel ↔ tile pixel mapping (spec §4.2 step 2), exact and through control grids.

Tile pixel coordinates here are those of the **cropped** tile (§2.3): cropped
pixel (u, v) is uncropped pixel (u + dw, v + dh).  We map with the uncropped
WCS and shift, which is exactly the "required semantics" of §2.3 (the crop does
not move the tile on the sky, SIP included).

Astropy WCS objects are not safe to share between threads (§0.7), so every
thread gets its own copies (:meth:`TileGeometry.new_uncropped_wcs`).

The block mapping evaluates astropy's full transform (SIP included) with
reproject's round-trip check on a control grid of nodes every ``step`` output
pixels and interpolates between nodes with separable 4-point Lagrange (cubic)
weights.  Pixels whose interpolation stencil touches a node that failed the
round trip are computed exactly.
"""
from __future__ import annotations

import threading
import warnings
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

import numpy as np
from astropy.io import fits
from astropy.wcs import WCS, NoConvergence
from astropy.wcs.utils import pixel_to_pixel, wcs_to_celestial_frame

from ..store.tiles import header_wcs

DEFAULT_CONTROL_STEP = 32   # px; cubic Lagrange between nodes: ≤ 1.2e-7 px from astropy on the fixtures, 8e-9 on demo tiles

_local = threading.local()


def _wcs_from_header_text(text: str) -> WCS:
    """A fresh WCS from header text, read the way tiles are read at ingest."""
    return header_wcs(fits.Header.fromstring(text))


#: WCS objects whose thread has ended, by key, for the next threads (a stage's thread pool ends
#: with the stage, and parsing a tile's header again costs ~2 ms under the GIL: 300 parses
#: in a 16-tile first pass with 8 workers); at most this many keys are kept
_FREE_WCS_KEYS = 256
_free_wcs: OrderedDict[str, list[WCS]] = OrderedDict()
_free_wcs_lock = threading.RLock()       # re-entrant: a cache may be collected inside the lock


class _ThreadWcsCache(dict):
    """One thread's WCS objects (key → WCS); when the thread ends they go back to the pool."""

    def __del__(self) -> None:
        with _free_wcs_lock:
            for key, wcs in self.items():
                _free_wcs.setdefault(key, []).append(wcs)
                _free_wcs.move_to_end(key)
            while len(_free_wcs) > _FREE_WCS_KEYS:
                _free_wcs.popitem(last=False)


def thread_wcs(key: str, header_text: str) -> WCS:
    """A WCS private to the calling thread: built once per key and reused by later threads
    (never by two threads at once: astropy's WCS is not thread-safe, §0.7)."""
    cache = getattr(_local, "wcs_cache", None)
    if cache is None:
        cache = _local.wcs_cache = _ThreadWcsCache()
    wcs = cache.get(key)
    if wcs is None:
        with _free_wcs_lock:
            free = _free_wcs.get(key)
            wcs = free.pop() if free else None
        cache[key] = wcs if wcs is not None else _wcs_from_header_text(header_text)
        wcs = cache[key]
    return wcs


@dataclass(frozen=True)
class TileGeometry:
    """Where a tile lies: its uncropped WCS (as header text) and its crop (§2.3)."""

    index: int
    header_text: str
    shape_hw: tuple[int, int]        # uncropped (H, W)
    crop_hw: tuple[int, int]         # (dh, dw) removed on each side

    @property
    def cropped_hw(self) -> tuple[int, int]:
        return (self.shape_hw[0] - 2 * self.crop_hw[0], self.shape_hw[1] - 2 * self.crop_hw[1])

    def wcs(self) -> WCS:
        """The thread-private uncropped WCS."""
        return thread_wcs(f"tile-{self.index}-{hash(self.header_text)}", self.header_text)

    def new_uncropped_wcs(self) -> WCS:
        return _wcs_from_header_text(self.header_text)


def crop_margins(shape_hw: tuple[int, int], apply_crop: bool, crop_percent: float,
                 quality_crop_enabled: bool = False) -> tuple[int, int]:
    """§2.3 margins (dh, dw): ⌊H·f⌋, ⌊W·f⌋, or (0, 0) when the crop does not apply."""
    if not apply_crop or quality_crop_enabled or not (crop_percent > 1e-3):
        return (0, 0)
    frac = crop_percent / 100.0
    height, width = shape_hw
    dh, dw = int(height * frac), int(width * frac)
    if 2 * dh >= height or 2 * dw >= width:
        return (0, 0)
    return (dh, dw)


class OutputGrid:
    """Ω with thread-private WCS copies."""

    def __init__(self, wcs: WCS, shape_hw: tuple[int, int]):
        self.header_text = wcs.to_header(relax=True).tostring()
        self.shape_hw = (int(shape_hw[0]), int(shape_hw[1]))

    def wcs(self) -> WCS:
        return thread_wcs(f"out-{hash(self.header_text)}", self.header_text)


def _as_wcs(out: Any) -> WCS:
    return out.wcs() if isinstance(out, OutputGrid) else out


def _frame_key(wcs: Any) -> tuple | None:
    """What the world coordinates of ``wcs`` mean, when :func:`_pixel_to_pixel`'s direct path
    applies to it (2-D celestial, longitude first, no pixel bounds), else None; cached on the
    WCS object (a thread's own, :func:`thread_wcs`)."""
    cached = getattr(wcs, "_zemosaic_frame_key", False)
    if cached is not False:
        return cached
    key = None
    try:
        if (isinstance(wcs, WCS) and wcs.pixel_n_dim == 2 and wcs.world_n_dim == 2
                and wcs.pixel_bounds is None and (wcs.wcs.lng, wcs.wcs.lat) == (0, 1)):
            frame = wcs_to_celestial_frame(wcs)
            key = (type(frame).__name__,
                   tuple((name, repr(getattr(frame, name))) for name in sorted(frame.frame_attributes)))
    except Exception:
        key = None
    try:
        wcs._zemosaic_frame_key = key
    except AttributeError:
        pass
    return key


def _pixel_to_pixel(w_from: Any, w_to: Any, a: np.ndarray, b: np.ndarray) -> tuple[Any, Any]:
    """astropy's ``pixel_to_pixel(w_from, w_to, a, b)``, the same numbers.

    Between two celestial WCS in one frame, astropy's high-level path (SkyCoord objects) comes
    down to ``all_pix2world`` → longitude wrapped into [0°, 360°) → ``all_world2pix`` (its best
    solution where it does not converge); that is done here directly, without the ~2 ms per
    call that the SkyCoord objects cost under the GIL (a control grid of every block and tile
    in every stage).  Other pairs (other frames, axis orders) go through astropy."""
    key_from = _frame_key(w_from)
    if key_from is None or key_from != _frame_key(w_to):
        return pixel_to_pixel(w_from, w_to, a, b)
    lon, lat = w_from.all_pix2world(a, b, 0)
    lon = np.where((lon < 0.0) | (lon >= 360.0), np.mod(lon, 360.0), lon)   # astropy's Longitude
    try:
        p, q = w_to.all_world2pix(lon, lat, 0)
    except NoConvergence as exc:                  # as astropy's world_to_pixel_values
        best = np.asarray(exc.best_solution)
        p, q = best[:, 0].reshape(np.shape(lon)), best[:, 1].reshape(np.shape(lon))
    return p, q


def _pixel_map(w_from: Any, w_to: Any, a: np.ndarray, b: np.ndarray,
               roundtrip: bool) -> tuple[np.ndarray, np.ndarray]:
    """Pixel (a, b) of ``w_from`` → pixel of ``w_to`` (float64, astropy's full transform).

    With ``roundtrip`` (reproject_interp's rule) positions whose round trip back misses by
    more than 1 px in either axis become NaN.
    """
    with warnings.catch_warnings(), np.errstate(all="ignore"):
        warnings.simplefilter("ignore")
        p, q = _pixel_to_pixel(w_from, w_to, a, b)
        p = np.array(p, dtype=np.float64)
        q = np.array(q, dtype=np.float64)
        if roundtrip:
            ab, bb = _pixel_to_pixel(w_to, w_from, p, q)
            reset = (np.abs(np.asarray(ab) - a) > 1) | (np.abs(np.asarray(bb) - b) > 1)
            if np.any(reset):
                p[reset] = np.nan
                q[reset] = np.nan
    return p, q


def output_to_tile(geom: TileGeometry, out_wcs: Any, x: np.ndarray, y: np.ndarray,
                   roundtrip: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """Exact Ω pixel → cropped tile pixel (astropy full transform, SIP included).

    With ``roundtrip`` (reproject_interp's default) positions whose round trip
    back to Ω misses by more than 1 px in x or y become NaN.
    """
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    uu, vv = _pixel_map(_as_wcs(out_wcs), geom.wcs(), x, y, roundtrip)
    return uu - geom.crop_hw[1], vv - geom.crop_hw[0]


def tile_to_output(geom: TileGeometry, out_wcs: Any, u: np.ndarray, v: np.ndarray,
                   roundtrip: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Exact cropped tile pixel → Ω pixel (astropy full transform)."""
    uu = np.asarray(u, dtype=np.float64) + geom.crop_hw[1]
    vv = np.asarray(v, dtype=np.float64) + geom.crop_hw[0]
    x, y = _pixel_map(geom.wcs(), _as_wcs(out_wcs), uu, vv, roundtrip)
    return x, y


def lagrange_taps(offsets: np.ndarray, step: int) -> np.ndarray:
    """(4, n) weights of nodes c .. c + 3 for pixel offsets p (cell c = p // step; see below)."""
    t = (offsets - (offsets // step) * step) / float(step)
    return np.stack([-t * (t - 1.0) * (t - 2.0) / 6.0,
                     (t + 1.0) * (t - 1.0) * (t - 2.0) / 2.0,
                     -(t + 1.0) * t * (t - 2.0) / 2.0,
                     (t + 1.0) * t * (t - 1.0) / 6.0])


#: (id of the array module, step) → (the module, the taps of every pixel of a cell on its device)
_CELL_TAPS: dict[tuple[int, int], tuple[Any, Any]] = {}


def cell_taps(step: int, xp: Any = np) -> Any:
    """:func:`lagrange_taps` of the pixel offsets 0 … step − 1 of a cell, (4, step) float64 on
    ``xp`` (numpy or cupy).  Every block's mapping uses them: on a device they are copied
    there once per process, not once per block and tile."""
    key = (id(xp), int(step))
    taps = _CELL_TAPS.get(key, (None, None))[1]
    if taps is None:
        taps = xp.asarray(lagrange_taps(np.arange(step), step))
        if isinstance(taps, np.ndarray):
            taps.flags.writeable = False    # shared by every thread
        current_stream = getattr(getattr(xp, "cuda", None), "get_current_stream", None)
        if current_stream is not None:  # pragma: no cover - device only
            # other threads read it on their own streams: the copy must be complete first
            current_stream().synchronize()
        _CELL_TAPS[key] = (xp, taps)        # the module is kept: its id is not reused
    return taps


def node_count(n_pixels: int, step: int) -> int:
    """Control nodes along an axis of ``n_pixels`` for nodes every ``step`` (see :func:`lagrange_matrix`)."""
    return (n_pixels - 1) // step + 1 + 3


def lagrange_matrix(n_pixels: int, step: int) -> tuple[np.ndarray, int]:
    """Weights (n_pixels × n_nodes) of 4-point Lagrange interpolation on nodes every ``step``.

    Node k sits at pixel offset (k − 1)·step, so pixel offset p ∈ [0, n_pixels)
    lies in cell c = p // step between nodes c + 1 and c + 2, and uses nodes
    c .. c + 3.  Cubic polynomials are reproduced exactly.
    """
    n_nodes = node_count(n_pixels, step)
    matrix = np.zeros((n_pixels, n_nodes), dtype=np.float64)
    offsets = np.arange(n_pixels)
    cell = offsets // step
    taps = lagrange_taps(offsets, step)
    for k in range(4):
        matrix[offsets, cell + k] = taps[k]
    return matrix, n_nodes


def _expand_rows(nodes: Any, height: int, step: int, xp: Any = np) -> Any:
    """``W @ nodes`` for W = lagrange_matrix(height, step)[0], using its 4 taps per row.

    ``nodes`` is (n_nodes, m); every row cell of ``step`` pixels reads the same 4
    nodes, so the product is 4 broadcast multiply-adds on (n_cells, step, m) (no BLAS:
    its threads would compete with the block workers).  ``xp``: numpy or cupy.
    """
    n_cells = nodes.shape[0] - 3
    taps = cell_taps(step, xp)[:, :, None]                                 # (4, step, 1), every cell
    out = xp.empty((n_cells, step, nodes.shape[1]), dtype=xp.float64)
    xp.multiply(nodes[0:n_cells, None, :], taps[0], out=out)
    for k in range(1, 4):
        out += nodes[k:k + n_cells, None, :] * taps[k]
    return out.reshape(n_cells * step, nodes.shape[1])[:height]


def _expand_columns(rows: Any, width: int, step: int, xp: Any = np) -> Any:
    """``rows @ W.T`` for W = lagrange_matrix(width, step)[0]: as :func:`_expand_rows` along axis 1.

    Written along the last axis so the (h, width) result is C-contiguous.
    """
    height = rows.shape[0]
    n_cells = rows.shape[1] - 3
    taps = cell_taps(step, xp)                                       # (4, step), every cell
    out = xp.empty((height, n_cells, step), dtype=xp.float64)
    term = xp.empty_like(out)
    xp.multiply(rows[:, 0:n_cells, None], taps[0], out=out)
    for k in range(1, 4):
        out += xp.multiply(rows[:, k:k + n_cells, None], taps[k], out=term)
    return out.reshape(height, n_cells * step)[:, :width]


def _interpolate_nodes(nodes: Any, height: int, width: int, step: int, xp: Any = np) -> Any:
    """The (height, width) field of the separable Lagrange interpolation of a node grid."""
    return _expand_columns(_expand_rows(nodes, height, step, xp), width, step, xp)


def map_region(geom: TileGeometry, out_wcs: Any, box: tuple[int, int, int, int],
               step: int = DEFAULT_CONTROL_STEP, backend: Any = None) -> tuple[Any, Any]:
    """Cropped-tile coordinates (u, v) of every Ω pixel of ``box`` = (y0, y1, x0, x1).

    Returns two float64 (h, w) arrays, NaN where the round trip fails.  With
    ``step <= 1`` every pixel is mapped exactly.  The WCS transforms of the control
    nodes run on the host (astropy); with a ``backend`` the nodes are expanded to every
    pixel on that backend (on a GPU only the node grid crosses the bus, not the maps).
    """
    y0, y1, x0, x1 = box
    height, width = y1 - y0, x1 - x0
    xp = np if backend is None else backend.xp
    if step <= 1 or height * width <= 4 * step * step:
        ys, xs = np.mgrid[y0:y1, x0:x1].astype(np.float64)
        uu, vv = output_to_tile(geom, out_wcs, xs.ravel(), ys.ravel())
        uu, vv = uu.reshape(height, width), vv.reshape(height, width)
        return (uu, vv) if backend is None else (backend.asarray(uu), backend.asarray(vv))
    ny, nx = node_count(height, step), node_count(width, step)
    node_y = y0 + (np.arange(ny) - 1.0) * step
    node_x = x0 + (np.arange(nx) - 1.0) * step
    gx, gy = np.meshgrid(node_x, node_y)
    nu, nv = output_to_tile(geom, out_wcs, gx.ravel(), gy.ravel())
    nu = nu.reshape(ny, nx)
    nv = nv.reshape(ny, nx)
    bad_nodes = ~(np.isfinite(nu) & np.isfinite(nv))
    if bad_nodes.any():
        nu = np.where(bad_nodes, 0.0, nu)
        nv = np.where(bad_nodes, 0.0, nv)
    if backend is not None:
        nu, nv = backend.asarray(nu), backend.asarray(nv)
    uu = _interpolate_nodes(nu, height, width, step, xp)
    vv = _interpolate_nodes(nv, height, width, step, xp)
    if bad_nodes.any():
        wy, wx = lagrange_matrix(height, step)[0], lagrange_matrix(width, step)[0]
        touched = ((wy != 0).astype(np.float64) @ bad_nodes.astype(np.float64)
                   @ (wx != 0).astype(np.float64).T) > 0
        rows, cols = np.nonzero(touched)
        eu, ev = output_to_tile(geom, out_wcs, (cols + x0).astype(np.float64),
                                (rows + y0).astype(np.float64))
        if backend is not None:
            rows, cols, eu, ev = (backend.asarray(a) for a in (rows, cols, eu, ev))
        uu[rows, cols] = eu
        vv[rows, cols] = ev
    return uu, vv
