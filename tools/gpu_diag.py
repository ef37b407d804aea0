"""One timed pipeline run with stage progress and periodic thread dumps (for GPU debugging).

    python tools/gpu_diag.py TILES_DIR OUT.zarr [--gpu on|off] [--workers N] [--first-pass]
                             [--block-size N] [--dump-every S] [--compare CPU.zarr]

Prints every stage start / finish and every block with the time since start, and dumps
every thread's stack each ``--dump-every`` seconds (faulthandler), so a slow or stuck
run shows where it is.  ``--compare`` prints the parity against another store.
"""
from __future__ import annotations

import argparse
import faulthandler
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from zemosaic_ooc.options import Phase5Options  # noqa: E402
from zemosaic_ooc.phase5.pipeline import run_pipeline  # noqa: E402

T0 = time.perf_counter()


class TimedProgress:
    def __init__(self) -> None:
        self.done: dict[str, int] = {}

    def _print(self, text: str) -> None:
        print(f"[{time.perf_counter() - T0:7.2f} s] {text}", flush=True)

    def start(self, stage: str, total: int, unit: str = "block") -> None:
        self.done[stage] = 0
        self._print(f"{stage}: start ({total} {unit})")

    def advance(self, stage: str, n: int = 1) -> None:
        self.done[stage] = self.done.get(stage, 0) + n
        if n:
            self._print(f"{stage}: {self.done[stage]} done")

    def finish(self, stage: str) -> None:
        self._print(f"{stage}: finished")

    def message(self, text: str, level: str = "info") -> None:
        self._print(f"{level}: {text}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser()
    p.add_argument("tiles_dir")
    p.add_argument("out")
    p.add_argument("--gpu", default="on")
    p.add_argument("--workers", type=int, default=None)
    p.add_argument("--first-pass", action="store_true")
    p.add_argument("--block-size", type=int, default=None)
    p.add_argument("--dump-every", type=float, default=30.0)
    p.add_argument("--compare", default=None)
    ns = p.parse_args(argv)
    faulthandler.dump_traceback_later(ns.dump_every, repeat=True)
    kwargs = {"gpu": ns.gpu, "overwrite": True}
    if ns.first_pass:
        kwargs.update(two_pass_coverage_renorm=False, patchwork_suppressor_enabled=False)
    if ns.block_size:
        kwargs["block_size"] = ns.block_size
    tiles = sorted(Path(ns.tiles_dir).glob("master_tile_*.fits"))
    t0 = time.perf_counter()
    summary = run_pipeline(tiles, ns.out, Phase5Options(**kwargs), workers=ns.workers,
                           progress=TimedProgress())
    wall = time.perf_counter() - t0
    faulthandler.cancel_dump_traceback_later()
    print(f"RESULT {ns.out} gpu={ns.gpu} workers={summary.workers} block={summary.block_size} "
          f"wall {wall:.2f} s backend {summary.backend} device {summary.device}")
    print("stages " + ", ".join(f"{n} {s:.2f}" for n, s in summary.stages), flush=True)
    if ns.compare:
        from gpu_check import _window, parity

        result = parity(_window(Path(ns.compare)), _window(Path(ns.out)))
        print(f"PARITY vs {ns.compare}: {result}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
