"""Golden: the first pass (spec §2–§5) against ZeMosaic's ``ref_pass1.fits`` on every fixture.

Floors (issue 2): median ratio 0.2 %, RMS ≤ 1e-3 of P99 − P1, masks ≥ 99.5 %,
gains/offsets 1e-3.  We assert the marks of a faithful port (ACCEPTANCE §3):
median ratio 1e-5, RMS ≤ 1e-5, masks 100 %, gains/offsets 1e-6.
"""
from __future__ import annotations

import numpy as np
import pytest

from zemosaic_ooc.options import Phase5Options
from zemosaic_ooc.phase5.pipeline import run_pipeline

from golden import compare, load_ref_json, read_reference, read_store_window

pytestmark = pytest.mark.golden

_RUNS: dict[tuple[str, int], tuple] = {}


def first_pass_options(**extra) -> Phase5Options:
    opts = Phase5Options(two_pass_coverage_renorm=False, patchwork_suppressor_enabled=False)
    for key, value in extra.items():
        setattr(opts, key, value)
    return opts


def run_fixture(fixture_dir, tmp_path_factory, block_size: int = 128):
    key = (str(fixture_dir), block_size)
    if key not in _RUNS:
        out = tmp_path_factory.mktemp(fixture_dir.name) / "out.zarr"
        tiles = sorted(fixture_dir.glob("master_tile_*.fits"))
        summary = run_pipeline(tiles, out, first_pass_options(block_size=block_size))
        _RUNS[key] = (out, summary)
    return _RUNS[key]


def test_first_pass_matches_reference_mosaic(fixture_dir_checked, tmp_path_factory):
    out, _ = run_fixture(fixture_dir_checked, tmp_path_factory)
    ours, coverage, alpha, _ = read_store_window(out)
    ref, ref_coverage, ref_alpha, _ = read_reference(fixture_dir_checked, "ref_pass1.fits")
    assert ours.shape == ref.shape
    result = compare(ours, ref)
    assert result.mask_agreement == 1.0
    for c in range(3):
        assert abs(result.median_ratio_minus_1[c]) <= 1e-5, result
        assert result.rms_over_range[c] <= 1e-5, result
    # coverage (Σ alpha·τ of channel 0) and the uint8 alpha union, pixel for pixel
    assert np.max(np.abs(coverage - ref_coverage)) <= 1e-5 * max(1.0, float(ref_coverage.max()))
    assert np.array_equal(alpha, ref_alpha)


def test_first_pass_output_grid_matches_reference_wcs(fixture_dir_checked, tmp_path_factory):
    out, summary = run_fixture(fixture_dir_checked, tmp_path_factory)
    ref = load_ref_json(fixture_dir_checked)
    _, _, _, attrs = read_store_window(out)
    from astropy.io import fits
    header = fits.Header.fromstring(attrs["output_wcs_header"])
    y0, y1, x0, x1 = attrs["window"]
    expected = ref["output"]["wcs"]
    assert [y1 - y0, x1 - x0] == ref["output"]["shape_hwc"][:2]
    assert header["CRPIX1"] - x0 == pytest.approx(expected["CRPIX1"], abs=1e-8)
    assert header["CRPIX2"] - y0 == pytest.approx(expected["CRPIX2"], abs=1e-8)
    for key in ("CRVAL1", "CRVAL2", "CDELT1", "CDELT2", "PC1_1", "PC1_2", "PC2_1", "PC2_2"):
        assert header[key] == pytest.approx(expected[key], rel=1e-10, abs=1e-12), key
    assert bool(summary.autocrop_fired) == bool(ref["output"]["autocrop_changed_shape"])


def test_first_pass_intertile_gains_and_offsets_match_reference(fixture_dir_checked, tmp_path_factory):
    _, summary = run_fixture(fixture_dir_checked, tmp_path_factory)
    ref = load_ref_json(fixture_dir_checked)["intertile"]
    gains = [t["applied_gain"] for t in ref["per_tile"]]
    offsets = [t["applied_offset_adu"] for t in ref["per_tile"]]
    assert summary.calibration["gains"] == pytest.approx(gains, abs=1e-6)
    assert summary.calibration["offsets"] == pytest.approx(offsets, abs=1e-6)
    assert [tuple(p) for p in summary.calibration["pairs_found"]] == [tuple(p) for p in ref["pairs_found"]]
    fits_ref = {(f["i"], f["j"]): f for f in ref["pair_fits"]}
    for fit in summary.calibration["pair_fits"]:
        expected = fits_ref[(fit["i"], fit["j"])]
        assert fit["a"] == pytest.approx(expected["a"], abs=1e-9)
        assert fit["b"] == pytest.approx(expected["b"], abs=1e-6)
    assert summary.calibration["anchor"] == ref["anchor_index"]
    assert bool(summary.calibration["guard_reasons"]) == bool(ref["underconstrained_guard"]["triggered"])


def test_first_pass_background_offsets_and_tile_weights_match_reference(fixture_dir_checked, tmp_path_factory):
    _, summary = run_fixture(fixture_dir_checked, tmp_path_factory)
    ref = load_ref_json(fixture_dir_checked)
    expected = np.array(ref["background_offsets"]["pass1"], dtype=np.float64)
    assert np.allclose(np.array(summary.background_offsets), expected, atol=1e-3, rtol=0)
    assert summary.tile_weights == pytest.approx([w["effective"] for w in ref["tile_weights"]], abs=1e-12)


def test_block_size_does_not_change_the_first_pass(fixture_dir_checked, tmp_path_factory):
    """128 vs 192 px blocks (both ≥ 3 blocks across): identical masks, max |Δ| < 1e-5 of P99 − P1."""
    small, _ = run_fixture(fixture_dir_checked, tmp_path_factory, 128)
    large, _ = run_fixture(fixture_dir_checked, tmp_path_factory, 192)
    a, cov_a, alpha_a, _ = read_store_window(small)
    b, cov_b, alpha_b, _ = read_store_window(large)
    assert np.array_equal(np.isfinite(a), np.isfinite(b))
    assert np.array_equal(alpha_a, alpha_b)
    both = np.isfinite(a).all(-1)
    for c in range(3):
        p1, p99 = np.percentile(a[..., c][both], [1, 99])
        assert np.max(np.abs(a[..., c][both] - b[..., c][both])) < 1e-5 * (p99 - p1)
    assert np.max(np.abs(cov_a - cov_b)) < 1e-6
