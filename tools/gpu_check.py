"""CPU vs GPU parity and speed on a machine with a CUDA GPU (issue 4).

    python tools/gpu_check.py [--fixtures DIR] [--synthetic 4x4 --tile-size 2048]
                              [--pool-limit 256MiB] [--tolerance 1e-4]

For each tile set (every golden fixture, then a synthetic set) it runs the full default
pipeline three ways in one process: CPU only, GPU (block stages on the CuPy backend through
the OOM guard), and GPU with a small memory-pool limit that forces real out-of-memory replays.
It prints a parity table (per channel max |Δ| and RMS over P99 − P1, mask agreement, replays)
and a speed table (CPU, GPU, their ratio, and the reproject anchor on the first pass when
``--anchor``).  Exits 1 when parity fails (max |Δ| > tolerance × (P99 − P1) on any channel,
or masks differ), 2 when no GPU is usable.

Status: written without a GPU (this project's sessions are lent one only sometimes); the
CuPy path it exercises has not been validated yet.
"""
from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from zemosaic_ooc.backend import cupy_available, cupy_backend  # noqa: E402
from zemosaic_ooc.options import Phase5Options, parse_size  # noqa: E402
from zemosaic_ooc.phase5.pipeline import run_pipeline  # noqa: E402


def _window(path: Path):
    import zarr

    group = zarr.open_group(str(path), mode="r")
    y0, y1, x0, x1 = group.attrs["window"]
    return group["mosaic"][y0:y1, x0:x1, :]


def parity(cpu: np.ndarray, gpu: np.ndarray) -> dict:
    valid_cpu = np.isfinite(cpu).all(-1)
    valid_gpu = np.isfinite(gpu).all(-1)
    both = valid_cpu & valid_gpu
    out = {"mask_agreement": float(np.mean(valid_cpu == valid_gpu)), "max": [], "rms": []}
    for c in range(3):
        a, b = cpu[..., c][both].astype(np.float64), gpu[..., c][both].astype(np.float64)
        p1, p99 = np.percentile(a, [1, 99])
        span = max(p99 - p1, 1e-30)
        out["max"].append(float(np.max(np.abs(a - b), initial=0.0) / span))
        out["rms"].append(float(np.sqrt(np.mean((a - b) ** 2)) / span) if a.size else 0.0)
    return out


def run_set(name: str, tiles: list[Path], work: Path, pool_limit: int, tolerance: float) -> bool:
    opts = Phase5Options(gpu="off")
    t0 = time.perf_counter()
    run_pipeline(tiles, work / f"{name}_cpu.zarr", opts)
    cpu_s = time.perf_counter() - t0
    device = cupy_backend()
    t0 = time.perf_counter()
    gpu_summary = run_pipeline(tiles, work / f"{name}_gpu.zarr", opts, device=device)
    gpu_s = time.perf_counter() - t0
    small = cupy_backend(budget_bytes=pool_limit)
    oom_summary = run_pipeline(tiles, work / f"{name}_oom.zarr", opts, device=small)
    cpu = _window(work / f"{name}_cpu.zarr")
    ok = True
    for label, path, summary in (("gpu", f"{name}_gpu.zarr", gpu_summary),
                                 ("gpu small pool", f"{name}_oom.zarr", oom_summary)):
        result = parity(cpu, _window(work / path))
        passed = result["mask_agreement"] == 1.0 and max(result["max"]) <= tolerance
        ok &= passed
        print(f"{name:28s} {label:15s} max/(P99-P1) {['%.2e' % v for v in result['max']]} "
              f"rms {['%.2e' % v for v in result['rms']]} masks {result['mask_agreement']:.6f} "
              f"replays {summary.device.get('replays')} oom {summary.device.get('oom_strikes')} "
              f"{'PASS' if passed else 'FAIL'}")
    print(f"{name:28s} speed: CPU {cpu_s:.1f} s, GPU {gpu_s:.1f} s, CPU/GPU {cpu_s / gpu_s:.2f}x")
    return ok


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description="CPU vs GPU parity and speed (needs a CUDA GPU)")
    parser.add_argument("--fixtures", default=str(Path(__file__).resolve().parents[2] / "shared" / "fixtures"))
    parser.add_argument("--synthetic", default="4x4", help="synthetic layout NXxNY ('' to skip)")
    parser.add_argument("--tile-size", type=int, default=2048)
    parser.add_argument("--pool-limit", default="256MiB", help="memory-pool limit of the OOM run")
    parser.add_argument("--tolerance", type=float, default=1e-4)
    args = parser.parse_args(argv)
    if not cupy_available():
        print("gpu_check: no usable CUDA device (cupy missing or no device answers)", file=sys.stderr)
        return 2
    work = Path(tempfile.mkdtemp(prefix="zemosaic_ooc_gpu_check_"))
    ok = True
    try:
        for folder in sorted(Path(args.fixtures).glob("*/ref.json")):
            tiles = sorted(folder.parent.glob("master_tile_*.fits"))
            ok &= run_set(folder.parent.name, tiles, work, parse_size(args.pool_limit), args.tolerance)
        if args.synthetic:
            from zemosaic_ooc.demo import make_demo_tiles

            nx, ny = (int(v) for v in args.synthetic.lower().split("x"))
            tiles = make_demo_tiles(work / "synthetic", nx=nx, ny=ny,
                                    tile_hw=(args.tile_size, args.tile_size), overlap=0.15, seed=2)
            ok &= run_set(f"synthetic_{args.synthetic}", tiles, work, parse_size(args.pool_limit),
                          args.tolerance)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print("parity", "PASS" if ok else "FAIL")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
