"""Block tasks on a Dask cluster give the same mosaic as the local thread pool."""
from __future__ import annotations

import pytest

distributed = pytest.importorskip("distributed")

from zemosaic_ooc.options import Phase5Options
from zemosaic_ooc.phase5.pipeline import run_pipeline

from conftest import require_fixtures
from golden import assert_same_mosaic, read_store_window


@pytest.fixture(scope="module")
def tiles():
    dirs = require_fixtures()
    chosen = [d for d in dirs if d.name == "zemosaic_ref_2x2"] or dirs
    return sorted(chosen[0].glob("master_tile_*.fits"))


def test_two_worker_local_cluster_equals_the_local_scheduler(tiles, tmp_path):
    run_pipeline(tiles, tmp_path / "local.zarr", Phase5Options(block_size=128))
    summary = run_pipeline(tiles, tmp_path / "dask.zarr", Phase5Options(block_size=128, scheduler="dask"),
                           workers=2)
    assert summary.two_pass.get("ran")
    assert_same_mosaic(read_store_window(tmp_path / "dask.zarr"), read_store_window(tmp_path / "local.zarr"))


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
        run_pipeline(tiles, tmp_path / "dask.zarr",
                               Phase5Options(block_size=128, scheduler=address))
        thread.join()
        assert killed
        assert_same_mosaic(read_store_window(tmp_path / "dask.zarr"), read_store_window(tmp_path / "local.zarr"))
    finally:
        client.close()
        cluster.close()
