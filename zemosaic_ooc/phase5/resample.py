"""Interpolation of tile planes at mapped coordinates (spec §4.2 step 3), on any backend.

These are reproject's ``map_coordinates`` rules (reproject 0.21 + scipy 1.17):

* a position is outside (NaN) when u < −0.5 or u ≥ w − 0.5 (likewise v), or NaN;
* u ∈ [−0.5, 0) is moved to 0 and u ∈ [w − 1, w − 0.5) to w − 1;
* bilinear: stencil {⌊u⌋, ⌊u⌋ + 1} (at u = w − 1 exactly: {w − 2, w − 1}) in
  each axis; the result is NaN when **any** of the four stencil pixels is NaN,
  even one of weight 0 (scipy multiplies it by 0);
* nearest: pixel ⌊u + 0.5⌋.

Arrays: ``planes`` is a (C, h, w) region of the cropped tile whose top-left
pixel is ``origin`` = (row, col) in cropped-tile coordinates; ``full_hw`` is the
cropped tile shape used for the bounds.  u, v are float64 arrays of any shape
(cropped-tile columns and rows).  Results are float64 (C, *u.shape), like
scipy's output, NaN outside.
"""
from __future__ import annotations

from typing import Any

from ..backend import Backend


def _clip_positions(xp: Any, coord: Any, size: int) -> tuple[Any, Any]:
    """reproject's edge clip; returns (clipped coordinate, inside mask)."""
    inside = (coord >= -0.5) & (coord < size - 0.5)
    clipped = xp.where((coord < 0) & inside, 0.0, coord)
    clipped = xp.where((clipped >= size - 1) & inside, float(size - 1), clipped)
    return clipped, inside


def region_bounds(u: Any, v: Any, full_hw: tuple[int, int], xp: Any) -> tuple[int, int, int, int] | None:
    """Cropped-tile rows/cols (r0, r1, c0, c1) needed to interpolate at (u, v), or None."""
    height, width = full_hw
    finite = xp.isfinite(u) & xp.isfinite(v)
    inside = finite & (u >= -0.5) & (u < width - 0.5) & (v >= -0.5) & (v < height - 0.5)
    if not bool(inside.any()):
        return None
    us = u[inside]
    vs = v[inside]
    c0 = max(0, int(xp.floor(us.min())) - 1)
    c1 = min(width, int(xp.floor(us.max())) + 3)
    r0 = max(0, int(xp.floor(vs.min())) - 1)
    r1 = min(height, int(xp.floor(vs.max())) + 3)
    return (r0, r1, c0, c1)


def sample_bilinear(backend: Backend, planes: Any, origin: tuple[int, int],
                    full_hw: tuple[int, int], u: Any, v: Any) -> Any:
    """Bilinear samples (C, *u.shape) float64 of (C, h, w) ``planes`` at (u, v).

    The four stencil values are gathered from the flattened region (one index array for
    all channels); the weights and the sum are float64, in scipy's order of operations.
    """
    xp = backend.xp
    height, width = full_hw
    uc, inside_u = _clip_positions(xp, u, width)
    vc, inside_v = _clip_positions(xp, v, height)
    inside = inside_u & inside_v
    uc = xp.where(inside, uc, 0.0)
    vc = xp.where(inside, vc, 0.0)
    i0 = xp.floor(uc).astype(xp.int64)
    j0 = xp.floor(vc).astype(xp.int64)
    if width > 1:
        i0 = xp.minimum(i0, width - 2)
    if height > 1:
        j0 = xp.minimum(j0, height - 2)
    fu = (uc - i0).ravel()
    fv = (vc - j0).ravel()
    region_h, region_w = planes.shape[-2], planes.shape[-1]
    # outside positions are clipped into the region (their values are discarded below)
    i0 = xp.clip(i0 - origin[1], 0, max(0, region_w - 2))
    j0 = xp.clip(j0 - origin[0], 0, max(0, region_h - 2))
    step_x = 1 if region_w > 1 else 0
    step_y = region_w if region_h > 1 else 0
    flat = planes.reshape(planes.shape[0], -1)
    index = (j0 * region_w + i0).ravel()
    p00 = flat[:, index]
    p01 = flat[:, index + step_x]
    p10 = flat[:, index + step_y]
    p11 = flat[:, index + step_y + step_x]
    wu0 = 1.0 - fu
    wv0 = 1.0 - fv
    values = wv0 * (wu0 * p00 + fu * p01) + fv * (wu0 * p10 + fu * p11)
    values = values.reshape((planes.shape[0],) + tuple(u.shape))
    return xp.where(inside, values, xp.nan)


def sample_nearest(backend: Backend, planes: Any, origin: tuple[int, int],
                   full_hw: tuple[int, int], u: Any, v: Any) -> Any:
    """Nearest-neighbour samples (C, *u.shape) float64, NaN outside."""
    xp = backend.xp
    height, width = full_hw
    uc, inside_u = _clip_positions(xp, u, width)
    vc, inside_v = _clip_positions(xp, v, height)
    inside = inside_u & inside_v
    i = xp.floor(xp.where(inside, uc, 0.0) + 0.5).astype(xp.int64)
    j = xp.floor(xp.where(inside, vc, 0.0) + 0.5).astype(xp.int64)
    i = xp.clip(i - origin[1], 0, planes.shape[-1] - 1)
    j = xp.clip(j - origin[0], 0, planes.shape[-2] - 1)
    values = planes[:, j, i].astype(xp.float64)
    return xp.where(inside, values, xp.nan)
