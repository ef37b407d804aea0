"""One timed pipeline run with stage progress and periodic thread dumps (for GPU debugging).

    python tools/gpu_diag.py TILES_DIR OUT.zarr [--gpu on|off] [--workers N] [--first-pass]
                             [--block-size N] [--dump-every S] [--compare CPU.zarr]
                             [--sample-stacks MS] [--count-io]

Prints every stage start / finish and every block with the time since start, and dumps
every thread's stack each ``--dump-every`` seconds (faulthandler), so a slow or stuck
run shows where it is.  ``--compare`` prints the parity against another store.
``--sample-stacks MS`` samples every thread's stack each MS milliseconds and prints, per
stage, where the threads spent their time (the innermost project frame and the innermost
frame, e.g. a Zarr write under pass1_task): a poor man's sampling profiler, as no profiler
is installed on the device machines.  At the end it prints, per segment of the run (a stage,
or the "after <stage>" stretch before the next one), the wall time and the process's CPU time
(every thread's); ``--count-io`` adds the store's bytes read and written per segment and the
thread CPU time they took.
"""
from __future__ import annotations

import argparse
import faulthandler
import math
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from zemosaic_ooc.options import Phase5Options  # noqa: E402
from zemosaic_ooc.phase5.pipeline import run_pipeline  # noqa: E402

T0 = time.perf_counter()


class StackSampler:
    """Samples ``sys._current_frames()`` every ``interval`` s from a daemon thread and counts,
    per current stage, (innermost project frame, innermost frame) of every other thread."""

    def __init__(self, interval: float) -> None:
        import collections
        import threading

        self.interval = interval
        self.stage = "start"
        self.counts: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
        self.samples: collections.Counter = collections.Counter()
        self.wall: collections.Counter = collections.Counter()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    @staticmethod
    def _where(frame) -> str:
        inner = f"{Path(frame.f_code.co_filename).name}:{frame.f_code.co_name}"
        ours = None
        while frame is not None:
            name = frame.f_code.co_filename
            if "zemosaic_ooc" in name and "concurrent" not in name:
                ours = f"{Path(name).name}:{frame.f_code.co_name}:{frame.f_lineno}"
                break
            frame = frame.f_back
        return f"{ours or '-'} > {inner}"

    def _run(self) -> None:
        import threading

        me = threading.get_ident()
        last = time.perf_counter()
        while not self._stop.wait(self.interval):
            stage = self.stage
            now = time.perf_counter()
            self.wall[stage] += now - last       # the real period (the GIL stretches the interval)
            last = now
            self.samples[stage] += 1
            for ident, frame in sys._current_frames().items():
                if ident == me:
                    continue
                where = self._where(frame)
                if where.startswith("- > ") and where.endswith(("_bootstrap", "thread.py:_worker",
                                                                 "selectors.py:select", "threading.py:wait")):
                    continue                      # an idle pool or event-loop thread
                self.counts[stage][where] += 1

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()

    def report(self, top: int = 14) -> None:
        import collections

        kinds: collections.Counter = collections.Counter()
        for stage, counter in self.counts.items():
            n = max(1, self.samples[stage])
            period = self.wall[stage] / n
            print(f"STACKS {stage}: {n} samples over {self.wall[stage]:.2f} s; thread-seconds by place:")
            for where, count in counter.most_common(top):
                print(f"    {count * period:7.2f}  {where}")
            for where, count in counter.items():
                kinds[work_kind(where)] += count * period
        print("WORK KIND (thread-seconds; with --gpu emulate, 'kernels' is what a device would run, "
              "the rest is host work a GPU run keeps):")
        for kind, seconds in kinds.most_common():
            print(f"    {seconds:7.2f}  {kind}")


_HOST_FILES = {"chunks.py": "store I/O", "codecs.py": "store I/O", "files.py": "store I/O",
               "mosaic.py": "store I/O", "journal.py": "store I/O", "tiles.py": "ingest, tile store, plan",
               "plan.py": "ingest, tile store, plan", "stats.py": "percentile selection",
               "calibrate.py": "calibration, grid", "grid.py": "calibration, grid",
               "corrected.py": "calibration, grid"}


def work_kind(where: str) -> str:
    """What a sampled place ("project frame > innermost frame") is: a waiting thread, one of the
    kinds of host work, or 'kernels' (per-pixel work: on the device in a GPU run)."""
    ours, _, inner = where.partition(" > ")
    if inner.endswith("threading.py:wait"):
        return "waiting"
    name = ours.split(":")[0]
    if name == "mapping.py" and ("_pixel_to_pixel" in ours or "output_to_tile" in ours or "wcs" in inner.lower()):
        return "WCS node transforms (astropy)"
    if name == "-":
        return "no project frame"
    return _HOST_FILES.get(name, "kernels")


class StoreIoCounter:
    """Counts, per segment of the run, the bytes the project's arrays give and take through
    store/chunks.py (regions read, chunk files read, whole-chunk regions written) and the
    thread CPU seconds spent in those reads and writes.  It wraps the module's functions
    for the run (a diagnostic: the numbers, not the speed, are what it is for)."""

    def __init__(self, progress: "TimedProgress") -> None:
        import collections

        import zemosaic_ooc.store.chunks as chunks

        self.rows: dict[str, list[float]] = collections.defaultdict(lambda: [0.0] * 5)
        read_region, read_chunk, write_region = chunks.read_region, chunks.read_chunk, chunks.write_region

        def counted_read_region(layout, bounds):
            started = time.thread_time()
            out = read_region(layout, bounds)
            row = self.rows[progress.segment]
            row[0] += out.nbytes
            row[3] += time.thread_time() - started
            return out

        def counted_read_chunk(layout, coords):
            out = read_chunk(layout, coords)
            self.rows[progress.segment][1] += out.nbytes
            return out

        def counted_write_region(layout, bounds, value):
            started = time.thread_time()
            written = write_region(layout, bounds, value)
            if written:
                row = self.rows[progress.segment]
                row[2] += math.prod(hi - lo for lo, hi in bounds) * layout.dtype.itemsize
                row[4] += time.thread_time() - started
            return written

        chunks.read_region, chunks.read_chunk = counted_read_region, counted_read_chunk
        chunks.write_region = counted_write_region

    def report(self) -> None:
        print("STORE I/O (GB of regions read, GB of chunk files read, GB written; thread CPU s "
              "reading, writing):")
        total = [0.0] * 5
        for segment, row in list(self.rows.items()) + [("total", None)]:
            if row is None:
                row = total
            else:
                total = [a + b for a, b in zip(total, row)]
            print(f"    {segment:32s} {row[0] / 1e9:7.2f} {row[1] / 1e9:7.2f} {row[2] / 1e9:7.2f} "
                  f"{row[3]:7.2f} {row[4]:7.2f}")


class TimedProgress:
    """Prints each stage's start, blocks and finish; adds up, per segment (a stage, or the
    "after <stage>" stretch up to the next start), its wall time and the process's CPU time
    (every thread's), so each segment's cores kept busy on average are known."""

    def __init__(self, sampler: "StackSampler | None" = None) -> None:
        self.done: dict[str, int] = {}
        self.sampler = sampler
        self.segment = "start"
        self._mark = (time.perf_counter(), time.process_time())
        self.segments: dict[str, list[float]] = {}

    def _enter(self, segment: str) -> None:
        now = (time.perf_counter(), time.process_time())
        wall_cpu = self.segments.setdefault(self.segment, [0.0, 0.0])
        wall_cpu[0] += now[0] - self._mark[0]
        wall_cpu[1] += now[1] - self._mark[1]
        self.segment, self._mark = segment, now

    def report(self) -> None:
        self._enter("end")
        print("SEGMENTS (wall s, process CPU s, cores busy on average):")
        for segment, (wall, cpu) in self.segments.items():
            print(f"    {segment:32s} {wall:8.2f} {cpu:8.2f} {cpu / max(wall, 1e-9):6.2f}")

    def _print(self, text: str) -> None:
        print(f"[{time.perf_counter() - T0:7.2f} s] {text}", flush=True)

    def start(self, stage: str, total: int, unit: str = "block") -> None:
        self.done[stage] = 0
        self._enter(stage)
        if self.sampler is not None:
            self.sampler.stage = stage
        self._print(f"{stage}: start ({total} {unit})")

    def advance(self, stage: str, n: int = 1) -> None:
        self.done[stage] = self.done.get(stage, 0) + n
        if n:
            self._print(f"{stage}: {self.done[stage]} done")

    def finish(self, stage: str) -> None:
        self._enter(f"after {stage}")
        if self.sampler is not None:
            self.sampler.stage = f"after {stage}"
        self._print(f"{stage}: finished")

    def message(self, text: str, level: str = "info") -> None:
        self._print(f"{level}: {text}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser()
    p.add_argument("tiles_dir")
    p.add_argument("out")
    p.add_argument("--gpu", default="on",
                   help="on | off | auto, or emulate: the device code path with numpy standing in for "
                        "cupy and a device's whole-block chunks (its host work and GIL time, on any machine)")
    p.add_argument("--workers", type=int, default=None)
    p.add_argument("--first-pass", action="store_true")
    p.add_argument("--block-size", type=int, default=None)
    p.add_argument("--dump-every", type=float, default=30.0)
    p.add_argument("--compare", default=None)
    p.add_argument("--sample-stacks", type=float, default=0.0, help="sampling interval in ms (0: off)")
    p.add_argument("--memory-budget", default=None, help="host memory budget (e.g. 8GiB; default the project's)")
    p.add_argument("--device-budget", default="8GiB",
                   help="with --gpu emulate: the device budget the stand-in plans with (default 8GiB; "
                        "an H100's default is 0.6 of its free memory, about 47 GiB)")
    p.add_argument("--count-io", action="store_true",
                   help="count the store's bytes read and written, and their CPU time, per segment")
    ns = p.parse_args(argv)
    sampler = StackSampler(ns.sample_stacks / 1000.0) if ns.sample_stacks > 0 else None
    faulthandler.dump_traceback_later(ns.dump_every, repeat=True)
    kwargs = {"gpu": ns.gpu, "overwrite": True}
    if ns.first_pass:
        kwargs.update(two_pass_coverage_renorm=False, patchwork_suppressor_enabled=False)
    if ns.block_size:
        kwargs["block_size"] = ns.block_size
    if ns.memory_budget:
        from zemosaic_ooc.options import parse_size

        kwargs["memory_budget"] = parse_size(ns.memory_budget)
    tiles = sorted(Path(ns.tiles_dir).glob("master_tile_*.fits"))
    t0 = time.perf_counter()
    if sampler is not None:
        sampler.start()
    device = None
    if ns.gpu == "emulate":
        from zemosaic_ooc.backend import GPU_CHUNK_PIXELS, numpy_as_device_backend
        from zemosaic_ooc.options import parse_size

        kwargs["gpu"] = "off"
        device = numpy_as_device_backend(parse_size(ns.device_budget))
        device.chunk_pixels = GPU_CHUNK_PIXELS
    progress = TimedProgress(sampler)
    io_counter = StoreIoCounter(progress) if ns.count_io else None
    summary = run_pipeline(tiles, ns.out, Phase5Options(**kwargs), workers=ns.workers,
                           progress=progress, device=device)
    wall = time.perf_counter() - t0
    progress.report()
    if io_counter is not None:
        io_counter.report()
    if sampler is not None:
        sampler.stop()
        sampler.report()
    faulthandler.cancel_dump_traceback_later()
    print(f"RESULT {ns.out} gpu={ns.gpu} workers={summary.workers} block={summary.block_size} "
          f"wall {wall:.2f} s backend {summary.backend} device {summary.device}")
    print("stages " + ", ".join(f"{n} {s:.2f}" for n, s in summary.stages), flush=True)
    print("block stages " + ", ".join(f"{n} {s:.2f}" for n, s in summary.block_stages), flush=True)
    from gpu_check import zarr_loop_cpu_seconds

    loop_cpu = zarr_loop_cpu_seconds()
    if loop_cpu is not None:
        print(f"zarr event-loop thread CPU {loop_cpu:.2f} s (serial: what zarr reads or writes itself "
              "passes through that thread)", flush=True)
    if ns.compare:
        from gpu_check import _window, parity

        result = parity(_window(Path(ns.compare)), _window(Path(ns.out)))
        print(f"PARITY vs {ns.compare}: {result}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
