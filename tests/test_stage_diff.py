"""tools/stage_diff.py: which stage array and which scalar two stores part at."""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import zarr

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tools"))

import stage_diff  # noqa: E402


def _store(path: Path, mosaic: np.ndarray, scale: np.ndarray, gains: list[float]) -> Path:
    root = zarr.open_group(str(path), mode="w")
    root.create_array("mosaic", data=mosaic, chunks=(16, 16, 3))
    root.require_group("stages").create_array("scale_map", data=scale, chunks=(16, 16))
    root.require_group("tiles").create_array("ignored", data=np.arange(4.0), chunks=(4,))
    root.attrs.update({"two_pass": {"gains": gains, "p5": 3.5}, "summary": {"wall_s": 1.0}})
    return path


def test_stage_diff_names_the_array_the_pixel_and_the_scalar_that_differ(tmp_path):
    rng = np.random.default_rng(0)
    mosaic = rng.normal(100.0, 10.0, (40, 50, 3)).astype(np.float32)
    mosaic[0, 0] = np.nan
    scale = rng.uniform(0.5, 2.0, (40, 50)).astype(np.float32)
    a = _store(tmp_path / "a.zarr", mosaic, scale, [0.9, 1.0])
    changed = mosaic.copy()
    changed[33, 21, 1] += 0.5
    b_root = zarr.open_group(str(_store(tmp_path / "b.zarr", changed, scale, [0.9, 1.0 + 1e-6])), mode="a")
    b_root.attrs["summary"] = {"wall_s": 9.0}   # timings are not results

    report = stage_diff.compare_stores(a, tmp_path / "b.zarr")

    assert set(report["arrays"]) == {"mosaic", "stages/scale_map"}
    assert report["arrays"]["stages/scale_map"]["differing_pixels"] == 0
    row = report["arrays"]["mosaic"]
    assert row["differing_pixels"] == 1 and row["nan_mask_disagreements"] == 0
    assert row["max_over_span"][0] == 0.0 and row["max_over_span"][2] == 0.0
    assert row["max_over_span"][1] > 0.0
    assert tuple(row["worst"][1]["yx"]) == (33, 21)
    assert row["worst"][1]["b"] - row["worst"][1]["a"] == np.float32(changed[33, 21, 1]) - np.float32(mosaic[33, 21, 1])
    assert [r["path"] for r in report["attrs"]] == ["two_pass.gains[1]"]
    assert abs(report["attrs"][0]["rel"] - 1e-6 / (1.0 + 1e-6)) < 1e-12
