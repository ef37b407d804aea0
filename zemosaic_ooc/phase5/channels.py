"""Per-pixel reductions over the three channels of an HWC image (float32), on numpy or cupy.

numpy reduces the trailing axis of an (H, W, 3) array three values at a time, with its inner
loop set up once per pixel: ``mosaic.mean(axis=2)`` or ``isfinite(mosaic).all(axis=-1)`` take
about 30 ms on a 1472² block, where the same arithmetic on the three channel planes (strided
views, one long inner loop each) takes 4 ms.  These functions are that arithmetic, in the order
numpy's reductions use, so their results are the same bits (``tests/test_channels.py`` checks
it against numpy on values where another order would round differently).
"""
from __future__ import annotations

from typing import Any


def channel_mean(xp: Any, hwc: Any) -> Any:
    """ℓ = (R + G + B) / 3 per pixel, float32 (H, W): bit for bit ``hwc.mean(axis=2,
    dtype=float32)``, which sums left to right, ``(R + G) + B``, then divides by 3 in float32."""
    r, g, b = (hwc[..., k].astype(xp.float32, copy=False) for k in range(3))
    total = r + g
    total += b
    total /= xp.float32(3.0)
    return total


def all_finite(xp: Any, hwc: Any) -> Any:
    """True where all three channels are finite (H, W bool): ``isfinite(hwc).all(axis=-1)``."""
    finite = xp.isfinite(hwc[..., 0])
    finite &= xp.isfinite(hwc[..., 1])
    finite &= xp.isfinite(hwc[..., 2])
    return finite


def count_all_finite(xp: Any, hwc: Any) -> int:
    """How many pixels have all three channels finite."""
    return int(xp.count_nonzero(all_finite(xp, hwc)))
