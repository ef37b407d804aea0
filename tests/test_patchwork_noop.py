"""The patchwork suppressor's no-op: decided by its cheap statistics before median(Y) is scanned,
and the mosaic it hands on is the two-pass mosaic, unchanged."""
from __future__ import annotations

import numpy as np
import zarr

import zemosaic_ooc.phase5.stats as stats
from zemosaic_ooc.demo import make_demo_tiles
from zemosaic_ooc.options import Phase5Options
from zemosaic_ooc.phase5.pipeline import run_pipeline


def test_a_seam_gradient_p99_of_zero_stops_the_suppressor_before_its_median_scan(tmp_path, monkeypatch):
    # two large tiles: the coverage steps are under 1 % of the valid pixels, so P99(G) = 0
    paths = make_demo_tiles(tmp_path / "tiles", nx=2, ny=1, tile_hw=(600, 600), overlap=0.1, seed=3)
    asked: list[list[float]] = []
    exact = stats.exact_percentiles

    def recording(boxes, values_of, qs, **kwargs):
        asked.append(list(qs))
        return exact(boxes, values_of, qs, **kwargs)

    monkeypatch.setattr(stats, "exact_percentiles", recording)
    run_pipeline(paths, tmp_path / "out.zarr", Phase5Options(block_size=256))
    group = zarr.open_group(str(tmp_path / "out.zarr"), mode="r")
    info = group.attrs["patchwork"]
    assert info["ran"] is False and info["note"] == "seam gradient P99 is zero (no-op)"
    assert asked == [[5.0], [99.0]]        # two-pass P5, then P99(G) alone: no median(Y)
    assert group.attrs["two_pass"]["ran"]
    mosaic = group["mosaic"][...]
    assert np.isfinite(mosaic).any()
    assert np.array_equal(mosaic, group["stages/twopass_mosaic"][...], equal_nan=True)
