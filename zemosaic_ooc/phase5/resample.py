"""Interpolation of tile planes at mapped coordinates (spec §4.2 step 3), on any backend.

These are reproject's ``map_coordinates`` rules (reproject 0.21 + scipy 1.17):

* a position is outside (NaN) when u < −0.5 or u ≥ w − 0.5 (likewise v), or NaN;
* u ∈ [−0.5, 0) is moved to 0 and u ∈ [w − 1, w − 0.5) to w − 1;
* bilinear: stencil {⌊u⌋, ⌊u⌋ + 1} (at u = w − 1 exactly: {w − 2, w − 1}) in
  each axis; the result is NaN when **any** of the four stencil pixels is NaN,
  even one of weight 0 (scipy multiplies it by 0);
* nearest: pixel ⌊u + 0.5⌋.

The position-dependent part (bounds, clip, stencil index, fractions) is a
:class:`Stencil`, computed **once** per set of positions and then applied to
any number of planes: the coadd samples data, weight and alpha union with one
stencil.  Planes are gathered from a *packed* region, (h·w, P) with the P
planes of a pixel adjacent, so one gather fetches every plane of a stencil
pixel (P·itemsize = 16 bytes goes through a complex128 view: one 16-byte gather).

Arrays: a region is the (h, w) window of the cropped tile whose top-left pixel
is ``origin`` = (row, col) in cropped-tile coordinates; ``full_hw`` is the
cropped tile shape used for the bounds.  u, v are float64 arrays of any shape
(cropped-tile columns and rows).  The interpolation weights and sums follow
scipy's order of operations in float64 (results float64, NaN outside), or in
the ``dtype`` a caller asks of :func:`apply_stencil` (the coadd asks float32
for float32 planes, see :mod:`.coadd`).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..backend import Backend


def region_bounds(u: Any, v: Any, full_hw: tuple[int, int], xp: Any) -> tuple[int, int, int, int] | None:
    """Cropped-tile rows/cols (r0, r1, c0, c1) needed to interpolate at (u, v), or None."""
    height, width = full_hw
    if u.size == 0:
        return None
    inside = _inside(u, v, full_hw)                                   # False on NaN
    # the extremes of the inside positions, read back in one copy (one device sync)
    extremes = xp.stack([xp.where(inside, u, np.inf).min(), xp.where(inside, u, -np.inf).max(),
                         xp.where(inside, v, np.inf).min(), xp.where(inside, v, -np.inf).max()])
    host = extremes.get() if hasattr(extremes, "get") else extremes      # cupy: .get() copies to the host
    u_min, u_max, v_min, v_max = (float(x) for x in host)
    if not math.isfinite(u_min):
        return None                                                   # no position inside
    c0 = max(0, math.floor(u_min) - 1)
    c1 = min(width, math.floor(u_max) + 3)
    r0 = max(0, math.floor(v_min) - 1)
    r1 = min(height, math.floor(v_max) + 3)
    return (r0, r1, c0, c1)


def _inside(u: Any, v: Any, full_hw: tuple[int, int]) -> Any:
    height, width = full_hw
    return (u >= -0.5) & (u < width - 0.5) & (v >= -0.5) & (v < height - 0.5)


@dataclass
class Stencil:
    """The bilinear stencil of n positions on one region (every array is flat, length n).

    ``index``: flat region index (row·w + col) of the top-left stencil pixel;
    ``step_x`` / ``step_y``: flat offsets of its right / lower neighbour;
    ``fu`` / ``fv``: float64 fractions (column / row); ``inside``: bool;
    ``shape``: the positions' shape (results are reshaped to ``shape + (P,)``).
    """

    index: Any
    step_x: int
    step_y: int
    fu: Any
    fv: Any
    inside: Any
    shape: tuple[int, ...]


def bilinear_stencil(xp: Any, origin: tuple[int, int], region_hw: tuple[int, int],
                     full_hw: tuple[int, int], u: Any, v: Any) -> Stencil:
    """The stencil of positions (u, v) on the region ``region_hw`` at ``origin`` (rules above)."""
    height, width = full_hw
    inside = _inside(u, v, full_hw).ravel()
    # clip to [0, n − 1] is reproject's edge move for inside positions; outside ones go to 0
    uc = xp.where(inside, xp.clip(u.ravel(), 0.0, float(width - 1)), 0.0)
    vc = xp.where(inside, xp.clip(v.ravel(), 0.0, float(height - 1)), 0.0)
    i0 = xp.floor(uc).astype(xp.intp)
    j0 = xp.floor(vc).astype(xp.intp)
    if width > 1:
        i0 = xp.minimum(i0, width - 2)
    if height > 1:
        j0 = xp.minimum(j0, height - 2)
    fu = uc - i0
    fv = vc - j0
    region_h, region_w = region_hw
    # outside positions are clipped into the region (their values are discarded)
    i0 = xp.clip(i0 - origin[1], 0, max(0, region_w - 2))
    j0 = xp.clip(j0 - origin[0], 0, max(0, region_h - 2))
    index = j0 * region_w + i0
    return Stencil(index=index, step_x=1 if region_w > 1 else 0,
                   step_y=region_w if region_h > 1 else 0, fu=fu, fv=fv, inside=inside,
                   shape=tuple(u.shape))


def pack_planes(xp: Any, planes: Any) -> Any:
    """(P, h, w) planes → packed (h·w, P) C-contiguous, dtype kept."""
    count = planes.shape[0]
    return xp.ascontiguousarray(xp.moveaxis(planes, 0, -1)).reshape(-1, count)


def _gather(xp: Any, packed: Any, index: Any) -> Any:
    """Rows ``index`` of a packed (N, P) array: (n, P) (one 16-byte gather when a row is 16 bytes)."""
    row_bytes = packed.shape[1] * packed.dtype.itemsize
    if row_bytes == 16 and packed.flags.c_contiguous:
        rows = xp.take(packed.view(xp.complex128).reshape(-1), index)
        return rows.view(packed.dtype).reshape(index.shape[0], packed.shape[1])
    return xp.take(packed, index, axis=0)


def apply_stencil(xp: Any, stencil: Stencil, packed: Any, dtype: Any = None) -> Any:
    """Bilinear samples ``stencil.shape + (P,)`` of a packed (h·w, P) region; NaN outside.

    The fractions are cast to ``dtype`` when given (float32 planes then give float32
    samples, half the memory traffic of float64); by default the arithmetic is float64.
    """
    s = stencil
    p00 = _gather(xp, packed, s.index)
    p01 = _gather(xp, packed, s.index + s.step_x)
    p10 = _gather(xp, packed, s.index + s.step_y)
    p11 = _gather(xp, packed, s.index + (s.step_y + s.step_x))
    fu = s.fu[:, None]
    fv = s.fv[:, None]
    if dtype is not None:
        fu = fu.astype(dtype)
        fv = fv.astype(dtype)
    values = _bilinear(p00, p01, p10, p11, fu, fv)
    values = xp.where(s.inside[:, None], values, xp.nan)
    return values.reshape(s.shape + (packed.shape[1],))


def _bilinear(p00: Any, p01: Any, p10: Any, p11: Any, fu: Any, fv: Any) -> Any:
    """scipy's order-1 combination of the four stencil values."""
    wu0 = 1 - fu
    wv0 = 1 - fv
    return wv0 * (wu0 * p00 + fu * p01) + fv * (wu0 * p10 + fu * p11)


def apply_stencil_binary(xp: Any, stencil: Stencil, plane: Any) -> Any:
    """clip(nan_to_num(bilinear sample), 0, 1) as float32 of a flat 0/1 plane; 0 outside.

    The float64 combination runs only where the four stencil values differ: where they
    are all 1 (all 0) it is within a few float64 ulps of 1 (equal to 0), which rounds to
    exactly 1 (0) in float32, so the result is the full computation's.
    """
    s = stencil
    b00 = xp.take(plane, s.index)
    b01 = xp.take(plane, s.index + s.step_x)
    b10 = xp.take(plane, s.index + s.step_y)
    b11 = xp.take(plane, s.index + (s.step_y + s.step_x))
    total = b00 + b01 + b10 + b11
    out = ((total == 4) & s.inside).astype(xp.float32)
    mixed = xp.nonzero(s.inside & (total > 0) & (total < 4))[0]
    if mixed.size:
        values = _bilinear(b00[mixed], b01[mixed], b10[mixed], b11[mixed], s.fu[mixed], s.fv[mixed])
        out[mixed] = xp.clip(values, 0.0, 1.0)
    return out.reshape(s.shape)


def nearest_index(xp: Any, origin: tuple[int, int], region_hw: tuple[int, int],
                  full_hw: tuple[int, int], u: Any, v: Any) -> tuple[Any, Any]:
    """Nearest-neighbour flat region index and inside mask (flat, length n) of positions (u, v)."""
    height, width = full_hw
    inside = _inside(u, v, full_hw).ravel()
    uc = xp.where(inside, xp.clip(u.ravel(), 0.0, float(width - 1)), 0.0)
    vc = xp.where(inside, xp.clip(v.ravel(), 0.0, float(height - 1)), 0.0)
    i = xp.floor(uc + 0.5).astype(xp.intp)
    j = xp.floor(vc + 0.5).astype(xp.intp)
    i = xp.clip(i - origin[1], 0, region_hw[1] - 1)
    j = xp.clip(j - origin[0], 0, region_hw[0] - 1)
    return j * region_hw[1] + i, inside


def sample_bilinear(backend: Backend, planes: Any, origin: tuple[int, int],
                    full_hw: tuple[int, int], u: Any, v: Any) -> Any:
    """Bilinear samples (C, *u.shape) float64 of (C, h, w) ``planes`` at (u, v), NaN outside."""
    xp = backend.xp
    stencil = bilinear_stencil(xp, origin, planes.shape[-2:], full_hw, u, v)
    values = apply_stencil(xp, stencil, pack_planes(xp, planes))
    return xp.moveaxis(values, -1, 0)


def sample_nearest(backend: Backend, planes: Any, origin: tuple[int, int],
                   full_hw: tuple[int, int], u: Any, v: Any) -> Any:
    """Nearest-neighbour samples (C, *u.shape) float64, NaN outside."""
    xp = backend.xp
    index, inside = nearest_index(xp, origin, planes.shape[-2:], full_hw, u, v)
    flat = planes.reshape(planes.shape[0], -1)
    values = xp.take(flat, index, axis=1).astype(xp.float64)
    values = xp.where(inside[None], values, xp.nan)
    return values.reshape((planes.shape[0],) + tuple(u.shape))
