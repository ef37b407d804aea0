"""Block tasks on a Dask cluster: a LocalCluster sized from the machine, or an existing scheduler.

Workers need the stores on a shared path (they read the TileStore and overwrite
their own chunks of the MosaicStore); results sent back are tiny (extents,
counts).  The driver alone writes the journal.  Failed tasks (e.g. a worker that
died) are retried on another worker: tasks are idempotent.
"""
from __future__ import annotations

import logging
import os
from typing import Any

log = logging.getLogger(__name__)


def make_client(scheduler: str, *, workers: int | None = None,
                memory_budget: int | None = None) -> tuple[Any, Any]:
    """(client, cluster or None) for ``--scheduler dask`` or ``tcp://host:port``."""
    try:
        from distributed import Client, LocalCluster
    except ImportError as exc:  # pragma: no cover - the dist extra is missing
        from ..errors import OptionError
        raise OptionError("--scheduler dask needs dask.distributed: pip install "
                          "'zemosaic_ooc[dist]'") from exc
    if scheduler.startswith("tcp://"):
        client = Client(scheduler)
        log.info("using the Dask scheduler at %s (dashboard: %s)", scheduler, client.dashboard_link)
        return client, None
    n_workers = workers or max(1, os.cpu_count() or 1)
    cluster = LocalCluster(n_workers=n_workers, threads_per_worker=1, processes=True,
                           memory_limit=(memory_budget + 512 * 2**20) if memory_budget else "auto",
                           dashboard_address=None)
    client = Client(cluster)
    log.info("Dask LocalCluster with %d worker process(es)", n_workers)
    return client, cluster


def close(client: Any, cluster: Any) -> None:
    try:
        client.close()
    finally:
        if cluster is not None:
            cluster.close()
