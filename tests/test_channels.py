"""phase5/channels.py: per-pixel channel reductions equal numpy's axis reductions bit for bit."""
from __future__ import annotations

import numpy as np
import pytest

from zemosaic_ooc.phase5.channels import all_finite, channel_mean, count_all_finite


def _mixed_magnitudes(dtype) -> np.ndarray:
    """HWC values whose channels differ by up to 1e6, so (R + G) + B and R + (G + B) round
    differently on many pixels; with NaN and ±inf sprinkled in."""
    rng = np.random.default_rng(7)
    scale = np.array([1e3, 1.0, 1e-3])[rng.integers(0, 3, (64, 96, 3))]
    values = (rng.standard_normal((64, 96, 3)) * scale).astype(dtype)
    values[rng.random(values.shape) < 0.02] = np.nan
    values[rng.random(values.shape) < 0.01] = np.inf
    values[rng.random(values.shape) < 0.01] = -np.inf
    return values


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_channel_mean_is_numpys_float32_mean_over_the_channels_bit_for_bit(dtype):
    hwc = _mixed_magnitudes(dtype)
    with np.errstate(invalid="ignore"):                  # inf + -inf, in numpy's mean as well
        got = channel_mean(np, hwc)
        want = hwc.mean(axis=2, dtype=np.float32)
        # the check can fail: the other summation order differs on these values
        r, g, b = (hwc[..., k].astype(np.float32) for k in range(3))
        other = (r + (g + b)) / np.float32(3)
    assert got.dtype == np.float32 and got.shape == hwc.shape[:2]
    assert np.array_equal(got, want, equal_nan=True)
    assert not np.array_equal(got, other, equal_nan=True)


def test_all_finite_is_isfinite_all_over_the_channels():
    hwc = _mixed_magnitudes(np.float32)
    expected = np.isfinite(hwc).all(axis=-1)
    assert np.array_equal(all_finite(np, hwc), expected)
    assert 0 < count_all_finite(np, hwc) == int(expected.sum()) < hwc.shape[0] * hwc.shape[1]
