"""Where a run holds the GIL: a summary of a ``py-spy record --gil --format raw`` profile.

The block stages run on threads, and numpy, the checksums and the file I/O release the GIL,
so on a many-core machine a run cannot be faster than the time some thread holds the GIL
(Python code, and C code that keeps it).  That is the serial floor of the CPU path with
many workers, and of the GPU path whatever its kernels cost.  Measure it with py-spy
(``pip install -e ".[profile]"``), on any machine::

    py-spy record --gil -r 100 -f raw -o gil.txt -- \\
        python tools/gpu_diag.py TILES OUT.zarr --gpu emulate --workers 2 --dump-every 1000
    python tools/gil_report.py gil.txt --rate 100

``--gpu emulate`` runs the device code path with numpy standing in for cupy (the GPU path's
host work; its kernels are then numpy's, so read the kernels' lines as an upper bound).
Prints the GIL-held seconds in all, by place (the innermost project frame, or the zarr /
thread-pool machinery where no project frame is on the stack) and by pipeline step.
"""
from __future__ import annotations

import argparse
import collections
import re
from pathlib import Path

#: pipeline functions that name the step a stack belongs to (the innermost one wins)
STEPS = [("ingest_tiles", "ingest"), ("_stage_tile", "ingest"), ("compute_output_grid", "plan"),
         ("nan_threshold", "plan"), ("calibrate", "calibrate"), ("union_bbox", "union bboxes"),
         ("background_offsets", "background"), ("block_pair_offsets", "background"),
         ("pass1_task", "pass 1"), ("pass1_commit", "pass 1"), ("finish_task", "finish"),
         ("blur_task", "coverage blur"), ("tile_gain", "two-pass gains"), ("pass2_task", "pass 2"),
         ("pass2_commit", "pass 2"), ("luminance_values", "P5"), ("merge_task", "merge"),
         ("_patchwork", "patchwork"), ("_exact_percentiles", "percentiles")]
_STEP_OF = dict(STEPS)
_SITE = re.compile(r"\(/[^()]*?/(?:site|dist)-packages/|\(/[^()]*?/lib/python3\.\d+/")


def _short(frame: str) -> str:
    return _SITE.sub("(", re.sub(r"\(/.*?/zemosaic_ooc/", "(zemosaic_ooc/", frame))


def summarize(path: Path, rate: float) -> tuple[float, collections.Counter, collections.Counter]:
    """(GIL-held seconds, seconds by place, seconds by step) of a py-spy raw profile."""
    places: collections.Counter = collections.Counter()
    steps: collections.Counter = collections.Counter()
    total = 0
    for line in path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack:
            continue
        n = int(count)
        total += n
        frames = stack.split(";")
        ours = [f for f in frames if "zemosaic_ooc" in f]
        if ours:
            place = _short(ours[-1])
        elif any("run_forever" in f for f in frames):
            place = "zarr's event loop (asyncio)"
        elif any(f.startswith("_WorkItem.run") for f in frames):
            k = max(i for i, f in enumerate(frames) if f.startswith("_WorkItem.run"))
            place = "thread pool: " + (_short(frames[k + 1]) if k + 1 < len(frames) else "(idle)")
        elif any("importlib" in f for f in frames):
            place = "imports"
        else:
            place = _short(frames[-1]) if frames else "?"
        places[place] += n
        step = "other"
        for frame in frames:
            # a frame reads "qual.name (file:line)"; a nested function's qualified name names
            # its enclosing one ("block_pair_offsets.<locals>.walk"): any part may name the step
            for part in frame.partition(" ")[0].split("."):
                step = _STEP_OF.get(part, step)
        steps[step] += n
    scale = 1.0 / rate
    return total * scale, collections.Counter({k: v * scale for k, v in places.items()}), \
        collections.Counter({k: v * scale for k, v in steps.items()})


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("profile", type=Path, help="py-spy record --gil --format raw output")
    parser.add_argument("--rate", type=float, default=100.0, help="py-spy's sampling rate (-r)")
    parser.add_argument("--top", type=int, default=25)
    ns = parser.parse_args(argv)
    total, places, steps = summarize(ns.profile, ns.rate)
    print(f"GIL held: {total:.2f} s")
    print("by step:")
    for name, seconds in steps.most_common():
        print(f"  {seconds:7.2f}  {name}")
    print("by place:")
    for name, seconds in places.most_common(ns.top):
        print(f"  {seconds:7.2f}  {name}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
