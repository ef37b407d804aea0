"""tools/gpu_check.py's per-set check, with numpy standing in for CuPy (no GPU needed)."""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tools"))

import gpu_check  # noqa: E402
from zemosaic_ooc.backend import numpy_as_device_backend  # noqa: E402
from zemosaic_ooc.demo import make_demo_tiles  # noqa: E402


def _ns(tolerance: float) -> argparse.Namespace:
    return argparse.Namespace(cpu_workers=2, gpu_workers=2, gpu_budget=None, memory_budget=None,
                              tolerance=tolerance, pool_limit=16 << 20)


def test_check_set_passes_the_emulated_device_and_compares_stages_when_parity_fails(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(gpu_check, "cupy_backend", lambda budget=None: numpy_as_device_backend())
    tiles = make_demo_tiles(tmp_path / "tiles", nx=2, ny=2, tile_hw=(160, 176), overlap=0.2, seed=3)

    row = gpu_check.check_set("demo", tiles, tmp_path, _ns(1e-4), small_pool=False)
    assert row["pass"] and row["gpu"]["ran_on_gpu"]
    assert row["gpu"]["max"] == [0.0, 0.0, 0.0] and row["gpu"]["mask_agreement"] == 1.0
    assert "stage_diff" not in row
    assert not (tmp_path / "demo_cpu.zarr").exists()   # the stores are cleaned up

    # a tolerance nothing meets: the failure comes with the stage-by-stage comparison
    row = gpu_check.check_set("demo", tiles, tmp_path, _ns(-1.0), small_pool=False)
    assert not row["pass"]
    arrays = row["stage_diff"]["arrays"]
    assert {"mosaic", "stages/scale_map", "stages/pass1_mosaic"} <= set(arrays)
    assert all(a["differing_pixels"] == 0 for a in arrays.values())
    assert "parity FAILED; the stores compared stage by stage" in capsys.readouterr().out


def test_the_summary_times_each_block_stage_within_the_pipeline_stages(tmp_path):
    from zemosaic_ooc.options import Phase5Options
    from zemosaic_ooc.phase5.pipeline import run_pipeline

    tiles = make_demo_tiles(tmp_path / "tiles", nx=2, ny=1, tile_hw=(160, 176), overlap=0.2, seed=4)
    summary = run_pipeline(tiles, tmp_path / "out.zarr", Phase5Options(gpu="off"), workers=2)
    block = dict(summary.block_stages)
    assert {"union bboxes", "background offsets", "pass1", "coverage blur", "two-pass gains",
            "pass-2 background offsets", "pass2", "two-pass P5", "merge"} <= set(block)
    assert all(seconds >= 0.0 for seconds in block.values())
    two_pass = dict(summary.stages)["two-pass"]
    assert sum(block[k] for k in ("coverage blur", "two-pass gains", "pass-2 background offsets", "pass2",
                                  "two-pass P5", "merge")) <= two_pass


def test_gpu_sweep_runs_each_block_thread_count_with_numpy_standing_in(tmp_path, capsys, monkeypatch):
    import gpu_sweep

    monkeypatch.delenv("ZEMOSAIC_OOC_DEVICE_BLOCK_WORKERS", raising=False)
    make_demo_tiles(tmp_path / "tiles", nx=2, ny=2, tile_hw=(160, 176), overlap=0.2, seed=3)
    assert gpu_sweep.main([str(tmp_path / "tiles"), "--emulate", "--values", "2,1", "--workers", "2",
                           "--first-pass"]) == 0
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("K=")]
    assert len(lines) == 2
    assert "slots 2" in lines[0] and "slots 1" in lines[1] and all("replays 0" in line for line in lines)
    assert "ZEMOSAIC_OOC_DEVICE_BLOCK_WORKERS" not in os.environ      # the sweep leaves it as it was
