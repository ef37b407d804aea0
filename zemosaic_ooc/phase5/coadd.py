"""Per-tile resampled contributions and the weighted-mean block coadd (spec §4.2, §4.5, §5.1–§5.3).

A block is done in two steps.  :func:`sample_block` resamples every tile touching
it, in input order: data d_t (per channel) and weight ω′_t·τ_t, and the alpha
union U (float32 max over tiles); these do not depend on the background offsets,
so the background stage samples the blocks once and pass 1 reuses them.
:func:`coadd_block` then subtracts k_t,c and accumulates Σ f·(d − k) and Σ f in
float64, row chunk by row chunk.

How a tile is resampled over a box of Ω (:class:`TileView`): the pixel mapping
is evaluated once for the box (control grid, :func:`~.mapping.map_region`), the
tile region under it is read from the store once, prepared (§2) and packed as
(h·w, 4) float32 = (d_R, d_G, d_B, w) with w = m_t (the §4.1 base weight: ω_t =
w·τ_t); then the box is sampled in row chunks of about :data:`CHUNK_PIXELS`
output pixels, one :class:`~.resample.Stencil` per chunk shared by the three
channels, the weight and the union mask b_t.  The chunks keep the temporaries
in cache.  Arrays inside a block are HWC.

Precision: d_t and ω′_t are interpolated in float32 (:data:`SAMPLE_DTYPE`; the
planes are float32 anyway) and accumulated in float64, as §5.1 asks.  On the
golden fixtures the pass-1 mosaic stays within 1.6e-7 of P99 − P1 of ZeMosaic's
(float64 interpolation: ≤ 3e-8; the mark is 1e-5) and the background offsets
within 6e-5 ADU (mark 1e-3).  The alpha union's bilinear stays float64 (§5.3:
its float32 rounding decides 254 against 255).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterator, Sequence

import numpy as np

from ..backend import CPU_CHUNK_PIXELS, Backend
from ..store.tiles import TileStore
from .grid import Box, intersect
from .mapping import DEFAULT_CONTROL_STEP, OutputGrid, map_region
from .plan import geometry, read_raw_region
from .prep import TilePlan, prepare_region, union_mask
from .resample import (Stencil, apply_stencil, apply_stencil_binary, bilinear_stencil, nearest_index,
                       pack_planes, region_bounds)

CHUNK_PIXELS = CPU_CHUNK_PIXELS   # default output pixels sampled at once (a backend sets its own)
SAMPLE_DTYPE = "float32"  # interpolation arithmetic of d_t and ω′_t (see the module docstring)


def _bounding(a: Box | None, b: Box | None) -> Box | None:
    if a is None:
        return b
    if b is None:
        return a
    return (min(a[0], b[0]), max(a[1], b[1]), min(a[2], b[2]), max(a[3], b[3]))


@dataclass
class TileView:
    """One tile mapped onto a box of Ω, with its prepared region packed for gathers.

    ``uu``, ``vv``: (h, w) float64 cropped-tile coordinates of the box pixels;
    ``origin`` / ``region_hw``: the tile region read; ``packed``: (rh·rw, 4)
    float32 (d_R, d_G, d_B, w) or None; ``union``: (rh·rw, 1) float32 b_t or None;
    ``tau``: the factor turning sampled w into f (ω = w·τ).
    """

    xp: Any
    tile: TilePlan
    box: Box
    uu: Any
    vv: Any
    origin: tuple[int, int]
    region_hw: tuple[int, int]
    packed: Any
    union: Any
    tau: float
    chunk_pixels: int = CHUNK_PIXELS

    def chunks(self, chunk_pixels: int | None = None) -> Iterator[tuple[slice, Stencil]]:
        """(box-relative row slice, stencil of those rows) in chunks of about ``chunk_pixels``
        (default: the backend's :attr:`~zemosaic_ooc.backend.Backend.chunk_pixels`)."""
        chunk_pixels = self.chunk_pixels if chunk_pixels is None else chunk_pixels
        height, width = self.uu.shape
        rows = max(1, chunk_pixels // max(1, width))
        for r0 in range(0, height, rows):
            sl = slice(r0, min(height, r0 + rows))
            yield sl, self.stencil(self.uu[sl], self.vv[sl])

    def stencil(self, u: Any, v: Any) -> Stencil:
        return bilinear_stencil(self.xp, self.origin, self.region_hw, self.tile.cropped_hw, u, v)

    def values(self, stencil: Stencil) -> Any:
        """(…, 4) :data:`SAMPLE_DTYPE`: d_t (3 channels, NaN invalid) and ω′_t·τ_t (NaN outside)."""
        xp = self.xp
        values = apply_stencil(xp, stencil, self.packed, xp.dtype(SAMPLE_DTYPE))
        values[..., 3] *= self.tau
        return values

    def samples(self, stencil: Stencil) -> tuple[Any, Any, Any]:
        """d (…, 3) (NaN invalid), f (…, 3) (ω′ where d and ω′ are finite, else 0) and that mask.

        ω′ is NaN only outside the tile (w has no NaN), where d is NaN too: d's mask is f's.
        """
        xp = self.xp
        values = self.values(stencil)
        data = values[..., :3]
        good = xp.isfinite(data)
        return data, xp.where(good, values[..., 3:], 0.0), good

    def union_values(self, stencil: Stencil) -> Any:
        """§5.3 step 4: bilinear b_t, NaN → 0, clipped to [0, 1], float32 (stencil shape)."""
        return apply_stencil_binary(self.xp, stencil, self.union[:, 0])


def prepared_planes(backend: Backend, raw_data: Any, raw_alpha: Any, tile: TilePlan, *,
                    want_data: bool, want_union: bool, gain_override: float | None = None,
                    binary_weights: bool = False) -> tuple[Any, Any]:
    """§2 on a raw region, packed for the gathers: ((h·w, 4) float32 d_R, d_G, d_B, w or None,
    (h·w, 1) float32 b_t or None).

    ``gain_override`` multiplies the prepared data (two-pass γ_t); with ``binary_weights``
    w = (m > 0) (pass 2), else w = m_t.
    """
    xp = backend.xp
    packed = union = None
    if want_data:
        data, mask, _ = prepare_region(backend, raw_data, raw_alpha, tile, want_weight=False)
        if gain_override is not None and gain_override != 1.0:
            data = data * xp.float32(gain_override)
        # ω_t = w·τ with w = m_t (prepare_region's base weight is m_t in both §4.1 cases)
        weight = (mask > 0).astype(xp.float32) if binary_weights else mask.astype(xp.float32)
        height, width = mask.shape
        packed = xp.empty((height, width, 4), dtype=xp.float32)
        packed[..., :3] = xp.moveaxis(data, 0, -1)
        packed[..., 3] = weight
        packed = packed.reshape(-1, 4)
    if want_union:
        union = pack_planes(xp, union_mask(backend, raw_data, raw_alpha, tile)[None])
    return packed, union


def open_view(backend: Backend, store: TileStore, tile: TilePlan, grid: OutputGrid, box: Box, *,
              want_data: bool = True, want_union: bool = False, step: int = DEFAULT_CONTROL_STEP,
              gain_override: float | None = None, binary_weights: bool = False) -> TileView | None:
    """Map ``tile`` onto ``box`` and read + prepare its region once; None when it does not reach the box.

    ``gain_override`` multiplies the prepared data (two-pass γ_t); with
    ``binary_weights`` ω = (m > 0)·τ (pass 2).  On a backend with resident tiles
    (:mod:`.resident`, a device) the view gathers from the whole prepared tile kept there
    instead of reading and preparing the region: the same values.
    """
    xp = backend.xp
    uu, vv = map_region(geometry(tile), grid, box, step=step, backend=backend)
    bounds = region_bounds(uu, vv, tile.cropped_hw, xp)
    if bounds is None:
        return None
    resident = backend.resident.get(backend, store, tile, prepared_planes, gain_override=gain_override,
                                    binary_weights=binary_weights) if backend.resident is not None else None
    if resident is not None:
        return TileView(xp, tile, box, uu, vv, (0, 0), tuple(tile.cropped_hw),
                        resident.packed if want_data else None, resident.union if want_union else None,
                        float(tile.tau), chunk_pixels=int(backend.chunk_pixels))
    r0, r1, c0, c1 = bounds
    # b_t of a tile with ALPHA (§5.3 step 1) needs no data
    with_data = want_data or not tile.has_alpha or tile.empty_flag
    raw_data, raw_alpha = read_raw_region(store, tile, (r0, r1), (c0, c1), with_data=with_data)
    raw_data = None if raw_data is None else backend.asarray(raw_data)
    raw_alpha = None if raw_alpha is None else backend.asarray(raw_alpha)
    packed, union = prepared_planes(backend, raw_data, raw_alpha, tile, want_data=want_data,
                                    want_union=want_union, gain_override=gain_override,
                                    binary_weights=binary_weights)
    return TileView(xp, tile, box, uu, vv, (r0, c0), (r1 - r0, c1 - c0), packed, union, float(tile.tau),
                    chunk_pixels=int(backend.chunk_pixels))


@dataclass
class BlockResult:
    """A finished pass block: mosaic (h, w, 3) float32 (0 where uncovered), coverage, union
    (host arrays; None when the caller asked for the backend's arrays alone)."""

    box: Box
    mosaic: np.ndarray | None
    coverage: np.ndarray | None
    union: np.ndarray | None
    covered_rows: tuple[int, int] | None
    covered_cols: tuple[int, int] | None
    #: (mosaic, coverage, union) as the backend that computed them holds them, when asked
    #: (``keep_on_backend``: a device run hands them to the next stage without a store read)
    on_backend: tuple[Any, Any, Any] | None = None


def _rows_in(box: Box | None, g0: int, g1: int) -> tuple[int, int] | None:
    """Grid rows of ``box`` within [g0, g1), or None."""
    if box is None:
        return None
    r0, r1 = max(box[0], g0), min(box[1], g1)
    return (r0, r1) if r1 > r0 else None


@dataclass
class TileSamples:
    """One tile resampled over its data box within a block (HWC float32).

    ``data``: (h, w, 3) d_t, NaN where invalid; ``weight``: (h, w, 1) ω′_t·τ_t (NaN outside).
    """

    tile: TilePlan
    box: Box
    data: Any
    weight: Any


@dataclass
class BlockSamples:
    """Every tile resampled on one block, in input order, and the block's alpha union U (or None)."""

    box: Box
    tiles: list[TileSamples]
    union: Any
    xp: Any = np          # the array module holding the samples (numpy or cupy)

    @property
    def nbytes(self) -> int:
        return sum(t.data.nbytes + t.weight.nbytes for t in self.tiles) + \
            (0 if self.union is None else self.union.nbytes)


def sample_block(backend: Backend, store: TileStore, tiles: Sequence[TilePlan], grid: OutputGrid,
                 block: Box, *, with_union: bool = True, two_pass: bool = False,
                 step: int = DEFAULT_CONTROL_STEP) -> BlockSamples:
    """§4.2 and §5.3 step 4 on one block: d_t and ω′_t of every tile touching it, and U.

    Each tile is mapped and read once over the bounding box of its data box and union box
    (:func:`open_view`), then sampled in row chunks of about :data:`CHUNK_PIXELS` with one
    stencil per chunk for data, weight and b_t.  The result does not depend on the
    background offsets, so the background stage can sample a block and pass 1 reuse it.
    """
    xp = backend.xp
    y0, y1, x0, x1 = block
    union = xp.zeros((y1 - y0, x1 - x0), dtype=xp.float32) if with_union else None
    sampled: list[TileSamples] = []
    for tile in tiles:
        data_box = intersect(tile.box, block)
        union_box = intersect(tile.union_bbox, block) if with_union else None
        rect = _bounding(data_box, union_box)
        if rect is None:
            continue
        view = open_view(backend, store, tile, grid, rect, want_data=data_box is not None,
                         want_union=union_box is not None, step=step,
                         gain_override=tile.two_pass_gain if two_pass else None,
                         binary_weights=two_pass)
        if view is None:
            continue
        if data_box is not None:
            dh, dw = data_box[1] - data_box[0], data_box[3] - data_box[2]
            data = xp.empty((dh, dw, 3), dtype=xp.dtype(SAMPLE_DTYPE))
            weight = xp.empty((dh, dw, 1), dtype=xp.dtype(SAMPLE_DTYPE))
            cc = slice(data_box[2] - rect[2], data_box[3] - rect[2])
        for rows, stencil in view.chunks():
            g0, g1 = rect[0] + rows.start, rect[0] + rows.stop
            data_rows = _rows_in(data_box, g0, g1)
            if data_rows is not None:
                values = view.values(stencil)
                cr = slice(data_rows[0] - g0, data_rows[1] - g0)
                out = slice(data_rows[0] - data_box[0], data_rows[1] - data_box[0])
                data[out] = values[cr, cc, :3]
                weight[out] = values[cr, cc, 3:]
            union_rows = _rows_in(union_box, g0, g1)
            if union_rows is not None:
                cr = slice(union_rows[0] - g0, union_rows[1] - g0)
                uc = slice(union_box[2] - rect[2], union_box[3] - rect[2])
                vals = view.union_values(stencil)[cr, uc]
                target = union[union_rows[0] - y0:union_rows[1] - y0, union_box[2] - x0:union_box[3] - x0]
                xp.maximum(target, vals, out=target)
        if data_box is not None:
            sampled.append(TileSamples(tile, data_box, data, weight))
    return BlockSamples(block, sampled, union, xp)


def coadd_block(backend: Backend, store: TileStore, tiles: Sequence[TilePlan], grid: OutputGrid,
                block: Box, *, offsets_attr: str = "bg_offsets", with_union: bool = True,
                two_pass: bool = False, step: int = DEFAULT_CONTROL_STEP,
                samples: BlockSamples | None = None, keep_on_backend: bool = False,
                host_copies: bool = True) -> BlockResult:
    """§4.5 + §5.1–§5.3 on one block: Σ f·(d − k) / Σ f per channel, coverage, alpha union.

    ``samples`` (from :func:`sample_block` with the same arguments) are used instead of
    resampling (when they live on this backend).  The block is finished in row chunks of
    about ``backend.chunk_pixels``: each
    chunk accumulates its tiles in input order in float64 and is divided and cast to
    float32 at once.  ``keep_on_backend``: the result also carries the backend's own arrays
    (:attr:`BlockResult.on_backend`); ``host_copies=False`` leaves out the host copies.
    """
    xp = backend.xp
    if samples is None or samples.xp is not xp:
        samples = sample_block(backend, store, tiles, grid, block, with_union=with_union,
                               two_pass=two_pass, step=step)
    y0, y1, x0, x1 = block
    h, w = y1 - y0, x1 - x0
    offsets = []
    for item in samples.tiles:
        k = backend.asarray(np.asarray(getattr(item.tile, offsets_attr), dtype=np.float64))
        offsets.append((k, bool(xp.isfinite(k).all())))
    mosaic = xp.zeros((h, w, 3), dtype=xp.float32)
    coverage = xp.zeros((h, w), dtype=xp.float32)
    rows_per_chunk = max(1, int(backend.chunk_pixels) // max(1, w))
    for c0 in range(0, h, rows_per_chunk):
        c1 = min(h, c0 + rows_per_chunk)
        g0, g1 = y0 + c0, y0 + c1
        sums = xp.zeros((c1 - c0, w, 3), dtype=xp.float64)
        wsum = xp.zeros((c1 - c0, w, 3), dtype=xp.float64)
        for item, (k, finite_k) in zip(samples.tiles, offsets):
            box = item.box
            rows = _rows_in(box, g0, g1)
            if rows is None:
                continue
            part = slice(rows[0] - box[0], rows[1] - box[0])
            d = item.data[part]
            good = xp.isfinite(d)
            f = xp.where(good, item.weight[part], 0.0)
            sy = slice(rows[0] - g0, rows[1] - g0)
            sx = slice(box[2] - x0, box[3] - x0)
            # f·(d − k), 0 where f = 0; with a finite k, (d − k)·f is already 0 wherever d is finite
            shifted = xp.where(good, d - k, 0.0) if finite_k else xp.where(f == 0, 0.0, d - k)
            sums[sy, sx] += shifted * f
            wsum[sy, sx] += f
        with np.errstate(invalid="ignore", divide="ignore"):
            mean = sums / wsum
        mosaic[c0:c1] = xp.where(wsum == 0, 0.0, mean)
        coverage[c0:c1] = wsum[..., 0]
    covered = coverage > 0
    rows_any = xp.nonzero(covered.any(axis=1))[0]
    cols_any = xp.nonzero(covered.any(axis=0))[0]
    covered_rows = (int(rows_any[0]) + y0, int(rows_any[-1]) + y0 + 1) if rows_any.size else None
    covered_cols = (int(cols_any[0]) + x0, int(cols_any[-1]) + x0 + 1) if cols_any.size else None
    union = samples.union

    def host(array: Any) -> np.ndarray | None:
        return None if array is None or not host_copies else backend.to_host(array)

    return BlockResult(block, host(mosaic), host(coverage), host(union), covered_rows, covered_cols,
                       on_backend=(mosaic, coverage, union) if keep_on_backend else None)


def tile_strips(backend: Backend, store: TileStore, tile: TilePlan, grid: OutputGrid, *,
                strip_pixels: int = 1 << 20, step: int = DEFAULT_CONTROL_STEP, with_data: bool = True):
    """Walk a tile's §4.2 box in row strips: yields (strip box, u, v, region origin, raw data, raw alpha).

    u, v are the cropped-tile coordinates of every strip pixel (backend arrays); the raw
    region (C, h, w) / (h, w) covers every in-bounds position, with top-left ``origin``
    (raw data None when not ``with_data``).  Strips that do not reach the tile are skipped.
    """
    xp = backend.xp
    y0, y1, x0, x1 = tile.box
    geom = geometry(tile)
    rows_per_strip = max(1, strip_pixels // max(1, x1 - x0))
    for sy0 in range(y0, y1, rows_per_strip):
        strip = (sy0, min(y1, sy0 + rows_per_strip), x0, x1)
        uu, vv = map_region(geom, grid, strip, step=step, backend=backend)
        bounds = region_bounds(uu, vv, tile.cropped_hw, xp)
        if bounds is None:
            continue
        r0, r1, c0, c1 = bounds
        raw_data, raw_alpha = read_raw_region(store, tile, (r0, r1), (c0, c1), with_data=with_data)
        yield (strip, uu, vv, (r0, c0), None if raw_data is None else backend.asarray(raw_data),
               None if raw_alpha is None else backend.asarray(raw_alpha))


def _nearest_positive(backend: Backend, store: TileStore, tile: TilePlan, grid: OutputGrid, box: Box,
                      step: int) -> Any | None:
    """(h, w) bool on ``box``: the nearest-neighbour reprojection of b_t is > 0 (None: off the tile)."""
    xp = backend.xp
    view = open_view(backend, store, tile, grid, box, want_data=False, want_union=True, step=step)
    if view is None:
        return None
    index, inside = nearest_index(xp, view.origin, view.region_hw, tile.cropped_hw, view.uu, view.vv)
    return (inside & (xp.take(view.union[:, 0], index) > 0)).reshape(view.uu.shape)


def union_bbox(backend: Backend, store: TileStore, tile: TilePlan, grid: OutputGrid,
               *, strip_pixels: int = 1 << 20, step: int = DEFAULT_CONTROL_STEP,
               band: int = 32) -> Box | None:
    """§5.3 step 3: bbox of the nearest-neighbour reprojection of b_t where it is > 0.

    Only the tile's §4.2 box can hold such pixels.  Each side of the bbox is found by
    scanning bands of ``band`` rows (columns) of that box inwards from the same side
    and stopping at the first band with a positive pixel, so the answer is the full
    scan's while only the bands near the edges are resampled.  ``strip_pixels`` caps
    the pixels of a band (a narrower band on very wide boxes).
    """
    xp = backend.xp
    if tile.box is None or tile.empty_flag:
        return None
    y0, y1, x0, x1 = tile.box
    rows_band = max(1, min(band, strip_pixels // max(1, x1 - x0)))

    def first(lines: range, make_box, axis: int, last: bool) -> int | None:
        for start in lines:
            box = make_box(start)
            hits = _nearest_positive(backend, store, tile, grid, box, step)
            if hits is None:
                continue
            found = xp.nonzero(hits.any(axis=axis))[0]
            if found.size:
                origin = box[0] if axis == 1 else box[2]
                return int(found[-1] if last else found[0]) + origin
        return None

    row_min = first(range(y0, y1, rows_band), lambda r: (r, min(y1, r + rows_band), x0, x1), 1, False)
    if row_min is None:
        return None
    row_max = first(range(y1, row_min, -rows_band),
                    lambda r: (max(row_min, r - rows_band), r, x0, x1), 1, True)
    row_max = row_min if row_max is None else row_max
    height = row_max + 1 - row_min
    cols_band = max(1, min(band, strip_pixels // max(1, height)))
    col_min = first(range(x0, x1, cols_band),
                    lambda c: (row_min, row_max + 1, c, min(x1, c + cols_band)), 0, False)
    col_max = first(range(x1, col_min, -cols_band),
                    lambda c: (row_min, row_max + 1, max(col_min, c - cols_band), c), 0, True)
    col_max = col_min if col_max is None else col_max
    return (row_min, row_max + 1, col_min, col_max + 1)
