"""Block tasks on a Dask cluster give the same mosaic as the local thread pool."""
from __future__ import annotations

import numpy as np
import pytest

distributed = pytest.importorskip("distributed")

from zemosaic_ooc.options import Phase5Options
from zemosaic_ooc.phase5.pipeline import run_pipeline

from conftest import require_fixtures
from golden import read_store_window


@pytest.fixture(scope="module")
def tiles():
    dirs = require_fixtures()
    chosen = [d for d in dirs if d.name == "zemosaic_ref_2x2"] or dirs
    return sorted(chosen[0].glob("master_tile_*.fits"))


def _assert_same(a_path, b_path):
    a, cov_a, alpha_a, _ = read_store_window(a_path)
    b, cov_b, alpha_b, _ = read_store_window(b_path)
    assert np.array_equal(np.isfinite(a), np.isfinite(b))
    both = np.isfinite(a).all(-1)
    for c in range(3):
        p1, p99 = np.percentile(a[..., c][both], [1, 99])
        assert np.max(np.abs(a[..., c][both] - b[..., c][both])) < 1e-6 * (p99 - p1)
    assert np.array_equal(cov_a, cov_b) and np.array_equal(alpha_a, alpha_b)


def test_two_worker_local_cluster_equals_the_local_scheduler(tiles, tmp_path):
    run_pipeline(tiles, tmp_path / "local.zarr", Phase5Options(block_size=128))
    summary = run_pipeline(tiles, tmp_path / "dask.zarr", Phase5Options(block_size=128, scheduler="dask"),
                           workers=2)
    assert summary.two_pass.get("ran")
    _assert_same(tmp_path / "local.zarr", tmp_path / "dask.zarr")


def test_a_killed_worker_does_not_change_the_result(tiles, tmp_path):
    """A worker process is SIGKILLed 3 s into the run (during the block stages); the nanny
    restarts it and its lost tasks are retried (tasks are idempotent)."""
    import os
    import signal

    from distributed import Client, LocalCluster

    run_pipeline(tiles, tmp_path / "local.zarr", Phase5Options(block_size=128))
    cluster = LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None)
    client = Client(cluster)
    try:
        victim = list(client.run(os.getpid).values())[0]
        killed = []
        address = cluster.scheduler_address
        import threading

        def killer():
            import time
            time.sleep(3.0)
            os.kill(victim, signal.SIGKILL)
            killed.append(victim)

        thread = threading.Thread(target=killer)
        thread.start()
        summary = run_pipeline(tiles, tmp_path / "dask.zarr",
                               Phase5Options(block_size=128, scheduler=address))
        thread.join()
        assert killed
        _assert_same(tmp_path / "local.zarr", tmp_path / "dask.zarr")
    finally:
        client.close()
        cluster.close()
