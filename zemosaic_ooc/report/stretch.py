"""The auto (asinh) stretch of the previews, lean in memory.

Same rule as ``zemosaic_ooc.store.export.stretch_rgb(stretch="auto")`` (the ``--preview``
PNG): black and white points at P0.5 / P99.8 of the valid pixels (one pair for R, G and B
when ``linked``, else one per channel), then asinh with the softening that puts the median
at 25 % grey; non-finite pixels (any channel) are black.  Computed channel by channel in
float32, so a 1024 x 1024 preview needs some 30 MB of temporaries instead of ~100 MB.
"""
from __future__ import annotations

import math

import numpy as np

from ..store.export import auto_softening  # the same rule as the --preview PNG

BLACK_PCT, WHITE_PCT, TARGET = 0.5, 99.8, 0.25


def auto_stretch(rgb: np.ndarray, *, linked: bool = True) -> np.ndarray:
    """(h, w, C) float -> (h, w, C) uint8."""
    rgb = np.asarray(rgb)
    n_ch = rgb.shape[-1]
    valid = np.isfinite(rgb).all(axis=-1)
    out = np.zeros(rgb.shape, dtype=np.uint8)
    if not valid.any():
        return out
    points = []
    if linked:
        values = np.concatenate([rgb[..., c][valid] for c in range(n_ch)])
        lo, hi, med = (float(v) for v in np.percentile(values, [BLACK_PCT, WHITE_PCT, 50.0]))
        del values
        points = [(lo, hi, med)] * n_ch
    else:
        for c in range(n_ch):
            values = rgb[..., c][valid]
            points.append(tuple(float(v) for v in np.percentile(values, [BLACK_PCT, WHITE_PCT, 50.0])))
            del values
    for c, (lo, hi, med) in enumerate(points):
        span = hi - lo if hi > lo else 1.0
        soft = auto_softening(min(1.0, max(0.0, (med - lo) / span)))
        x = rgb[..., c].astype(np.float32)             # a copy: modified in place below
        x -= np.float32(lo)
        x /= np.float32(span)
        np.clip(x, 0.0, 1.0, out=x)
        x *= np.float32(soft)
        np.arcsinh(x, out=x)
        x *= np.float32(255.0 / math.asinh(soft))
        np.rint(x, out=x)
        np.clip(x, 0, 255, out=x)
        x[~valid] = 0
        out[..., c] = x.astype(np.uint8)
        del x
    return out
