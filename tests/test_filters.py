"""The shared separable blurs (phase5/filters.py): SciPy's bits on numpy, float64 sums."""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
from scipy import ndimage

from zemosaic_ooc.backend import numpy_as_device_backend, numpy_backend
from zemosaic_ooc.phase5.filters import (opencv_gaussian_weights, scipy_gaussian_weights,
                                         separable_blur)

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tools"))
from stage_diff import InputPrecisionNdimage  # noqa: E402  (CuPy's summation rule, on numpy)


@pytest.mark.parametrize("sigma", [1.3, 8.0, 50.0])
def test_coverage_blur_has_the_bits_of_scipy_gaussian_filter(sigma):
    rng = np.random.default_rng(11)
    # a region narrower than the kernel radius too: reflect folds more than once
    for shape in ((130, 170), (90, 45)):
        plane = np.clip(rng.normal(2.0, 1.0, shape), 0, None).astype(np.float32)
        expected = ndimage.gaussian_filter(plane, sigma=sigma, truncate=4.0, mode="reflect", output=np.float32)
        got = separable_blur(numpy_backend(), plane, scipy_gaussian_weights(sigma), "reflect")
        assert got.dtype == np.float32
        assert np.array_equal(got, expected)


def test_scipy_gaussian_weights_are_scipys_kernel():
    for sigma in (0.7, 5.0, 50.0):
        radius = int(4.0 * sigma + 0.5)
        impulse = np.zeros(4 * radius + 3)
        impulse[2 * radius + 1] = 1.0
        kernel = ndimage.gaussian_filter1d(impulse, sigma, truncate=4.0, mode="constant")
        np.testing.assert_array_equal(scipy_gaussian_weights(sigma),
                                      kernel[radius + 1:3 * radius + 2])


def test_patchwork_blur_has_the_bits_of_a_float32_correlate():
    from zemosaic_ooc.phase5.patchwork import blur

    rng = np.random.default_rng(5)
    plane = rng.normal(0.5, 0.1, (100, 90)).astype(np.float32)
    for sigma in (1.2, 6.0, 70.4):
        weights = opencv_gaussian_weights(sigma)
        assert weights.size == max(3, 2 * int(round(1.5 * sigma)) + 1)
        expected = ndimage.correlate1d(plane, weights, axis=0, mode="mirror", output=np.float32)
        expected = ndimage.correlate1d(expected, weights, axis=1, mode="mirror", output=np.float32)
        assert np.array_equal(blur(numpy_backend(), plane, sigma), expected)


def test_blur_lines_reach_correlate1d_as_float64_so_a_device_sums_them_in_float64():
    # a float32-summing ndimage (CuPy's rule) given what separable_blur passes gives the float64
    # sums, within the rounding of the float64 summation order: at most 1 float32 ulp
    rng = np.random.default_rng(2)
    plane = np.clip(rng.normal(2.0, 1.0, (120, 110)), 0, None).astype(np.float32)
    weights = scipy_gaussian_weights(20.0)
    backend = numpy_as_device_backend()
    expected = separable_blur(backend, plane, weights, "reflect")
    backend.ndimage = InputPrecisionNdimage()
    got = separable_blur(backend, plane, weights, "reflect")
    ulps = np.abs(got.view(np.int32).astype(np.int64) - expected.view(np.int32).astype(np.int64))
    assert ulps.max() <= 1
    # what float32 lines would have given: tens of ulps (the H100's 16x2048² parity failure)
    single = InputPrecisionNdimage.gaussian_filter(plane, 20.0, output=np.float32)
    assert np.abs(single.view(np.int32).astype(np.int64) - expected.view(np.int32).astype(np.int64)).max() > 2


def test_a_blur_of_some_rows_equals_those_rows_of_the_whole_blur():
    from zemosaic_ooc.phase5.patchwork import blur
    from zemosaic_ooc.phase5.renorm import blurred_coverage_block

    rng = np.random.default_rng(8)
    coverage = np.clip(rng.normal(2.0, 1.0, (260, 230)), 0, None).astype(np.float32)
    rows = slice(60, 190)
    whole_cb, whole_s = blurred_coverage_block(numpy_backend(), coverage, 30.0)
    cb, s = blurred_coverage_block(numpy_backend(), coverage, 30.0, rows=rows)
    assert np.array_equal(cb, whole_cb[rows]) and np.array_equal(s, whole_s[rows])
    plane = rng.normal(0.5, 0.1, (150, 120)).astype(np.float32)
    assert np.array_equal(blur(numpy_backend(), plane, 9.0, rows=slice(20, 95)),
                          blur(numpy_backend(), plane, 9.0)[20:95])
