"""tools/op_count.py: counts a device run's array operations without changing its result."""
from __future__ import annotations

import sys

import numpy as np
import zarr

from conftest import REPO_ROOT
from zemosaic_ooc.backend import numpy_as_device_backend
from zemosaic_ooc.demo import make_demo_tiles
from zemosaic_ooc.options import Phase5Options
from zemosaic_ooc.phase5.pipeline import run_pipeline

sys.path.insert(0, str(REPO_ROOT / "tools"))
import op_count  # noqa: E402


def test_op_count_counts_each_stage_and_leaves_the_mosaic_unchanged(tmp_path, capsys):
    tiles = make_demo_tiles(tmp_path / "tiles", nx=2, ny=2, tile_hw=(192, 208), overlap=0.3, seed=3)
    op_count._COUNTS.clear()
    assert op_count.main([str(tmp_path / "tiles"), str(tmp_path / "counted.zarr"), "--block-size", "128"]) == 0
    printed = capsys.readouterr().out
    counts: dict[str, int] = {}
    for (stage, _), n in op_count._COUNTS.items():
        counts[stage] = counts.get(stage, 0) + n
    for stage in ("background", "pass1", "finish", "pass2", "merge"):
        assert counts.get(stage, 0) > 0, (stage, printed)
    assert "ARRAY OPERATIONS by stage" in printed and "bilinear_stencil" in printed
    run_pipeline(tiles, tmp_path / "plain.zarr", Phase5Options(block_size=128, gpu="off"),
                 device=numpy_as_device_backend(), workers=2)
    counted, plain = (zarr.open_group(str(tmp_path / name), mode="r") for name in ("counted.zarr", "plain.zarr"))
    for name in ("mosaic", "coverage", "alpha"):
        assert np.array_equal(counted[name][...], plain[name][...], equal_nan=True), name
