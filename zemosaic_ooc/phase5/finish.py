"""End of pass 1 (spec §5.3–§5.5): autocrop window, alpha from the union, final masking.

The autocrop is a window on the Phase-4 grid (no re-chunking).  When it fires
ZeMosaic crops the union U twice and stretches it back by nearest neighbour
(§5.3 "Alpha after a crop"); :func:`alpha_source_index` reproduces that map.
"""
from __future__ import annotations

import math
from typing import Any

import numpy as np

from .grid import Box


def autocrop_window(covered_rows: tuple[int, int] | None, covered_cols: tuple[int, int] | None,
                    shape_hw: tuple[int, int], follow_signal: bool) -> tuple[Box, bool]:
    """§5.4: (window, fired).  ``covered_*`` = the bbox of coverage above the threshold."""
    height, width = shape_hw
    if covered_rows is None or covered_cols is None:
        return (0, height, 0, width), False
    y0, y1 = covered_rows
    x0, x1 = covered_cols
    if follow_signal:
        my = int(math.ceil(0.05 * (y1 - y0)))
        mx = int(math.ceil(0.05 * (x1 - x0)))
        y0, y1 = max(0, y0 - my), min(height, y1 + my)
        x0, x1 = max(0, x0 - mx), min(width, x1 + mx)
    window = (y0, y1, x0, x1)
    return window, window != (0, height, 0, width)


def alpha_source_index(n_out: int, origin: int, stop: int) -> np.ndarray | None:
    """Phase-4 index of U feeding each of ``n_out`` cropped output positions (one axis).

    U″ = U[2·origin : stop] (numpy slice of the already-cropped U), stretched to
    n_out by OpenCV nearest neighbour: index ⌊i·s⌋ clipped, s = 1/(n_out/n″) in float64.
    None when U″ is empty (the alpha is then dropped).
    """
    n_src = stop - 2 * origin
    if n_src <= 0:
        return None
    scale = 1.0 / (n_out / n_src)
    i = np.arange(n_out, dtype=np.float64)
    src = np.minimum(np.floor(i * scale).astype(np.int64), n_src - 1)
    return 2 * origin + src


def alpha_u8(union: Any, xp: Any) -> Any:
    """A8 = uint8 truncation of clip(U, 0, 1)·255 with U in float32."""
    return (xp.clip(union.astype(xp.float32), 0.0, 1.0) * xp.float32(255.0)).astype(xp.uint8)


def finish_values(mosaic: Any, coverage: Any, a8: Any | None, xp: Any) -> tuple[Any, Any, Any]:
    """§5.5: coverage zeroed where A8 = 0, mosaic NaN where C ≤ 0 or A8 = 0 or non-finite."""
    coverage = xp.where(xp.isfinite(coverage), coverage, xp.float32(0.0)).astype(xp.float32)
    if a8 is None:
        a8 = xp.where(coverage > 0, 255, 0).astype(xp.uint8)
    else:
        coverage = xp.where(a8 == 0, xp.float32(0.0), coverage)
    invalid = ((coverage <= 0) | (a8 == 0))[..., None] | ~xp.isfinite(mosaic)
    mosaic = xp.where(invalid, xp.float32(np.nan), mosaic).astype(xp.float32, copy=False)
    return mosaic, coverage, a8
