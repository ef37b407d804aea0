#!/usr/bin/env python
"""Out-of-core check: zemosaic_ooc's peak RSS under a memory budget much smaller than its output.

The script writes a synthetic tile set (default 3x3 tiles of 2000x2000 px, 10 % overlap, about
30 Mpx of output) whose output arrays (``mosaic`` H*W*3*4 B + ``coverage`` H*W*4 B + ``alpha``
H*W*1 B = 17 B per pixel) are at least ``--min-ratio`` (4) times ``--memory-budget`` (64 MiB),
runs :func:`zemosaic_ooc.phase5.pipeline.run_pipeline` with ``Phase5Options(memory_budget=...)``
in a fresh child process, and prints the output-array size, the budget, the child's peak RSS and
whether ``peak <= budget + slack`` (default slack 300 MiB: the interpreter, numpy, scipy, astropy
and zarr themselves take about 100 MiB, see the baseline lines).  Exit code 0 when the bound
holds, 1 when it does not, 2 when the tile set is too small for the ratio.

Peak RSS is the child's ``VmHWM`` (/proc/self/status) with ``ru_maxrss`` as a cross-check; the
driver stays lean (standard library + psutil) so that ``ru_maxrss``, which a spawned child
inherits from its parent on Linux, is not confounded.  Sampled per-stage peaks (every 50 ms)
show where the memory goes.

Usage::

    python tools/bench_memory.py                                   # 64 MiB budget, 3x3 x 2000 px
    python tools/bench_memory.py --memory-budget 128MiB --tiles 4x4 --tile-size 2000
    python tools/bench_memory.py --profile 25                      # + cProfile top 25
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_phase5 as bp  # noqa: E402  (same folder; lean: standard library only)

MiB = 2 ** 20
BYTES_PER_OUTPUT_PIXEL = 3 * 4 + 4 + 1

BASELINE_IMPORTS = {
    "python": "pass",
    "numpy": "import numpy",
    "numpy+scipy.ndimage+astropy+zarr+psutil":
        "import numpy, scipy.ndimage, astropy.io.fits, astropy.wcs, zarr, psutil",
    "zemosaic_ooc.phase5.pipeline": "import zemosaic_ooc.phase5.pipeline",
}


def baseline_rss() -> dict[str, dict[str, int]]:
    """Peak RSS (VmHWM, ru_maxrss) of a fresh interpreter after the bare imports."""
    import subprocess
    out = {}
    for name, stmt in BASELINE_IMPORTS.items():
        code = (f"{stmt}\nimport sys; sys.path.insert(0, {str(Path(bp.__file__).parent)!r})\n"
                "import bench_phase5 as b, json\n"
                "print(json.dumps([b.vmhwm_bytes() or 0, b.maxrss_bytes()]))")
        proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                              env=bp.child_env())
        hwm, maxrss = json.loads(proc.stdout.strip().splitlines()[-1])
        out[name] = {"vmhwm": hwm, "ru_maxrss": maxrss}
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--memory-budget", default="64MiB", help="zemosaic_ooc memory budget (default 64MiB)")
    p.add_argument("--slack", default="300MiB", help="allowed peak RSS above the budget (default 300MiB)")
    p.add_argument("--tiles", type=bp.parse_layout, default=(3, 3), help="layout NXxNY (default 3x3)")
    p.add_argument("--tile-size", type=int, default=2000, help="tile side in px (default 2000)")
    p.add_argument("--overlap", type=float, default=0.1, help="tile overlap fraction (default 0.1)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--min-ratio", type=float, default=4.0,
                   help="required output-arrays / budget ratio (default 4)")
    p.add_argument("--block-size", type=int, default=None, help="force a block size (default: from the budget)")
    p.add_argument("--workers", type=int, default=None)
    p.add_argument("--full", action="store_true",
                   help="also run two-pass/patchwork options (default: first pass only)")
    p.add_argument("--profile", type=int, default=0, metavar="N", help="cProfile top N of the run")
    p.add_argument("--out", default=None, help="work folder (default <tmp>/zemosaic_ooc_bench_memory)")
    p.add_argument("--keep", action="store_true", help="keep the output store")
    p.add_argument("--json", default=None, help="also write the results to this JSON file")
    ns = p.parse_args(argv)

    from zemosaic_ooc.options import parse_size   # light: no numpy
    budget = parse_size(ns.memory_budget)
    slack = parse_size(ns.slack)
    root = Path(ns.out) if ns.out else Path(tempfile.gettempdir()) / "zemosaic_ooc_bench_memory"
    root.mkdir(parents=True, exist_ok=True)
    info = bp.machine_info()
    nx, ny = ns.tiles
    print(f"machine: {info['nproc']} CPU(s), {info['ram_gib']} GiB RAM, {info['cpu']}; Python "
          f"{info['python']}; " + ", ".join(f"{k} {v}" for k, v in bp.versions().items()), flush=True)

    base = baseline_rss()
    for name, v in base.items():
        print(f"baseline RSS of a fresh interpreter after `{BASELINE_IMPORTS[name]}`: "
              f"{v['vmhwm'] / MiB:.0f} MiB (ru_maxrss {v['ru_maxrss'] / MiB:.0f} MiB)", flush=True)

    tdir = root / f"tiles_{nx}x{ny}_{ns.tile_size}_o{ns.overlap:g}_s{ns.seed}"
    t0 = time.perf_counter()
    bp.run_child(["--worker", "generate", "--tiles-dir", str(tdir), "--tiles", f"{nx}x{ny}",
                  "--tile-size", str(ns.tile_size), "--overlap", str(ns.overlap), "--seed", str(ns.seed)])
    print(f"tiles: {nx}x{ny} x {ns.tile_size}x{ns.tile_size} px in {tdir} "
          f"({time.perf_counter() - t0:.1f} s)", flush=True)

    out_zarr = root / "out.zarr"
    cargs = ["--worker", "ours", "--tiles-dir", str(tdir), "--out-path", str(out_zarr),
             "--memory-budget", str(budget)]
    if not ns.full:
        cargs.append("--first-pass-only")
    if ns.block_size:
        cargs += ["--block-size", str(ns.block_size)]
    if ns.workers:
        cargs += ["--workers", str(ns.workers)]
    if ns.profile:
        cargs += ["--profile", str(ns.profile)]
    t0 = time.perf_counter()
    res = bp.run_child(cargs)
    child_wall = time.perf_counter() - t0
    if ns.profile:
        print(res["log"])
    if not ns.keep:
        import shutil
        shutil.rmtree(out_zarr, ignore_errors=True)

    print(f"zemosaic_ooc package: {res['package']}")
    h, w = res["shape_hw"]
    arrays = res["output_array_bytes"]
    out_bytes = sum(arrays.values())
    ratio = out_bytes / budget
    peak = res["peak_rss"]
    limit = budget + slack
    ok = peak <= limit
    print()
    print(f"output grid           {h} x {w} = {h * w / 1e6:.2f} Mpx")
    print(f"output arrays         {out_bytes / MiB:.0f} MiB (mosaic {arrays['mosaic'] / MiB:.0f}, "
          f"coverage {arrays['coverage'] / MiB:.0f}, alpha {arrays['alpha'] / MiB:.0f}) = "
          f"{ratio:.1f} x budget")
    print(f"memory budget         {budget / MiB:.0f} MiB (block {res['block_size']} px, "
          f"{res['workers']} worker(s))")
    print(f"child baseline        {res['baseline_rss'] / MiB:.0f} MiB after importing the pipeline")
    print(f"child peak RSS        {peak / MiB:.0f} MiB (VmHWM; ru_maxrss {res['ru_maxrss'] / MiB:.0f} MiB; "
          f"peak above baseline {(peak - res['baseline_rss']) / MiB:.0f} MiB)")
    print(f"bound                 peak <= budget + {slack / MiB:.0f} MiB = {limit / MiB:.0f} MiB: "
          f"{'PASS' if ok else 'FAIL'}")
    print(f"run time              {res['wall_s']:.1f} s in run_pipeline ({child_wall:.1f} s child "
          f"process); " + ", ".join(f"{n} {s:.1f}s" for n, s in res["stages"]))
    print("sampled peak per stage (MiB): " + bp.format_stage_peaks(res.get("stage_peak_rss", [])))
    if ns.json:
        res.pop("log", None)
        Path(ns.json).write_text(json.dumps({
            "machine": info, "versions": bp.versions(), "args": sys.argv[1:], "baseline": base,
            "budget": budget, "slack": slack, "output_array_bytes": out_bytes, "ratio": ratio,
            "pass": ok, "result": res}, indent=1))
    if ratio < ns.min_ratio:
        print(f"NOTE: output arrays are only {ratio:.1f} x the budget (< {ns.min_ratio:g}): "
              "use more or larger tiles", file=sys.stderr)
        return 2
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
