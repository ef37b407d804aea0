"""Block-size independence of the whole default pipeline on a synthetic mosaic.

Blocks are the output chunks; halo stages (coverage blur, patchwork blurs) read
around them.  Changing the block size must change nothing but rounding: max |Δ|
< 1e-5 of P99 − P1 per channel over valid pixels, identical masks (ACCEPTANCE §3).
"""
from __future__ import annotations

import pytest

from zemosaic_ooc.demo import make_demo_tiles
from zemosaic_ooc.options import Phase5Options
from zemosaic_ooc.phase5.pipeline import run_pipeline

from golden import assert_same_mosaic, read_store_window


def _run(tiles, out, block):
    summary = run_pipeline(tiles, out, Phase5Options(block_size=block))
    assert summary.two_pass.get("ran")
    return summary


def test_default_pipeline_is_independent_of_block_size_128_vs_512(tmp_path):
    # many small tiles: > 1 % of the valid pixels sit on coverage steps, so the patchwork
    # suppressor acts (with fewer it is a no-op, as in ZeMosaic: its seam P99 is 0)
    tiles = make_demo_tiles(tmp_path / "tiles", nx=4, ny=3, tile_hw=(520, 560), overlap=0.3, seed=5)
    small = _run(tiles, tmp_path / "b128.zarr", 128)
    large = _run(tiles, tmp_path / "b512.zarr", 512)
    assert small.two_pass.get("ran")
    import zarr
    assert zarr.open_group(str(tmp_path / "b128.zarr"), mode="r").attrs["patchwork"]["ran"]
    height, width = large.shape_hw
    assert width >= 3 * 512, "mosaic too small for three 512 px blocks across"
    assert_same_mosaic(read_store_window(tmp_path / "b128.zarr"), read_store_window(tmp_path / "b512.zarr"),
                       tol=1e-5, coverage_tol=1e-5)


@pytest.mark.slow
def test_default_pipeline_is_independent_of_block_size_256_vs_2048(tmp_path):
    tiles = make_demo_tiles(tmp_path / "tiles", nx=3, ny=2, tile_hw=(1600, 2600), overlap=0.15, seed=6)
    small = _run(tiles, tmp_path / "b256.zarr", 256)
    large = _run(tiles, tmp_path / "b2048.zarr", 2048)
    assert large.shape_hw[1] >= 3 * 2048, "mosaic too small for three 2048 px blocks across"
    assert_same_mosaic(read_store_window(tmp_path / "b256.zarr"), read_store_window(tmp_path / "b2048.zarr"),
                       tol=1e-5, coverage_tol=1e-5)
    assert small.shape_hw == large.shape_hw
