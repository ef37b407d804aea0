"""Separable Gaussian blurs shared by both backends, summed in float64 as SciPy sums them.

Two blurs run per pixel in Phase 5: the coverage blur of the two-pass renormalisation (§6.2,
``scipy.ndimage.gaussian_filter``: σ = 50, truncate 4, 401 taps, mode "reflect") and the
patchwork suppressor's B_σ (§7.3, OpenCV's ``GaussianBlur``: size max(3, 2·round(1.5σ) + 1),
border REFLECT_101 = ndimage's "mirror").  Both are separable, axis 0 then axis 1, with the
result rounded to float32 after each axis.

``scipy.ndimage`` sums each output pixel in float64 whatever the input's dtype.
``cupyx.scipy.ndimage`` sums in the input's precision (the weights are promoted with the
input's dtype: float32 planes are summed in float32).  Over 401 taps that parted the two
backends by tens of float32 ulps (the scale map by 6e-6 of its range on an H100, 16 tiles of
2048²), and the two-pass gains' medians and the bright stars carried it into the mosaic
(1.7e-4 of P99 − P1, over the issue's 1e-4).  So every line is handed to ``correlate1d`` as
float64: both backends then sum in float64 and round to float32 once per axis.  On numpy the
bits are those of the float32 call (SciPy converted the line to float64 itself).
"""
from __future__ import annotations

from typing import Any

import numpy as np

from ..backend import Backend


def scipy_gaussian_weights(sigma: float, truncate: float = 4.0) -> np.ndarray:
    """§6.2 kernel, as ``scipy.ndimage.gaussian_filter1d`` builds it: radius ⌊truncate·σ + 0.5⌋,
    exp(−x²/2σ²) normalised to sum 1; float64, length 2·radius + 1 (symmetric)."""
    sigma = float(sigma)
    radius = int(truncate * sigma + 0.5)
    x = np.arange(-radius, radius + 1)
    weights = np.exp(-0.5 / (sigma * sigma) * x ** 2)
    return weights / weights.sum()


def opencv_gaussian_weights(sigma: float) -> np.ndarray:
    """§7.3 kernel, as OpenCV's ``GaussianBlur`` builds it for float32: size
    max(3, 2·round(1.5σ) + 1), exp(−x²/2σ²) normalised to sum 1; float64."""
    size = max(3, 2 * int(round(1.5 * sigma)) + 1)
    x = np.arange(size, dtype=np.float64) - (size - 1) / 2.0
    weights = np.exp(-(x * x) / (2.0 * sigma * sigma))
    return weights / weights.sum()


def separable_blur(backend: Backend, plane: Any, weights: np.ndarray, mode: str,
                   rows: slice | None = None) -> Any:
    """``weights`` (float64, odd length) along axis 0, then axis 1, of a 2-D ``plane`` on
    ``backend``; each axis summed in float64 and rounded to float32.  Returns float32 (h, w),
    or only the rows ``rows`` of it: the second axis then runs on those rows alone (a row's
    second pass reads that row only, so they are the same bits; a haloed region needs its
    halo rows for the first axis only)."""
    nd, xp = backend.ndimage, backend.xp
    kernel = backend.asarray(np.asarray(weights, dtype=np.float64))
    along_rows = nd.correlate1d(plane.astype(xp.float64), kernel, axis=0, mode=mode, output=xp.float32)
    if rows is not None:
        along_rows = along_rows[rows]
    return nd.correlate1d(along_rows.astype(xp.float64), kernel, axis=1, mode=mode, output=xp.float32)
