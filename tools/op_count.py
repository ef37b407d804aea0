"""How many array operations a device run issues, per stage and per block (numpy standing in).

On a GPU every array operation of a block task is a CuPy call: a kernel launch (or a copy, or
a small reduction whose result comes back) that costs the calling thread some host time
holding the GIL, whatever the kernel's size.  With many worker threads that host time is a
floor under a device run's wall time, so the number of operations per block, and where they
come from, says how much larger blocks or fewer, fused operations would save.

This runs the device code path (numpy standing in for cupy, as ``gpu_diag.py --gpu emulate``)
with the device's arrays wrapped in a numpy subclass that counts every ufunc (``+``, ``*``,
``where`` ...) and every numpy function (``concatenate``, ``nonzero``, ``take`` ...) applied
to them, by stage and by the innermost project function that called it.  An operation whose
inputs are all plain numpy arrays is not counted (an array made by ``xp.zeros`` and filled by
slice assignment, for instance), so the counts are a lower bound.

    python tools/op_count.py TILES_DIR OUT.zarr [--workers 2] [--block-size N] [--first-pass]
"""
from __future__ import annotations

import argparse
import collections
import sys
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

_COUNTS: collections.Counter = collections.Counter()
_LOCK = threading.Lock()
_STAGE = ["start"]


def _caller() -> str:
    """The innermost function of this project on the calling thread's stack."""
    frame = sys._getframe(2)
    while frame is not None:
        name = frame.f_code.co_filename
        if "zemosaic_ooc" in name and "op_count" not in name:
            return f"{frame.f_code.co_name} ({Path(name).parent.name}/{Path(name).name})"
        frame = frame.f_back
    return "(no project frame)"


def _count() -> None:
    key = (_STAGE[0], _caller())
    with _LOCK:
        _COUNTS[key] += 1


class CountingArray(np.ndarray):
    """A numpy array that counts the operations applied to it (see the module docstring)."""

    def __array_ufunc__(self, ufunc: Any, method: str, *inputs: Any, **kwargs: Any) -> Any:
        _count()
        plain = [np.asarray(x) if isinstance(x, CountingArray) else x for x in inputs]
        if "out" in kwargs:
            kwargs["out"] = tuple(np.asarray(x) if isinstance(x, CountingArray) else x for x in kwargs["out"])
        result = getattr(ufunc, method)(*plain, **kwargs)
        return _wrap(result)

    def __array_function__(self, func: Any, types: Any, args: Any, kwargs: Any) -> Any:
        _count()
        return _wrap(func(*_unwrap(args), **_unwrap(kwargs)))     # plain arrays: no second count


def _unwrap(value: Any) -> Any:
    if isinstance(value, CountingArray):
        return np.asarray(value)
    if isinstance(value, (list, tuple)):
        return type(value)(_unwrap(v) for v in value)
    if isinstance(value, dict):
        return {k: _unwrap(v) for k, v in value.items()}
    return value


def _wrap(value: Any) -> Any:
    if isinstance(value, np.ndarray) and not isinstance(value, CountingArray) and value.ndim > 0:
        return value.view(CountingArray)
    if isinstance(value, tuple):
        return tuple(_wrap(v) for v in value)
    return value


class StageProgress:
    """Keeps the current stage for the counts, and each stage's block count."""

    def __init__(self) -> None:
        self.blocks: dict[str, int] = {}

    def start(self, stage: str, total: int, unit: str = "block") -> None:
        _STAGE[0] = stage
        self.blocks[stage] = int(total)

    def advance(self, stage: str, n: int = 1) -> None:
        pass

    def finish(self, stage: str) -> None:
        _STAGE[0] = f"after {stage}"

    def message(self, text: str, level: str = "info") -> None:
        pass


class CountingXp:
    """numpy as a device array module: its functions count a call and hand out counting arrays."""

    __name__ = "numpy (counting)"

    def __getattr__(self, name: str) -> Any:
        value = getattr(np, name)
        if isinstance(value, type) or not callable(value):
            return value

        def counted(*args: Any, **kwargs: Any) -> Any:
            _count()
            return _wrap(value(*_unwrap(args), **_unwrap(kwargs)))

        return counted


def counting_device(budget: int) -> Any:
    """The numpy stand-in device whose array module and ``asarray`` hand out counting arrays."""
    import scipy.ndimage

    from zemosaic_ooc.backend import GPU_CHUNK_PIXELS, Backend

    class CountingBackend(Backend):
        on_host = True                      # numpy memory: transfers are views, nothing to free

        def asarray(self, array: Any, dtype: Any = None) -> Any:
            return np.asarray(array, dtype=dtype).view(CountingArray)

        def to_host(self, array: Any) -> np.ndarray:
            return np.asarray(array)

        def free_memory(self) -> None:
            if self.resident is not None:
                self.resident.clear()
            if self.handover is not None:
                self.handover.clear()

        def synchronize_stream(self) -> None:
            pass

        def synchronize(self) -> None:
            pass

    return CountingBackend(
        name="cpu-as-device (counting)", xp=CountingXp(), ndimage=scipy.ndimage, budget_bytes=budget,
        is_device=True, chunk_pixels=GPU_CHUNK_PIXELS)


def main(argv: list[str] | None = None) -> int:
    from zemosaic_ooc.options import Phase5Options, parse_size
    from zemosaic_ooc.phase5.pipeline import run_pipeline

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("tiles_dir")
    p.add_argument("out")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--block-size", type=int, default=None)
    p.add_argument("--first-pass", action="store_true")
    p.add_argument("--device-budget", default="40GiB")
    p.add_argument("--top", type=int, default=25)
    ns = p.parse_args(argv)
    kwargs: dict[str, Any] = {"gpu": "off", "overwrite": True}
    if ns.first_pass:
        kwargs.update(two_pass_coverage_renorm=False, patchwork_suppressor_enabled=False)
    if ns.block_size:
        kwargs["block_size"] = ns.block_size
    tiles = sorted(Path(ns.tiles_dir).glob("master_tile_*.fits"))
    progress = StageProgress()
    t0 = time.perf_counter()
    summary = run_pipeline(tiles, ns.out, Phase5Options(**kwargs), workers=ns.workers, progress=progress,
                           device=counting_device(parse_size(ns.device_budget)))
    print(f"RESULT {ns.out} block {summary.block_size} px, {len(tiles)} tiles, "
          f"{time.perf_counter() - t0:.1f} s")
    by_stage: collections.Counter = collections.Counter()
    for (stage, _), n in _COUNTS.items():
        by_stage[stage] += n
    print("ARRAY OPERATIONS by stage (total, blocks or units of the stage, per block):")
    for stage, n in sorted(by_stage.items(), key=lambda kv: -kv[1]):
        units = progress.blocks.get(stage)
        per = f"{n / units:10.0f}" if units else f"{'':10s}"
        print(f"    {stage:32s} {n:10d} {units if units else '':>6} {per}")
    print(f"    {'total':32s} {sum(by_stage.values()):10d}")
    print(f"ARRAY OPERATIONS by place (top {ns.top}):")
    by_place: collections.Counter = collections.Counter()
    for (_, place), n in _COUNTS.items():
        by_place[place] += n
    for place, n in by_place.most_common(ns.top):
        print(f"    {n:10d}  {place}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
