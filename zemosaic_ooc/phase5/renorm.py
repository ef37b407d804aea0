"""Two-pass coverage renormalisation (spec §6), block by block with halos.

* coverage blur: G = gaussian σ (truncate 4, mode reflect), separable, summed in
  float64 and rounded to float32 after each axis (:mod:`.filters`) — computed per block on a region grown by the kernel radius,
  which gives exactly the whole-image result (the halo equals the radius);
* per-tile gains γ_t from exact medians of the scale map S over each tile's
  restricted footprint, gathered strip by strip over the tile's box;
* the merge rule with its P5-based ε (exact out-of-core percentile).
All per-pixel formulas take the backend's ``xp`` / ``ndimage``.
"""
from __future__ import annotations

import math
from typing import Any, Callable, Sequence

import numpy as np

from ..backend import Backend
from ..store.tiles import TileStore
from .grid import Box
from .channels import channel_mean
from .coadd import tile_strips
from .filters import scipy_gaussian_weights, separable_blur
from .mapping import DEFAULT_CONTROL_STEP, OutputGrid
from .prep import TilePlan, region_mask
from .resample import sample_bilinear

EPS32 = np.float32(np.finfo(np.float32).eps)


def blur_radius(sigma: float, truncate: float = 4.0) -> int:
    return int(truncate * float(sigma) + 0.5)


def blurred_coverage_block(backend: Backend, coverage_region: Any, sigma: float,
                           rows: slice | None = None) -> tuple[Any, Any]:
    """§6.2–6.3 on a coverage region (h, w) float32 that includes the halo.

    Returns (Cb, S) on the same region, or on its rows ``rows`` only (the halo rows are
    needed by the first axis of the blur alone); only pixels at least one radius from an
    interior region edge are exact (the caller crops the halo away).
    """
    xp = backend.xp
    cov = xp.nan_to_num(coverage_region.astype(xp.float32))
    valid = cov > 0
    numerator = cov * valid.astype(xp.float32)
    weights = scipy_gaussian_weights(sigma, truncate=4.0)
    nb = separable_blur(backend, numerator, weights, "reflect", rows)
    db = separable_blur(backend, valid.astype(xp.float32), weights, "reflect", rows)
    if rows is not None:
        cov, valid = cov[rows], valid[rows]
    with np.errstate(invalid="ignore", divide="ignore"):
        cb = xp.where(db > 0, nb / db, xp.float32(0.0)).astype(xp.float32)
        scale = xp.where(valid, xp.clip(cb / xp.maximum(cov, EPS32), 0.5, 2.0),
                         xp.float32(1.0)).astype(xp.float32)
    return cb, scale


def tile_gain(backend: Backend, store: TileStore, tile: TilePlan, grid: OutputGrid,
              read_maps: Callable[[Box], tuple[np.ndarray, np.ndarray, np.ndarray]],
              gain_clip: Sequence[float], *, threshold: float = 2.0, strip_pixels: int = 1 << 20,
              step: int = DEFAULT_CONTROL_STEP) -> tuple[float, int, int]:
    """§6.4 γ_t: median of S over F_t ∧ V ∧ (Cb ≥ 2); returns (γ, |F_t|, |valid|).

    ``read_maps(box, backend)`` returns (C1, Cb, S) on a box of Ω, on ``backend``.  F_t is where the
    bilinear reprojection of m_t exceeds 1e-3 (only inside the tile's box).
    """
    xp = backend.xp
    if tile.box is None:
        return 1.0, 0, 0
    footprint = 0
    gathered: list[np.ndarray] = []
    # m_t alone is needed: with ALPHA it comes from the ALPHA plane, the data planes are not read
    for strip, uu, vv, origin, raw_data, raw_alpha in tile_strips(backend, store, tile, grid,
                                                                  strip_pixels=strip_pixels, step=step,
                                                                  with_data=not tile.has_alpha):
        mask = region_mask(backend, raw_data, raw_alpha, tile)
        reprojected = sample_bilinear(backend, mask[None], origin, tile.cropped_hw, uu, vv)[0]
        in_tile = xp.nan_to_num(reprojected, nan=0.0) > 1e-3
        footprint += int(in_tile.sum())
        cov, cb, scale = read_maps(strip, backend)
        valid = in_tile & (cov > 0) & (cb >= threshold)
        if bool(valid.any()):
            gathered.append(backend.to_host(scale[valid]))
    if footprint <= 0:
        return 1.0, 0, 0
    values = np.concatenate(gathered) if gathered else np.zeros(0, np.float32)
    need = max(64, int(math.ceil(0.001 * footprint)))
    if values.size < max(1, need):
        return 1.0, footprint, int(values.size)
    median = float(np.nanmedian(values))
    if not math.isfinite(median):
        return 1.0, footprint, int(values.size)
    lo, hi = float(gain_clip[0]), float(gain_clip[1])
    return float(min(hi, max(lo, median))), footprint, int(values.size)


def merge_block(backend: Backend, m1: Any, c1: Any, m2: Any, c2: Any, eps: float) -> tuple[Any, Any, Any]:
    """§6.6 per pixel: take pass 2 where both coverages > 0 and ℓ2/(ℓ1+ε) ≥ 0.4."""
    xp = backend.xp
    valid = (c1 > 0) & (c2 > 0)
    lum1 = channel_mean(xp, m1)
    lum2 = channel_mean(xp, m2)
    with np.errstate(invalid="ignore", divide="ignore"):
        ratio = xp.where(valid, lum2 / (lum1 + xp.float32(eps)), xp.float32(1.0))
    use = valid & (ratio >= 0.4)
    mosaic = xp.where(use[..., None], m2, m1)
    coverage = xp.where(use, c2, c1)
    return mosaic, coverage, use
