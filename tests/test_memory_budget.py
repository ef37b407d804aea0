"""Out-of-core memory bound: a run whose output is >= 4x the memory budget stays near the budget.

What is measured: the peak resident set size (``VmHWM`` from ``/proc/self/status``) of a
**fresh child process** that imports zemosaic_ooc and runs ``run_pipeline`` with
``Phase5Options(memory_budget=32 MiB)`` on a synthetic 2x2 set of 1600x1600 px tiles (output grid
about 3040 x 3040 px: mosaic H*W*3*4 B + coverage H*W*4 B + alpha H*W*1 B ~ 150 MiB of output
arrays, >= 4x the budget).  The test process's own memory does not count.  The bound is
``peak <= budget + 300 MiB``; the 300 MiB slack covers the interpreter and its imports (numpy,
scipy, astropy, zarr: ~100 MiB, reported as ``baseline``) and per-worker scratch.

``VmHWM`` and not ``ru_maxrss``: on Linux a child spawned by ``subprocess`` (vfork/exec) inherits
its parent's ``ru_maxrss`` high-water mark, which here would be pytest's.  ``ru_maxrss`` is
reported as well.  The full-size version is ``tools/bench_memory.py``.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from child_rss import VMHWM_FUNCTION

MiB = 2 ** 20
BUDGET = 32 * MiB
SLACK = 300 * MiB
MIN_RATIO = 4.0

CHILD = VMHWM_FUNCTION + textwrap.dedent("""
    import json, resource, sys
    from pathlib import Path


    from zemosaic_ooc.options import Phase5Options
    from zemosaic_ooc.phase5.pipeline import run_pipeline
    import zarr
    baseline = vmhwm()
    tiles = sorted(Path(sys.argv[1]).glob("master_tile_*.fits"))
    full = sys.argv[4] == "full"
    # full: narrower blurs than the defaults (σ 12 and 8 px, halos 48 and 31 px instead of 200
    # and 275) keep the run short; the memory structure (halo groups, exact statistics) is the same
    opts = Phase5Options(memory_budget=int(sys.argv[3]), two_pass_coverage_renorm=full,
                         patchwork_suppressor_enabled=full, two_pass_cov_sigma_px=12.0,
                         patchwork_suppressor_sigma_px=8.0)
    summary = run_pipeline(tiles, Path(sys.argv[2]), opts)
    g = zarr.open_group(sys.argv[2], mode="r")
    arrays = sum(int(g[name].nbytes) for name in ("mosaic", "coverage", "alpha"))
    print("@@RESULT " + json.dumps({
        "peak": vmhwm(), "ru_maxrss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
        "baseline": baseline, "output_array_bytes": arrays, "shape_hw": list(summary.shape_hw),
        "block": summary.block_size, "stages": summary.stages}))
""")


@pytest.fixture(scope="module")
def big_tiles(tmp_path_factory) -> Path:
    from zemosaic_ooc.demo import make_demo_tiles
    folder = tmp_path_factory.mktemp("memory_tiles")
    make_demo_tiles(folder, nx=2, ny=2, tile_hw=(1600, 1600), overlap=0.1, seed=3)
    return folder


@pytest.mark.skipif(not Path("/proc/self/status").is_file(), reason="needs /proc (VmHWM)")
@pytest.mark.parametrize("pipeline", ["first-pass", "full"])
def test_child_peak_rss_within_budget_plus_300mib(big_tiles, tmp_path, pipeline):
    """Child-process peak RSS (VmHWM) <= memory_budget + 300 MiB while output arrays >= 4x budget:
    the first pass, and the full default pipeline (two-pass renormalisation, whose exact P5 and
    tile medians scan the blocks on threads with a key cache, and the patchwork suppressor)."""
    out = tmp_path / "mem.zarr"
    import zemosaic_ooc
    env = dict(os.environ)    # the child imports the same zemosaic_ooc as this test process
    package_root = str(Path(zemosaic_ooc.__file__).resolve().parents[1])
    env["PYTHONPATH"] = os.pathsep.join([package_root] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
    proc = subprocess.run([sys.executable, "-c", CHILD, str(big_tiles), str(out), str(BUDGET), pipeline],
                          capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    line = [ln for ln in proc.stdout.splitlines() if ln.startswith("@@RESULT ")][-1]
    res = json.loads(line[len("@@RESULT "):])
    ratio = res["output_array_bytes"] / BUDGET
    report = (f"output {res['shape_hw'][0]}x{res['shape_hw'][1]} px, output arrays "
              f"{res['output_array_bytes'] / MiB:.0f} MiB = {ratio:.1f}x budget "
              f"{BUDGET / MiB:.0f} MiB (block {res['block']} px); child peak RSS "
              f"{res['peak'] / MiB:.0f} MiB (VmHWM; ru_maxrss {res['ru_maxrss'] / MiB:.0f} MiB), "
              f"baseline after imports {res['baseline'] / MiB:.0f} MiB, limit "
              f"{(BUDGET + SLACK) / MiB:.0f} MiB; stages "
              + ", ".join(f"{n} {s:.1f}s" for n, s in res["stages"]))
    print(report)
    assert ratio >= MIN_RATIO, "tile set too small for the test: " + report
    assert res["peak"] <= BUDGET + SLACK, "peak RSS over budget + 300 MiB: " + report
