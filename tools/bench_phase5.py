#!/usr/bin/env python
"""Benchmark zemosaic_ooc's Phase 5 (CPU) against reproject's ``reproject_and_coadd``.

For each tile layout (``--tiles 2x2`` or ``--sizes 2x2,3x3``) the script

1. writes a synthetic ZeMosaic master-tile set with :func:`zemosaic_ooc.demo.make_demo_tiles`
   (RGB CHW float32 + TAN/TAN-SIP WCS + ``ALPHA`` uint8 + ``MT_NFRAMES``), reused when present;
2. runs zemosaic_ooc's :func:`~zemosaic_ooc.phase5.pipeline.run_pipeline` in a **fresh child
   process** (``--worker ours``);
3. runs the anchor in another fresh child (``--worker anchor``): what ZeMosaic's CPU Phase 5
   does, i.e. one ``reproject.mosaicking.reproject_and_coadd`` call per channel with
   ``reproject_function=reproject_interp``, ``match_background=True``,
   ``combine_function='mean'`` and ``input_weights`` = ALPHA/255 (float64), on the **same
   output grid** (taken from our store's ``output_wcs_header``) and the same master-tile crop
   (``apply_master_tile_crop`` / ``master_tile_crop_percent``, ZeMosaic's defaults 3 %).

Each child reports its wall time for the work itself (reading the tiles included, interpreter
start and imports excluded), its peak RSS at the end and its peak RSS right after its imports
(the baseline).  Peak RSS is ``VmHWM`` of the child (/proc/self/status) and, as a cross-check,
``resource.getrusage(RUSAGE_SELF).ru_maxrss``; the two agree because the driver that spawns the
children stays lean (see :func:`maxrss_bytes` for why that matters on Linux).

Usage::

    python tools/bench_phase5.py --tiles 2x2 --tile-size 1024 --repeat 1 --out /tmp/zbench
    python tools/bench_phase5.py --sizes 2x2,3x3 --tile-size 1024 --first-pass-only
    python tools/bench_phase5.py --sizes 2x2,3x3,4x4,5x5 --tile-sizes 1024,2048 --first-pass-only
    python tools/bench_phase5.py --tiles 3x3 --profile        # + a profiled run: top 10 functions

Times: zemosaic_ooc writes its zarr store (final and stage arrays) to disk; the anchor keeps
its output in memory (as ZeMosaic's Phase 5 does before its own FITS export).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve()
REPO_ROOT = HERE.parents[1]
MiB = 2 ** 20
# Benchmark the checkout this script lives in, not whatever copy is installed.
if (REPO_ROOT / "zemosaic_ooc" / "__init__.py").is_file() and str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))


def child_env() -> dict[str, str]:
    """The children import zemosaic_ooc from this checkout too (PYTHONPATH first)."""
    env = dict(os.environ)
    if (REPO_ROOT / "zemosaic_ooc" / "__init__.py").is_file():
        env["PYTHONPATH"] = os.pathsep.join([str(REPO_ROOT)] + ([env["PYTHONPATH"]]
                                                                 if env.get("PYTHONPATH") else []))
    return env


# --------------------------------------------------------------------------- helpers

def maxrss_bytes() -> int:
    """``ru_maxrss`` of this process in bytes (KiB on Linux, bytes on macOS).

    Caveat (Linux): a child started with vfork/posix_spawn (what ``subprocess`` does) inherits
    its parent's high-water mark at exec time, so ``ru_maxrss`` is at least the parent's peak.
    The driver therefore stays lean (it only imports the standard library and psutil) and
    :func:`peak_rss_bytes` prefers ``VmHWM``, the high-water mark of this address space alone.
    """
    r = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(r) if sys.platform == "darwin" else int(r) * 1024


def vmhwm_bytes() -> int | None:
    """``VmHWM`` from /proc/self/status (peak RSS of this process image), None off Linux."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def peak_rss_bytes() -> int:
    """Peak RSS of this process alone: VmHWM where available, else ru_maxrss."""
    hwm = vmhwm_bytes()
    return hwm if hwm is not None else maxrss_bytes()


def parse_layout(text: str) -> tuple[int, int]:
    try:
        nx, ny = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"layout {text!r}: expected NXxNY, e.g. 2x2") from None
    if nx < 1 or ny < 1:
        raise argparse.ArgumentTypeError(f"layout {text!r}: needs at least 1x1")
    return nx, ny


def machine_info() -> dict[str, Any]:
    model = "?"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        import psutil
        ram = psutil.virtual_memory().total
    except Exception:  # pragma: no cover
        ram = 0
    return {"nproc": os.cpu_count(), "ram_gib": round(ram / 2 ** 30, 1), "cpu": model,
            "python": platform.python_version(), "platform": platform.platform()}


def versions() -> dict[str, str]:
    """Package versions from their metadata (importing them would grow the lean driver)."""
    from importlib import metadata
    out = {}
    for name in ("numpy", "scipy", "astropy", "reproject", "zarr"):
        try:
            out[name] = metadata.version(name)
        except Exception:  # pragma: no cover
            out[name] = "?"
    return out


def make_tiles(folder: Path, nx: int, ny: int, tile_hw: tuple[int, int], overlap: float,
               seed: int) -> list[Path]:
    """The demo tile set in ``folder`` (reused when its truth.json has the same parameters)."""
    from zemosaic_ooc.demo import load_truth, make_demo_tiles, tile_name
    truth_file = folder / "truth.json"
    if truth_file.is_file():
        try:
            t = load_truth(folder)
            same = (t["nx"], t["ny"], list(t["tile_hw"]), float(t["overlap"]), int(t["seed"])) == \
                   (nx, ny, list(tile_hw), float(overlap), int(seed))
            paths = [folder / tile_name(k) for k in range(nx * ny)]
            if same and all(p.is_file() for p in paths):
                return paths
        except (OSError, KeyError, ValueError):
            pass
        shutil.rmtree(folder)
    return [Path(p) for p in make_demo_tiles(folder, nx=nx, ny=ny, tile_hw=tile_hw,
                                             overlap=overlap, seed=seed)]


class RssSampler:
    """Samples this process's RSS every ``period`` s in a thread: (perf_counter, rss) pairs."""

    def __init__(self, period: float = 0.05):
        import threading
        self.period = period
        self.samples: list[tuple[float, int]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        import psutil
        proc = psutil.Process()
        while not self._stop.is_set():
            self.samples.append((time.perf_counter(), proc.memory_info().rss))
            self._stop.wait(self.period)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> list[tuple[float, int]]:
        self._stop.set()
        self._thread.join()
        return self.samples


def stage_peaks(trace: list[tuple[float, int]], t0: float,
                stages: list[tuple[str, float]]) -> list[list[Any]]:
    """Peak sampled RSS within each stage (stages are consecutive from t0)."""
    out = []
    start = t0
    for name, seconds in stages:
        end = start + seconds
        inside = [rss for t, rss in trace if start <= t <= end]
        out.append([name, max(inside) if inside else None])
        start = end
    return out


def run_child(args: list[str], timeout: float | None = None) -> dict[str, Any]:
    """Run this script as ``--worker ...`` in a fresh interpreter; return its JSON line."""
    cmd = [sys.executable, str(HERE)] + args
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=child_env())
    result = None
    for line in proc.stdout.splitlines():
        if line.startswith("@@RESULT "):
            result = json.loads(line[len("@@RESULT "):])
    if proc.returncode != 0 or result is None:
        sys.stderr.write(proc.stdout[-4000:] + proc.stderr[-4000:])
        raise RuntimeError(f"worker failed (rc={proc.returncode}): {' '.join(cmd)}")
    other = [ln for ln in proc.stdout.splitlines() if not ln.startswith("@@RESULT ")]
    result["log"] = "\n".join(other)
    return result


# --------------------------------------------------------------------------- workers

def worker_ours(ns: argparse.Namespace) -> dict[str, Any]:
    import numpy  # noqa: F401  (baseline: the same imports the pipeline needs)
    import reproject.mosaicking  # noqa: F401  (the grid (§1.1) uses it; the anchor imports it too)
    from zemosaic_ooc.options import Phase5Options
    from zemosaic_ooc.phase5.pipeline import run_pipeline
    baseline = peak_rss_bytes()
    import zemosaic_ooc
    print(f"zemosaic_ooc from {Path(zemosaic_ooc.__file__).parent}")
    tiles = sorted(Path(ns.tiles_dir).glob("master_tile_*.fits"))
    kwargs: dict[str, Any] = {"overwrite": True}
    if ns.memory_budget:
        kwargs["memory_budget"] = int(ns.memory_budget)
    if ns.block_size:
        kwargs["block_size"] = int(ns.block_size)
    if ns.first_pass_only:
        kwargs["two_pass_coverage_renorm"] = False
        kwargs["patchwork_suppressor_enabled"] = False
    opts = Phase5Options(**kwargs)
    out = Path(ns.out_path)
    if out.exists():
        shutil.rmtree(out)
    sampler = RssSampler()
    sampler.start()
    prof = None
    if ns.profile:
        import cProfile
        prof = cProfile.Profile()
        prof.enable()
    t0 = time.perf_counter()
    summary = run_pipeline(tiles, out, opts, workers=ns.workers or None)
    wall = time.perf_counter() - t0
    trace = sampler.stop()
    peak, ru_peak = peak_rss_bytes(), maxrss_bytes()     # before anything below allocates
    profile_rows = None
    if prof is not None:
        prof.disable()
        profile_rows = profile_summary(prof, ns.profile)
    import numpy as np
    import zarr
    g = zarr.open_group(str(out), mode="r")
    coverage = g["coverage"]
    rows = max(1, (1 << 22) // max(1, coverage.shape[1]))        # a few MiB at a time
    covered = sum(int(np.count_nonzero(coverage[r:r + rows] > 0)) for r in range(0, coverage.shape[0], rows))
    header_text = g.attrs["output_wcs_header"]
    if ns.header_out:
        Path(ns.header_out).write_text(header_text)
    arrays = {name: int(g[name].nbytes) for name in ("mosaic", "coverage", "alpha")}
    return {"side": "ours", "wall_s": wall, "peak_rss": peak, "ru_maxrss": ru_peak,
            "baseline_rss": baseline,
            "psutil_peak_rss": summary.peak_rss_bytes, "shape_hw": list(summary.shape_hw),
            "window": list(summary.window), "stages": [[n, s] for n, s in summary.stages],
            "block_size": summary.block_size, "workers": summary.workers,
            "output_array_bytes": arrays, "valid_fraction": summary.valid_fraction,
            "stage_peak_rss": stage_peaks(trace, t0, summary.stages),
            "covered_pixels": covered, "profile": profile_rows,
            "summary": summary.format(), "package": str(Path(zemosaic_ooc.__file__).parent)}


def profile_summary(prof: Any, top: int) -> list[list[Any]]:
    """The ``top`` functions by own time: [name, own s, cumulative s, calls], zemosaic_ooc's first.

    cProfile sees the thread that started it; the profiled run therefore uses one
    worker, so every block task runs in that thread (zarr's own I/O thread is not seen:
    its time shows as lock waits).
    """
    import pstats
    stats = pstats.Stats(prof).stats
    rows = []
    for (filename, line, func), (_, calls, own, cumulative, _) in stats.items():
        where = filename
        if "zemosaic_ooc" in filename:
            where = "zemosaic_ooc" + filename.split("zemosaic_ooc", 1)[1]
        elif "site-packages/" in filename:
            where = filename.split("site-packages/", 1)[1]
        rows.append([f"{where}:{line}({func})", own, cumulative, calls])
    rows.sort(key=lambda r: -r[1])
    ours = [r for r in rows if r[0].startswith("zemosaic_ooc")][:top]
    return [["all", *r] for r in rows[:top]] + [["zemosaic_ooc", *r] for r in ours]


def worker_anchor(ns: argparse.Namespace) -> dict[str, Any]:
    import warnings

    import numpy as np
    from astropy.io import fits
    from astropy.wcs import WCS, FITSFixedWarning
    from reproject import reproject_interp
    from reproject.mosaicking import reproject_and_coadd
    baseline = peak_rss_bytes()
    warnings.simplefilter("ignore", FITSFixedWarning)
    header = fits.Header.fromstring(Path(ns.header).read_text())
    out_wcs = WCS(header, naxis=2, relax=True)
    shape_out = (int(ns.shape[0]), int(ns.shape[1]))
    frac = float(ns.crop_percent) / 100.0 if ns.crop else 0.0
    t0 = time.perf_counter()
    datas, wcss, weights = [], [], []
    for path in sorted(Path(ns.tiles_dir).glob("master_tile_*.fits")):
        with fits.open(path, memmap=False) as hdul:
            data = np.asarray(hdul[0].data, dtype=np.float32)
            alpha = np.asarray(hdul["ALPHA"].data)
            wcs = WCS(hdul[0].header, naxis=2, relax=True)
        h, w = data.shape[-2:]
        dh, dw = int(h * frac), int(w * frac)        # zemosaic_ooc.phase5.mapping.crop_margins
        if frac > 1e-5 and 2 * dh < h and 2 * dw < w and (dh or dw):
            data = data[:, dh:h - dh, dw:w - dw]
            alpha = alpha[dh:h - dh, dw:w - dw]
            wcs = wcs[dh:h - dh, dw:w - dw]
        datas.append(data)
        wcss.append(wcs)
        weights.append(alpha.astype(np.float64) / 255.0)
    mosaic = np.zeros(shape_out + (3,), dtype=np.float32)
    coverage = None
    per_channel = []
    for c in range(3):
        tc = time.perf_counter()
        arr, foot = reproject_and_coadd(
            [(d[c], w_) for d, w_ in zip(datas, wcss)], out_wcs, shape_out=shape_out,
            input_weights=weights, reproject_function=reproject_interp,
            combine_function="mean", match_background=True)
        mosaic[..., c] = arr
        if coverage is None:
            coverage = foot.astype(np.float32)
        del arr, foot
        per_channel.append(time.perf_counter() - tc)
    wall = time.perf_counter() - t0
    return {"side": "anchor", "wall_s": wall, "peak_rss": peak_rss_bytes(), "ru_maxrss": maxrss_bytes(),
            "baseline_rss": baseline,
            "shape_hw": list(shape_out), "per_channel_s": per_channel,
            "stages": [["read", wall - sum(per_channel)]] +
                      [[f"coadd ch{c}", s] for c, s in enumerate(per_channel)]}


# --------------------------------------------------------------------------- driver

def bench_layout(nx: int, ny: int, ns: argparse.Namespace, root: Path,
                 tile_size: int | None = None) -> dict[str, Any]:
    tile_size = tile_size or ns.tile_size
    tile_hw = (tile_size, tile_size)
    tdir = root / f"tiles_{nx}x{ny}_{tile_size}_o{ns.overlap:g}_s{ns.seed}"
    t0 = time.perf_counter()
    run_child(["--worker", "generate", "--tiles-dir", str(tdir), "--tiles", f"{nx}x{ny}",
               "--tile-size", str(tile_size), "--overlap", str(ns.overlap),
               "--seed", str(ns.seed)])
    gen_s = time.perf_counter() - t0
    out_zarr = root / f"out_{nx}x{ny}_{tile_size}.zarr"
    header = root / f"grid_{nx}x{ny}_{tile_size}.hdr"
    ours_runs, anchor_runs = [], []
    for r in range(ns.repeat):
        cargs = ["--worker", "ours", "--tiles-dir", str(tdir), "--out-path", str(out_zarr),
                 "--header-out", str(header)]
        if ns.memory_budget:
            cargs += ["--memory-budget", str(ns.memory_budget)]
        if ns.block_size:
            cargs += ["--block-size", str(ns.block_size)]
        if ns.workers:
            cargs += ["--workers", str(ns.workers)]
        if ns.first_pass_only:
            cargs.append("--first-pass-only")
        ours = run_child(cargs)
        ours_runs.append(ours)
        print(f"  [{nx}x{ny}] run {r + 1}/{ns.repeat} zemosaic_ooc {ours['wall_s']:.2f} s, "
              f"peak RSS {ours['peak_rss'] / MiB:.0f} MiB", flush=True)
        if not ns.keep:
            shutil.rmtree(out_zarr, ignore_errors=True)
        if ns.no_anchor:
            continue
        h, w = ours["shape_hw"]
        aargs = ["--worker", "anchor", "--tiles-dir", str(tdir), "--header", str(header),
                 "--shape", str(h), str(w), "--crop-percent", str(ns.crop_percent)]
        if ns.no_crop:
            aargs.append("--no-crop")
        anchor = run_child(aargs)
        anchor_runs.append(anchor)
        print(f"  [{nx}x{ny}] run {r + 1}/{ns.repeat} reproject_and_coadd {anchor['wall_s']:.2f} s, "
              f"peak RSS {anchor['peak_rss'] / MiB:.0f} MiB", flush=True)
    profile = None
    if ns.profile:
        # an extra run, not timed: one worker so that cProfile sees every block task
        pargs = list(cargs)
        if "--workers" in pargs:
            at = pargs.index("--workers")
            del pargs[at:at + 2]
        profile = run_child(pargs + ["--workers", "1", "--profile", str(ns.profile)])
        if not ns.keep:
            shutil.rmtree(out_zarr, ignore_errors=True)
    return {"layout": f"{nx}x{ny}", "tile_hw": list(tile_hw), "n_tiles": nx * ny,
            "tiles_dir": str(tdir), "generate_s": gen_s, "ours": ours_runs, "anchor": anchor_runs,
            "profile": None if profile is None else {"wall_s": profile["wall_s"],
                                                     "rows": profile["profile"]}}


def best(runs: list[dict[str, Any]]) -> dict[str, Any] | None:
    return min(runs, key=lambda r: r["wall_s"]) if runs else None


def format_stage_peaks(peaks: list[list[Any]]) -> str:
    return ", ".join(f"{n} {'-' if v is None else f'{v / MiB:.0f}'}" for n, v in peaks)


def format_table(results: list[dict[str, Any]]) -> str:
    head = ("| layout | tile px | output Mpix | covered Mpix | zemosaic_ooc s | anchor s | anchor/ours | "
            "ours Mpix/s | anchor Mpix/s | ours s / covered Mpix | ours peak RSS MiB | anchor peak RSS MiB |")
    # peak RSS = VmHWM of each child process (see maxrss_bytes)
    lines = ["times: best of the runs (run_pipeline / the three reproject_and_coadd calls, tiles read "
             "included); peak RSS: VmHWM of each child, worst of the runs", "",
             head, "|" + "---|" * 12]
    for res in results:
        o, a = best(res["ours"]), best(res["anchor"])
        h, w = o["shape_hw"]
        mpix = h * w / 1e6
        ratio = f"{a['wall_s'] / o['wall_s']:.2f}" if a else "-"
        a_s = f"{a['wall_s']:.2f}" if a else "-"
        a_mps = f"{mpix / a['wall_s']:.2f}" if a else "-"
        a_rss = f"{max(r['peak_rss'] for r in res['anchor']) / MiB:.0f}" if a else "-"
        o_rss = max(r["peak_rss"] for r in res["ours"]) / MiB
        covered = o.get("covered_pixels", 0) / 1e6
        per_mpx = f"{o['wall_s'] / covered:.3f}" if covered else "-"
        lines.append(f"| {res['layout']} | {res['tile_hw'][0]}x{res['tile_hw'][1]} | {mpix:.2f} "
                     f"({h}x{w}) | {covered:.2f} | {o['wall_s']:.2f} | {a_s} | {ratio} | "
                     f"{mpix / o['wall_s']:.2f} | {a_mps} | {per_mpx} | {o_rss:.0f} | {a_rss} |")
    lines.append("")
    lines += linearity_lines(results)
    lines.append("Baseline RSS after imports (child): "
                 + "; ".join(f"{res['layout']}: ours {best(res['ours'])['baseline_rss'] / MiB:.0f} MiB"
                             + (f", anchor {best(res['anchor'])['baseline_rss'] / MiB:.0f} MiB"
                                if res["anchor"] else "") for res in results))
    lines.append("Cross-check, ru_maxrss of the children (MiB): "
                 + "; ".join(f"{res['layout']}: ours {max(r['ru_maxrss'] for r in res['ours']) / MiB:.0f}"
                             + (f", anchor {max(r['ru_maxrss'] for r in res['anchor']) / MiB:.0f}"
                                if res["anchor"] else "") for res in results))
    lines.append("")
    lines.append("Stages (best run):")
    for res in results:
        o, a = best(res["ours"]), best(res["anchor"])
        lines.append(f"  {res['layout']} zemosaic_ooc (block {o['block_size']} px, {o['workers']} "
                     f"worker(s)): " + ", ".join(f"{n} {s:.2f}s" for n, s in o["stages"]))
        lines.append(f"  {res['layout']} zemosaic_ooc sampled peak RSS per stage (MiB): "
                     + format_stage_peaks(o.get("stage_peak_rss", [])))
        if a:
            lines.append(f"  {res['layout']} anchor: " + ", ".join(f"{n} {s:.2f}s" for n, s in a["stages"]))
    for res in results:
        prof = res.get("profile")
        if not prof or not prof.get("rows"):
            continue
        lines.append("")
        lines.append(f"CPU profile, {res['layout']} x {res['tile_hw'][0]} px, one worker "
                     f"({prof['wall_s']:.2f} s under cProfile): top functions by own time")
        for scope, title in (("all", "all code"), ("zemosaic_ooc", "zemosaic_ooc's own functions")):
            lines.append(f"  {title}:")
            for _, name, own, cumulative, calls in [r for r in prof["rows"] if r[0] == scope]:
                lines.append(f"    {own:7.3f} s own {cumulative:7.3f} s cum {calls:7d} calls  {name}")
    return "\n".join(lines)


def linearity_lines(results: list[dict[str, Any]]) -> list[str]:
    """Issue 8: s per covered Mpix of each layout against their mean, per tile size."""
    lines = []
    for size in sorted({res["tile_hw"][0] for res in results}):
        rates = [(res["layout"], best(res["ours"])["wall_s"] / (best(res["ours"])["covered_pixels"] / 1e6))
                 for res in results if res["tile_hw"][0] == size and best(res["ours"]).get("covered_pixels")]
        if len(rates) < 2:
            continue
        mean = sum(r for _, r in rates) / len(rates)
        spread = ", ".join(f"{name} {100 * (r / mean - 1):+.0f} %" for name, r in rates)
        worst = max(abs(r / mean - 1) for _, r in rates)
        lines.append(f"Linearity, {size} px tiles: mean {mean:.3f} s per covered Mpix; {spread} "
                     f"(largest deviation {100 * worst:.0f} %, issue 8 asks within 20 %)")
    return lines


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tiles", type=parse_layout, default=(2, 2), help="layout NXxNY (default 2x2)")
    p.add_argument("--sizes", default=None,
                   help="comma-separated list of layouts, e.g. 2x2,3x3 (overrides --tiles)")
    p.add_argument("--tile-size", type=int, default=1024, help="tile side in px (default 1024)")
    p.add_argument("--tile-sizes", default=None,
                   help="comma-separated tile sides, e.g. 1024,2048: every layout at each (overrides --tile-size)")
    p.add_argument("--overlap", type=float, default=0.3, help="tile overlap fraction (default 0.3)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--repeat", type=int, default=1, help="runs per side; the best wall time is shown")
    p.add_argument("--out", default=None, help="work folder (default: <tmp>/zemosaic_ooc_bench)")
    p.add_argument("--first-pass-only", action="store_true",
                   help="two_pass_coverage_renorm and patchwork_suppressor_enabled off")
    p.add_argument("--memory-budget", default=None,
                   help="zemosaic_ooc memory budget (e.g. 2GiB; default: the option's default)")
    p.add_argument("--block-size", type=int, default=None)
    p.add_argument("--workers", type=int, default=None, help="zemosaic_ooc workers (default: its own)")
    p.add_argument("--crop-percent", type=float, default=3.0,
                   help="master-tile crop of the anchor (ZeMosaic's default 3 %%, as ours)")
    p.add_argument("--no-crop", action="store_true", help="anchor without the master-tile crop")
    p.add_argument("--no-anchor", action="store_true", help="only run zemosaic_ooc")
    p.add_argument("--profile", type=int, nargs="?", const=10, default=0, metavar="N",
                   help="one extra, untimed run of ours with one worker under cProfile: print the "
                        "top N functions by own time (default 10)")
    p.add_argument("--keep", action="store_true", help="keep the output stores")
    p.add_argument("--json", default=None, help="also write the results to this JSON file")
    # worker mode (internal)
    p.add_argument("--worker", choices=("ours", "anchor", "generate"), help=argparse.SUPPRESS)
    p.add_argument("--tiles-dir", help=argparse.SUPPRESS)
    p.add_argument("--out-path", help=argparse.SUPPRESS)
    p.add_argument("--header-out", help=argparse.SUPPRESS)
    p.add_argument("--header", help=argparse.SUPPRESS)
    p.add_argument("--shape", nargs=2, type=int, help=argparse.SUPPRESS)
    return p


def main(argv: list[str] | None = None) -> int:
    ns = build_parser().parse_args(argv)
    ns.crop = not ns.no_crop
    if ns.memory_budget:
        from zemosaic_ooc.options import parse_size
        ns.memory_budget = parse_size(ns.memory_budget)
    if ns.worker:
        if ns.worker == "generate":      # tiles are made in a child: the driver stays lean
            nx, ny = ns.tiles
            paths = make_tiles(Path(ns.tiles_dir), nx, ny, (ns.tile_size, ns.tile_size),
                               ns.overlap, ns.seed)
            result = {"side": "generate", "tiles": [str(p) for p in paths]}
        else:
            result = worker_ours(ns) if ns.worker == "ours" else worker_anchor(ns)
        print("@@RESULT " + json.dumps(result), flush=True)
        return 0

    layouts = [parse_layout(s) for s in ns.sizes.split(",")] if ns.sizes else [ns.tiles]
    root = Path(ns.out) if ns.out else Path(tempfile.gettempdir()) / "zemosaic_ooc_bench"
    root.mkdir(parents=True, exist_ok=True)
    info = machine_info()
    print(f"machine: {info['nproc']} CPU(s), {info['ram_gib']} GiB RAM, {info['cpu']}; "
          f"Python {info['python']}; " + ", ".join(f"{k} {v}" for k, v in versions().items()))
    print(f"tile side {ns.tile_sizes or ns.tile_size} px, overlap {ns.overlap}, first-pass-only={ns.first_pass_only}, "
          f"repeat {ns.repeat}, work folder {root}", flush=True)
    results = []
    sizes = [int(v) for v in ns.tile_sizes.split(",")] if ns.tile_sizes else [ns.tile_size]
    for size in sizes:
        for nx, ny in layouts:
            results.append(bench_layout(nx, ny, ns, root, size))
    print()
    print(format_table(results))
    if ns.json:
        for res in results:
            for run in res["ours"] + res["anchor"]:
                run.pop("log", None)
        Path(ns.json).write_text(json.dumps({"machine": info, "versions": versions(),
                                             "args": sys.argv[1:], "results": results}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
