"""Device block-task threads against speed, in one process after a warm-up (issue 4).

    python tools/gpu_sweep.py TILES_DIR [--values 16,8,4,3,2] [--workers 16] [--repeat 1]
                              [--first-pass]

For each value K, the full default pipeline (or ``--first-pass``) runs on the GPU with
``ZEMOSAIC_OOC_DEVICE_BLOCK_WORKERS=K`` (the threads of the block tasks, which also size the
blocks: :func:`zemosaic_ooc.device_budget.device_block_workers`), every other host stage on
``--workers`` threads, as gpu_check's timed runs do (after an untimed warm-up, so no run pays
imports, kernel loads or the first-task gate).  Prints wall time, block size, device slots,
stage and block-stage times, and the process CPU seconds of each run.  Needs a CUDA device.
"""
from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from zemosaic_ooc.backend import cupy_available, cupy_backend  # noqa: E402
from zemosaic_ooc.options import Phase5Options  # noqa: E402

from gpu_check import LAST_RUN_CPU, timed_run, warm_up  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser()
    p.add_argument("tiles_dir")
    p.add_argument("--values", default="16,8,4,3,2")
    p.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    p.add_argument("--repeat", type=int, default=1)
    p.add_argument("--first-pass", action="store_true")
    p.add_argument("--emulate", action="store_true",
                   help="numpy standing in for the device (checks this tool and the code path anywhere)")
    ns = p.parse_args(argv)
    if ns.emulate:
        from zemosaic_ooc.backend import numpy_as_device_backend

        def device():
            return numpy_as_device_backend(8 * 2**30)
    else:
        device = cupy_backend
    if not ns.emulate and not cupy_available():
        print("gpu_sweep: no usable CUDA device", file=sys.stderr)
        return 2
    work = Path(tempfile.mkdtemp(prefix="gpu_sweep_"))
    if not ns.emulate:
        warm_up(work, argparse.Namespace(cpu_workers=ns.workers, gpu_workers=ns.workers, gpu_budget=None))
    tiles = sorted(Path(ns.tiles_dir).glob("master_tile_*.fits"))
    kwargs = {"gpu": "off"}
    if ns.first_pass:
        kwargs.update(two_pass_coverage_renorm=False, patchwork_suppressor_enabled=False)
    before = os.environ.get("ZEMOSAIC_OOC_DEVICE_BLOCK_WORKERS")
    for _ in range(ns.repeat):
        for value in ns.values.split(","):
            os.environ["ZEMOSAIC_OOC_DEVICE_BLOCK_WORKERS"] = value
            wall, summary = timed_run(tiles, work / "sweep.zarr", Phase5Options(**kwargs), workers=ns.workers,
                                      device=device())
            dev = summary.device
            print(f"K={value:>2s} wall {wall:6.2f} s block {summary.block_size} slots {dev.get('device_slots')} "
                  f"replays {dev.get('replays')} CPU {LAST_RUN_CPU.get('process_cpu_s', 0):.1f} s | "
                  + ", ".join(f"{n} {s:.2f}" for n, s in summary.stages), flush=True)
            print("      block stages " + ", ".join(f"{n} {s:.2f}" for n, s in summary.block_stages), flush=True)
    if before is None:
        os.environ.pop("ZEMOSAIC_OOC_DEVICE_BLOCK_WORKERS", None)
    else:
        os.environ["ZEMOSAIC_OOC_DEVICE_BLOCK_WORKERS"] = before
    shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
