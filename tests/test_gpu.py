"""Real-GPU parity (``gpu`` marker): skipped cleanly where cupy or a CUDA device is missing."""
from __future__ import annotations

import numpy as np
import pytest

from zemosaic_ooc.backend import cupy_available

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not cupy_available(), reason="needs cupy and a CUDA device")]


def test_gpu_matches_cpu_on_the_fixture_with_the_full_pipeline(tmp_path):
    from zemosaic_ooc.backend import cupy_backend
    from zemosaic_ooc.options import Phase5Options
    from zemosaic_ooc.phase5.pipeline import run_pipeline

    from conftest import require_fixtures
    from golden import read_store_window

    tiles = sorted(require_fixtures()[0].glob("master_tile_*.fits"))
    run_pipeline(tiles, tmp_path / "cpu.zarr", Phase5Options(block_size=128, gpu="off"))
    for name, device in (("gpu", cupy_backend()), ("small", cupy_backend(budget_bytes=64 * 2**20))):
        run_pipeline(tiles, tmp_path / f"{name}.zarr", Phase5Options(block_size=128, gpu="off"),
                     device=device)
        cpu, _, _, _ = read_store_window(tmp_path / "cpu.zarr")
        gpu, _, _, _ = read_store_window(tmp_path / f"{name}.zarr")
        assert np.array_equal(np.isfinite(cpu), np.isfinite(gpu))
        both = np.isfinite(cpu).all(-1)
        for c in range(3):
            p1, p99 = np.percentile(cpu[..., c][both], [1, 99])
            assert np.max(np.abs(cpu[..., c][both] - gpu[..., c][both])) <= 1e-4 * (p99 - p1)
