"""Per-tile resampled contributions and the weighted-mean block coadd (spec §4.2, §4.5, §5.1–§5.3).

A block task computes its block completely: for every tile touching it, in
input order, the resampled data d_t (float64, per channel) and weight f_t, the
background offset k_t,c subtracted, float64 accumulation of Σ f·d and Σ f; and
the alpha union U (float32 max over tiles).  Arrays are CHW inside the block.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

from ..backend import Backend
from ..store.tiles import TileStore
from .grid import Box, intersect
from .mapping import DEFAULT_CONTROL_STEP, OutputGrid, map_region
from .plan import geometry, read_raw_region
from .prep import TilePlan, prepare_region, union_mask
from .resample import region_bounds, sample_bilinear


@dataclass
class Contribution:
    """One tile's resampled data and weights on a box of Ω (CHW, float64)."""

    box: Box
    data: Any      # (3, h, w) float64, NaN where invalid
    weight: Any    # (3, h, w) float64 f_t: ω′ where data and ω′ are finite, else 0


def _bounding(a: Box | None, b: Box | None) -> Box | None:
    if a is None:
        return b
    if b is None:
        return a
    return (min(a[0], b[0]), max(a[1], b[1]), min(a[2], b[2]), max(a[3], b[3]))


def tile_samples(backend: Backend, store: TileStore, tile: TilePlan, grid: OutputGrid,
                 box: Box, *, want_data: bool = True, union_box: Box | None = None,
                 step: int = DEFAULT_CONTROL_STEP, gain_override: float | None = None,
                 binary_weights: bool = False) -> tuple[Contribution | None, tuple[Box, Any] | None]:
    """Resample one tile over ``box`` (data) and ``union_box`` (alpha union), sharing one mapping.

    Returns (contribution or None, (union box, float32 union values) or None).
    ``gain_override`` multiplies the prepared data (two-pass γ_t); with
    ``binary_weights`` ω = (m > 0)·τ (pass 2).
    """
    xp = backend.xp
    data_box = box if want_data else None
    rect = _bounding(data_box, union_box)
    if rect is None:
        return None, None
    geom = geometry(tile)
    uu, vv = map_region(geom, grid, rect, step=step)
    uu = backend.asarray(uu)
    vv = backend.asarray(vv)
    bounds = region_bounds(uu, vv, tile.cropped_hw, xp)
    if bounds is None:
        return None, None
    r0, r1, c0, c1 = bounds
    raw_data, raw_alpha = read_raw_region(store, tile, (r0, r1), (c0, c1))
    raw_data = backend.asarray(raw_data)
    raw_alpha = None if raw_alpha is None else backend.asarray(raw_alpha)
    contribution = None
    union = None
    ry0, rx0 = rect[0], rect[2]
    if data_box is not None:
        sy = slice(data_box[0] - ry0, data_box[1] - ry0)
        sx = slice(data_box[2] - rx0, data_box[3] - rx0)
        du, dv = uu[sy, sx], vv[sy, sx]
        data, mask, omega = prepare_region(backend, raw_data, raw_alpha, tile)
        if gain_override is not None and gain_override != 1.0:
            data = data * xp.float32(gain_override)
        if binary_weights:
            omega = (mask > 0).astype(xp.float64) * float(tile.tau)
        values = sample_bilinear(backend, data, (r0, c0), tile.cropped_hw, du, dv)
        weights = sample_bilinear(backend, omega[None], (r0, c0), tile.cropped_hw, du, dv)[0]
        good = xp.isfinite(values) & xp.isfinite(weights)[None]
        f = xp.where(good, weights[None], 0.0)
        contribution = Contribution(data_box, values, f)
    if union_box is not None:
        sy = slice(union_box[0] - ry0, union_box[1] - ry0)
        sx = slice(union_box[2] - rx0, union_box[3] - rx0)
        b = union_mask(backend, raw_data, raw_alpha, tile)
        vals = sample_bilinear(backend, b[None], (r0, c0), tile.cropped_hw, uu[sy, sx], vv[sy, sx])[0]
        vals = xp.clip(xp.nan_to_num(vals, nan=0.0), 0.0, 1.0).astype(xp.float32)
        union = (union_box, vals)
    return contribution, union


@dataclass
class BlockResult:
    """A finished pass block: mosaic (h, w, 3) float32 (0 where uncovered), coverage, union."""

    box: Box
    mosaic: np.ndarray
    coverage: np.ndarray
    union: np.ndarray | None
    covered_rows: tuple[int, int] | None
    covered_cols: tuple[int, int] | None


def coadd_block(backend: Backend, store: TileStore, tiles: Sequence[TilePlan], grid: OutputGrid,
                block: Box, *, offsets_attr: str = "bg_offsets", with_union: bool = True,
                two_pass: bool = False, step: int = DEFAULT_CONTROL_STEP) -> BlockResult:
    """§4.5 + §5.1–§5.3 on one block: Σ f·(d − k) / Σ f per channel, coverage, alpha union."""
    xp = backend.xp
    y0, y1, x0, x1 = block
    h, w = y1 - y0, x1 - x0
    sums = xp.zeros((3, h, w), dtype=xp.float64)
    wsum = xp.zeros((3, h, w), dtype=xp.float64)
    union = xp.zeros((h, w), dtype=xp.float32) if with_union else None
    for tile in tiles:
        data_box = intersect(tile.box, block)
        union_box = intersect(tile.union_bbox, block) if with_union else None
        if data_box is None and union_box is None:
            continue
        contribution, tile_union = tile_samples(
            backend, store, tile, grid, data_box if data_box else block,
            want_data=data_box is not None, union_box=union_box, step=step,
            gain_override=tile.two_pass_gain if two_pass else None, binary_weights=two_pass)
        if contribution is not None:
            by0, by1, bx0, bx1 = contribution.box
            sy, sx = slice(by0 - y0, by1 - y0), slice(bx0 - x0, bx1 - x0)
            offsets = getattr(tile, offsets_attr)
            k = backend.asarray(np.asarray(offsets, dtype=np.float64))[:, None, None]
            f = contribution.weight
            shifted = xp.where(f == 0, 0.0, contribution.data - k)
            sums[:, sy, sx] += shifted * f
            wsum[:, sy, sx] += f
        if tile_union is not None:
            (uy0, uy1, ux0, ux1), vals = tile_union
            sy, sx = slice(uy0 - y0, uy1 - y0), slice(ux0 - x0, ux1 - x0)
            union[sy, sx] = xp.maximum(union[sy, sx], vals)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = sums / wsum
    mean = xp.where(wsum == 0, 0.0, mean)
    mosaic = xp.moveaxis(mean.astype(xp.float32), 0, -1)
    coverage = wsum[0].astype(xp.float32)
    covered = coverage > 0
    rows = xp.nonzero(covered.any(axis=1))[0]
    cols = xp.nonzero(covered.any(axis=0))[0]
    covered_rows = (int(rows[0]) + y0, int(rows[-1]) + y0 + 1) if rows.size else None
    covered_cols = (int(cols[0]) + x0, int(cols[-1]) + x0 + 1) if cols.size else None
    return BlockResult(block, backend.to_host(mosaic), backend.to_host(coverage),
                       None if union is None else backend.to_host(union), covered_rows, covered_cols)


def tile_strips(backend: Backend, store: TileStore, tile: TilePlan, grid: OutputGrid, *,
                strip_pixels: int = 1 << 20, step: int = DEFAULT_CONTROL_STEP):
    """Walk a tile's §4.2 box in row strips: yields (strip box, u, v, region origin, raw data, raw alpha).

    u, v are the cropped-tile coordinates of every strip pixel (backend arrays); the raw
    region (C, h, w) / (h, w) covers every in-bounds position, with top-left ``origin``.
    Strips that do not reach the tile are skipped.
    """
    xp = backend.xp
    y0, y1, x0, x1 = tile.box
    geom = geometry(tile)
    rows_per_strip = max(1, strip_pixels // max(1, x1 - x0))
    for sy0 in range(y0, y1, rows_per_strip):
        strip = (sy0, min(y1, sy0 + rows_per_strip), x0, x1)
        uu, vv = map_region(geom, grid, strip, step=step)
        uu, vv = backend.asarray(uu), backend.asarray(vv)
        bounds = region_bounds(uu, vv, tile.cropped_hw, xp)
        if bounds is None:
            continue
        r0, r1, c0, c1 = bounds
        raw_data, raw_alpha = read_raw_region(store, tile, (r0, r1), (c0, c1))
        yield (strip, uu, vv, (r0, c0), backend.asarray(raw_data),
               None if raw_alpha is None else backend.asarray(raw_alpha))


def union_bbox(backend: Backend, store: TileStore, tile: TilePlan, grid: OutputGrid,
               *, strip_pixels: int = 1 << 20, step: int = DEFAULT_CONTROL_STEP) -> Box | None:
    """§5.3 step 3: bbox of the nearest-neighbour reprojection of b_t where it is > 0.

    Walked over the tile's §4.2 box in row strips (a pixel outside that box
    cannot map inside the tile).
    """
    from .resample import sample_nearest

    xp = backend.xp
    if tile.box is None:
        return None
    y0, y1, x0, x1 = tile.box
    found_rows: list[int] = []
    col_min, col_max = None, None
    for strip, uu, vv, origin, raw_data, raw_alpha in tile_strips(backend, store, tile, grid,
                                                                  strip_pixels=strip_pixels, step=step):
        b = union_mask(backend, raw_data, raw_alpha, tile)
        vals = sample_nearest(backend, b[None], origin, tile.cropped_hw, uu, vv)[0]
        positive = xp.nan_to_num(vals, nan=0.0) > 0
        rows = xp.nonzero(positive.any(axis=1))[0]
        cols = xp.nonzero(positive.any(axis=0))[0]
        if rows.size:
            found_rows += [int(rows[0]) + strip[0], int(rows[-1]) + strip[0]]
            lo, hi = int(cols[0]) + x0, int(cols[-1]) + x0
            col_min = lo if col_min is None else min(col_min, lo)
            col_max = hi if col_max is None else max(col_max, hi)
    if not found_rows:
        return None
    return (min(found_rows), max(found_rows) + 1, col_min, col_max + 1)
