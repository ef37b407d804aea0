"""Golden: ZeMosaic's default run (two-pass + patchwork suppressor, spec §6–§7) vs ``ref_patchwork.fits``.

Mark asserted where reached: RMS ≤ 1e-5 of P99 − P1 or the reference's own run-to-run
noise, masks 100 %, on every fixture (the autocrop one included: suppressor on the window).
"""
from __future__ import annotations

import pytest

from zemosaic_ooc.options import Phase5Options
from zemosaic_ooc.phase5.pipeline import run_pipeline

from golden import compare, load_ref_json, noise_floor, read_reference, read_store_window

pytestmark = pytest.mark.golden


def test_default_run_matches_reference_patchwork_mosaic(fixture_dir_checked, tmp_path):
    ref_json = load_ref_json(fixture_dir_checked)
    tiles = sorted(fixture_dir_checked.glob("master_tile_*.fits"))
    summary = run_pipeline(tiles, tmp_path / "out.zarr", Phase5Options(block_size=128))
    assert "patchwork suppressor" in summary.steps_run
    ours, _, alpha, attrs = read_store_window(tmp_path / "out.zarr")
    ref, _, ref_alpha, _ = read_reference(fixture_dir_checked, "ref_patchwork.fits")
    result = compare(ours, ref)
    assert result.mask_agreement == 1.0
    for c in range(3):
        assert abs(result.median_ratio_minus_1[c]) <= 1e-5, result
        assert result.rms_over_range[c] <= noise_floor(ref_json, "patchwork", c), result
    assert attrs["patchwork"]["ran"]
