"""Local thread pool vs a Dask LocalCluster with 1 and 2 workers, on one synthetic tile set.

    python tools/bench_scale.py [--tiles 2x2] [--tile-size 1024] [--repeat 1]

Prints the wall time of each configuration (same tiles, same options, same output) and the
maximum difference between the Dask and local mosaics.  Honest numbers: on a 2-core machine the
Dask workers compete with the driver, and every block reads and writes the shared stores.
"""
from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from zemosaic_ooc.demo import make_demo_tiles  # noqa: E402
from zemosaic_ooc.options import Phase5Options  # noqa: E402
from zemosaic_ooc.phase5.pipeline import run_pipeline  # noqa: E402


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiles", default="2x2")
    parser.add_argument("--tile-size", type=int, default=1024)
    parser.add_argument("--repeat", type=int, default=1)
    parser.add_argument("--first-pass-only", action="store_true")
    args = parser.parse_args(argv)
    nx, ny = (int(v) for v in args.tiles.lower().split("x"))
    work = Path(tempfile.mkdtemp(prefix="zemosaic_ooc_scale_"))
    try:
        tiles = make_demo_tiles(work / "tiles", nx=nx, ny=ny,
                                tile_hw=(args.tile_size, args.tile_size), overlap=0.2, seed=1)
        extra = ({"two_pass_coverage_renorm": False, "patchwork_suppressor_enabled": False}
                 if args.first_pass_only else {})

        configs = [("local threads", "local", None), ("dask 1 worker", "dask", 1),
                   ("dask 2 workers", "dask", 2)]
        print(f"machine: {os.cpu_count()} CPU(s); tiles {args.tiles} of {args.tile_size} px")
        reference = None
        for name, scheduler, n_workers in configs:
            best = None
            for rep in range(args.repeat):
                out = work / f"{scheduler}{n_workers}_{rep}.zarr"
                started = time.perf_counter()
                summary = run_pipeline(tiles, out, Phase5Options(scheduler=scheduler, **extra),
                                       workers=n_workers)
                elapsed = time.perf_counter() - started
                best = elapsed if best is None else min(best, elapsed)
            import zarr
            mosaic = zarr.open_group(str(out), mode="r")["mosaic"][:]
            if reference is None:
                reference = mosaic
                diff = 0.0
            else:
                both = np.isfinite(reference) & np.isfinite(mosaic)
                diff = float(np.max(np.abs(reference[both] - mosaic[both])))
            h, w = summary.shape_hw
            print(f"{name:16s} {best:8.1f} s   {h * w / 1e6:6.2f} Mpx   max |diff vs local| {diff:.3g}")
        return 0
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    raise SystemExit(main())
