"""OOM guard: run a block task on the device backend; on out-of-memory replay it on the CPU.

A block task computes its block completely and overwrites its chunks, so a
replay can never leave half a device block in the mosaic.  Every block is
computed on one backend (all channels together).  Policy:

* device out-of-memory (cupy ``OutOfMemoryError``, ``CUDARuntimeError`` status 2,
  or a message saying "out of memory") → free the pools, warn once, replay the
  block on the CPU with the same plan; after ``max_oom`` such strikes the device
  is disabled for the rest of the run;
* any other device error → disable the device at once and replay on the CPU;
* errors of the CPU path are never caught (they are bugs or bad input).
"""
from __future__ import annotations

import contextlib
import logging
import os
import threading
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator

from ..backend import Backend, is_device_error, is_out_of_memory

log = logging.getLogger(__name__)

FaultInjector = Callable[[str, Any, Backend], None]

#: the (device, stage) pairs whose first device task has succeeded in this process: that
#: stage's kernels are compiled and loaded, so a later run in the process (a worker running
#: Phase 5 again, a timed run after a warm-up) needs no first-task gate for it
_WARM_IN_PROCESS: set[tuple[str, str]] = set()


def _kernel_cache_key(device: Backend, stage: str) -> tuple[str, str] | None:
    """The process-wide key of ``stage``'s kernels on ``device``; None where no kernel is
    compiled (numpy standing in for the device)."""
    if device.on_host:
        return None
    return (str(device.extra.get("device_name", device.name)), stage)


@dataclass
class BlockOutcome:
    """Which backend produced a block and whether it was a replay."""

    backend: str
    replay: bool
    error: str | None = None


@dataclass
class OomGuard:
    device: Backend | None
    host: Backend
    max_oom: int = 3
    inject: FaultInjector | None = None
    strikes: int = 0
    disabled_reason: str | None = None
    replays: int = 0
    replays_by_stage: dict[str, int] = field(default_factory=dict)
    _warm: set = field(default_factory=set)
    _gates: dict = field(default_factory=dict)
    device_slots: int | None = None       # device tasks at once (None: as many as workers)
    device_plan: dict = field(default_factory=dict)
    _slots: threading.BoundedSemaphore | None = None
    host_slots: int | None = None         # guarded tasks on the host at once (None: as many as workers)
    _host_slots: threading.BoundedSemaphore | None = None
    _warned: bool = False
    _lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def device_active(self) -> bool:
        return self.device is not None and self.disabled_reason is None

    def run(self, stage: str, box: Any, task: Callable[[Any, Backend], Any]) -> tuple[Any, BlockOutcome]:
        """Run ``task(box, backend)`` on the device if active, else (or on failure) on the host."""
        if not self.device_active:
            with self._holding(self._host_slots):
                return task(box, self.host), BlockOutcome(self.host.name, False)
        device = self.device
        try:
            with self._holding(self._slots), self._first_of_stage(stage):
                if self.inject is not None:
                    self.inject(stage, box, device)
                with device.task_stream():
                    result = task(box, device)
                self._warm.add(stage)
                key = _kernel_cache_key(device, stage)
                if key is not None:
                    _WARM_IN_PROCESS.add(key)
            return result, BlockOutcome(device.name, False)
        except Exception as exc:  # noqa: BLE001 - classified below
            if is_out_of_memory(exc):
                self._oom(stage, box, exc)
            elif is_device_error(exc):
                self._disable(f"device error in {stage} block {box}: {exc}")
            else:
                raise
            failure = f"{type(exc).__name__}: {exc}"
        # outside the handler: the failed attempt's traceback (and its device arrays) is gone
        device.free_memory()
        with self._holding(self._host_slots):
            result = task(box, self.host)
        with self._lock:
            self.replays += 1
            self.replays_by_stage[stage] = self.replays_by_stage.get(stage, 0) + 1
        return result, BlockOutcome(self.host.name, True, failure)

    def limit_device_tasks(self, slots: int, **plan: Any) -> None:
        """Let at most ``slots`` block tasks hold the device at once (the VRAM budget's share;
        see :mod:`zemosaic_ooc.device_budget`); other workers wait for a slot.  ``plan``
        (the estimate behind it) goes into :meth:`summary`."""
        self.device_slots = max(1, int(slots))
        self.device_plan = dict(plan)
        self._slots = threading.BoundedSemaphore(self.device_slots)

    def limit_host_tasks(self, slots: int) -> None:
        """Let at most ``slots`` guarded tasks run on the host at once (replays, and every task
        once the device is off): a device run's blocks are sized for the device and the host's
        share of them, and the CPU's working set of such a block is larger."""
        self.host_slots = max(1, int(slots))
        self._host_slots = threading.BoundedSemaphore(self.host_slots)

    @staticmethod
    @contextlib.contextmanager
    def _holding(slots: threading.BoundedSemaphore | None) -> Iterator[None]:
        """Hold one of ``slots`` (no limit when None)."""
        if slots is None:
            yield
            return
        with slots:
            yield

    @contextlib.contextmanager
    def _first_of_stage(self, stage: str) -> Iterator[None]:
        """Until a task of ``stage`` has succeeded on the device, its tasks run there one at a
        time: the first one compiles the stage's CUDA kernels (NVRTC, cached on disk after),
        and worker threads compiling the same kernels at once slow each other down many
        times over (measured on an H200: 30 s instead of about 2 s for a cold 3×3 run).

        A stage whose first device task already succeeded in this process (an earlier run's,
        :data:`_WARM_IN_PROCESS`) is not gated: its kernels are loaded.
        ``ZEMOSAIC_OOC_GPU_FIRST_TASK_ALONE=0`` lets the first tasks overlap too (CuPy's
        compiles stay serialized by :func:`~zemosaic_ooc.backend._serialize_kernel_compiles`):
        on a warm kernel cache the gate costs each stage one task's time, to be measured
        against that on a device."""
        if (stage in self._warm or _kernel_cache_key(self.device, stage) in _WARM_IN_PROCESS
                or os.environ.get("ZEMOSAIC_OOC_GPU_FIRST_TASK_ALONE", "1") == "0"):
            yield
            return
        with self._lock:
            gate = self._gates.setdefault(stage, threading.Lock())
        with gate:
            yield

    def call(self, stage: str, key: Any, task: Callable[[Any, Backend], Any]) -> Any:
        """:meth:`run` returning the result alone (for stages that journal no blocks)."""
        return self.run(stage, key, task)[0]

    def _oom(self, stage: str, box: Any, exc: BaseException) -> None:
        with self._lock:
            self.strikes += 1
            strikes = self.strikes
            if not self._warned:
                self._warned = True
                log.warning("GPU out of memory in %s block %s: replaying it on the CPU with the same "
                            "normalization (%s)", stage, box, exc)
        if strikes >= self.max_oom:
            self._disable(f"{strikes} out-of-memory errors (limit {self.max_oom})")

    def _disable(self, reason: str) -> None:
        with self._lock:
            if self.disabled_reason is None:
                self.disabled_reason = reason
                log.warning("GPU disabled for the rest of the run: %s; finishing on the CPU", reason)

    def summary(self) -> dict[str, Any]:
        out: dict[str, Any] = {"device": None if self.device is None else self.device.name,
                               "oom_strikes": self.strikes, "replays": self.replays,
                               "replays_by_stage": dict(self.replays_by_stage),
                               "disabled_reason": self.disabled_reason,
                               "device_slots": self.device_slots, "host_slots": self.host_slots,
                               **self.device_plan}
        if self.device is not None:
            out.update(self.device.transfer_summary())
            if self.device.resident is not None:
                out.update(self.device.resident.summary())
            if self.device.handover is not None:
                out.update(self.device.handover.summary())
            if self.device.extra.get("device_name"):
                out["device_name"] = self.device.extra["device_name"]
        return out
