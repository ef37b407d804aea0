"""Array backends: the one place that knows about numpy versus cupy.

Every per-pixel formula in :mod:`zemosaic_ooc.phase5` is written once against a
:class:`Backend`: its ``xp`` (``numpy`` or ``cupy``) and its ``ndimage``
(``scipy.ndimage`` or ``cupyx.scipy.ndimage``).  Choosing the GPU therefore
changes where the arithmetic runs, never what it computes.

``cupy`` is imported in this module alone.
"""
from __future__ import annotations

import contextlib
import logging
import os
import threading
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any, Iterator

import numpy as np
import scipy.ndimage

from .errors import ZeMosaicOocError

log = logging.getLogger(__name__)

#: output pixels per resampling chunk on the CPU (temporaries of ≤ 1 MiB stay in cache)
CPU_CHUNK_PIXELS = 1 << 15
#: on a GPU a chunk is a whole block (up to 4 Mpx): fewer, larger kernels
GPU_CHUNK_PIXELS = 1 << 22
#: default VRAM budget: this fraction of the device's free memory at start
GPU_FREE_FRACTION = 0.6
_COUNT_LOCK = threading.Lock()        # guards the transfer counters (module level: a Backend pickles)
_THREAD_STREAMS = threading.local()   # one CUDA stream per worker thread


class GpuUnavailableError(ZeMosaicOocError):
    """``--gpu on`` was requested but no usable CUDA device answered."""


@dataclass
class Backend:
    """An array module plus its ndimage facade.

    Attributes
    ----------
    name:
        ``"cpu"`` or ``"gpu"`` (or ``"cpu-as-device"`` when numpy stands in for
        the device module in tests).
    xp:
        The array module (``numpy`` or ``cupy``).
    ndimage:
        ``scipy.ndimage`` or ``cupyx.scipy.ndimage``.
    budget_bytes:
        Memory this backend may use for one block's working set (bytes).
    chunk_pixels:
        Output pixels resampled / accumulated at once: cache-sized on the CPU,
        a whole block on a GPU (fewer, larger kernel launches).  Results do not
        depend on it (every formula is per pixel).
    """

    name: str
    xp: ModuleType
    ndimage: ModuleType
    budget_bytes: int = 2 * 1024**3
    is_device: bool = False
    extra: dict[str, Any] = field(default_factory=dict)
    chunk_pixels: int = CPU_CHUNK_PIXELS
    #: host→device and device→host bytes moved (cupy only), for the transfer report
    bytes_to_device: int = 0
    bytes_to_host: int = 0
    #: prepared whole tiles kept in this backend's memory
    #: (:class:`~zemosaic_ooc.phase5.resident.ResidentTiles`; the pipeline gives one to a device)
    resident: Any = None
    #: stage arrays' blocks kept in this backend's memory for the next block stages
    #: (:class:`~zemosaic_ooc.phase5.handover.StageHandover`; the pipeline gives one to a device)
    handover: Any = None
    #: shelves that may hold values in this backend's memory (:class:`~zemosaic_ooc.memory.MemoryShelf`:
    #: the background walks' block samples); :meth:`free_memory` lets go of their device values
    shelves: list[Any] = field(default_factory=list)

    @property
    def on_host(self) -> bool:
        """True when the arrays live in host memory (numpy)."""
        return self.xp is np

    def asarray(self, array: Any, dtype: Any = None) -> Any:
        """Move a host array to this backend (no copy on numpy when possible)."""
        if not self.on_host and isinstance(array, np.ndarray):
            with _COUNT_LOCK:
                self.bytes_to_device += int(array.nbytes)
        return self.xp.asarray(array, dtype=dtype)

    def to_host(self, array: Any) -> np.ndarray:
        """Return a numpy array (a device→host copy on cupy)."""
        if self.on_host or isinstance(array, np.ndarray):
            return np.asarray(array)
        with _COUNT_LOCK:
            self.bytes_to_host += int(array.nbytes)
        return self.xp.asnumpy(array)

    @contextlib.contextmanager
    def task_stream(self) -> Iterator[None]:
        """Run a block task on its worker thread's own stream (cupy: one non-blocking stream
        per thread, kept for the thread's life so the memory pool reuses its blocks, while
        the copies and kernels of concurrent workers overlap; numpy: nothing).  The stream
        is synchronized before the task's results are used.  ``ZEMOSAIC_OOC_GPU_STREAMS=none``
        keeps every task on the default stream."""
        if self.on_host or os.environ.get("ZEMOSAIC_OOC_GPU_STREAMS", "thread") == "none":
            yield
            return
        stream = getattr(_THREAD_STREAMS, "stream", None)  # pragma: no cover - device only
        if stream is None:  # pragma: no cover - device only
            stream = _THREAD_STREAMS.stream = self.xp.cuda.Stream(non_blocking=True)
        with stream:  # pragma: no cover - device only
            yield
            stream.synchronize()

    def transfer_summary(self) -> dict[str, int]:
        return {"bytes_to_device": int(self.bytes_to_device), "bytes_to_host": int(self.bytes_to_host)}

    def free_memory(self) -> None:
        """Release cached device memory: the resident tiles, the handed-over stage blocks (the
        store holds them too), the block samples kept on the device (they are resampled) and
        CuPy's pools (numpy: all but the last)."""
        if self.resident is not None:
            self.resident.clear()
        if self.handover is not None:
            self.handover.clear()
        for shelf in list(self.shelves):
            shelf.drop_device()
        if self.xp is np:
            return
        try:
            self.xp.get_default_memory_pool().free_all_blocks()
            self.xp.get_default_pinned_memory_pool().free_all_blocks()
        except Exception:  # pragma: no cover - best effort on a device
            log.debug("could not free cupy pools", exc_info=True)

    def synchronize_stream(self) -> None:
        """Wait for the work queued on the calling thread's current stream (numpy: nothing)."""
        if self.xp is not np:  # pragma: no cover - device only
            self.xp.cuda.get_current_stream().synchronize()

    def synchronize(self) -> None:
        if self.xp is not np:  # pragma: no cover - device only
            self.xp.cuda.Stream.null.synchronize()


def numpy_backend(budget_bytes: int = 2 * 1024**3) -> Backend:
    """The CPU backend (numpy + scipy.ndimage)."""
    return Backend(name="cpu", xp=np, ndimage=scipy.ndimage, budget_bytes=budget_bytes)


def numpy_as_device_backend(budget_bytes: int = 2 * 1024**3) -> Backend:
    """numpy standing in for the device module: runs the device code path on CPU.

    Used by the default test-suite to exercise the GPU scheduling, the OOM guard
    and its replays without a GPU.
    """
    return Backend(name="cpu-as-device", xp=np, ndimage=scipy.ndimage,
                   budget_bytes=budget_bytes, is_device=True)


def cupy_available() -> bool:
    """True when cupy imports and at least one CUDA device answers."""
    try:
        import cupy  # noqa: F401
    except Exception:
        return False
    try:
        return bool(cupy.is_available()) and cupy.cuda.runtime.getDeviceCount() > 0
    except Exception:
        return False


_COMPILE_LOCK = threading.RLock()


def _serialize_kernel_compiles(cupy: Any) -> None:  # pragma: no cover - device only
    """Make CuPy compile (or load from its disk cache) one kernel at a time in this process.

    On a cold machine every worker thread that meets a kernel not yet in CuPy's in-memory
    cache compiles it with NVRTC; seen on an H200: 8 threads compiling the same kernel
    together, a 3×3 run's background stage taking 30 s instead of about 2.  Serialized, the
    first thread compiles and the others then find it in the disk cache.  CuPy's compiler
    module is plain Python; if its helper is renamed in a later CuPy this does nothing.
    """
    compiler = getattr(getattr(cupy, "cuda", None), "compiler", None)
    for name in ("_compile_module_with_cache", "compile_with_cache"):
        original = getattr(compiler, name, None)
        if original is None or getattr(original, "_zemosaic_serialized", False):
            continue

        def serialized(*args: Any, _original: Any = original, **kwargs: Any) -> Any:
            with _COMPILE_LOCK:
                return _original(*args, **kwargs)

        serialized._zemosaic_serialized = True  # type: ignore[attr-defined]
        setattr(compiler, name, serialized)


def cupy_backend(budget_bytes: int | None = None) -> Backend:  # pragma: no cover - device only
    """The GPU backend (cupy + cupyx.scipy.ndimage)."""
    import cupy
    import cupyx.scipy.ndimage as cndimage

    _serialize_kernel_compiles(cupy)
    free, total = cupy.cuda.Device().mem_info
    if budget_bytes is None:
        budget_bytes = int(free * GPU_FREE_FRACTION)
    pool = cupy.get_default_memory_pool()
    pool.set_limit(size=int(budget_bytes))
    props = cupy.cuda.runtime.getDeviceProperties(cupy.cuda.Device().id)
    name = props.get("name", b"")
    name = name.decode() if isinstance(name, bytes) else str(name)
    return Backend(name="gpu", xp=cupy, ndimage=cndimage, budget_bytes=int(budget_bytes),
                   is_device=True, chunk_pixels=GPU_CHUNK_PIXELS,
                   extra={"free_bytes": free, "total_bytes": total, "device_name": name,
                          "cupy_version": cupy.__version__})


def select_backend(mode: str = "auto", *, host_budget_bytes: int = 2 * 1024**3,
                   gpu_budget_bytes: int | None = None) -> Backend:
    """Pick the backend for ``--gpu auto|on|off``.

    ``auto``: the GPU when cupy is importable and a device answers, else CPU.
    ``on``: the GPU or :class:`GpuUnavailableError`.  ``off``: CPU.
    """
    mode = str(mode).lower()
    if mode in ("off", "false", "0", "cpu"):
        return numpy_backend(host_budget_bytes)
    if mode not in ("auto", "on", "true", "1", "gpu"):
        raise ValueError(f"--gpu must be auto, on or off, not {mode!r}")
    if cupy_available():
        try:
            return cupy_backend(gpu_budget_bytes)  # pragma: no cover - device only
        except Exception as exc:  # pragma: no cover - device only
            if mode != "auto":
                raise GpuUnavailableError(f"--gpu on: the CUDA device did not answer ({exc})") from exc
            log.warning("GPU unusable (%s); running on the CPU", exc)
            return numpy_backend(host_budget_bytes)
    if mode in ("on", "true", "1", "gpu"):
        raise GpuUnavailableError(
            "--gpu on was requested but no CUDA device is usable "
            "(install the 'gpu' extra, e.g. pip install 'zemosaic_ooc[gpu]', and check the driver)")
    return numpy_backend(host_budget_bytes)


class DeviceOutOfMemory(MemoryError):
    """Out of device memory (raised by fault injection when numpy stands in for the device)."""


class DeviceError(RuntimeError):
    """A device failure other than out-of-memory (fault injection stand-in for CUDA errors)."""


def _exception_chain(exc: BaseException):
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        yield exc
        exc = exc.__cause__ or exc.__context__


def is_out_of_memory(exc: BaseException) -> bool:
    """cupy OutOfMemoryError, CUDARuntimeError with status 2, or an "out of memory" message."""
    for item in _exception_chain(exc):
        if isinstance(item, DeviceOutOfMemory):
            return True
        name = type(item).__name__
        if name == "OutOfMemoryError":
            return True
        if name == "CUDARuntimeError" and getattr(item, "status", None) == 2:
            return True
        text = str(item).lower()
        if "out of memory" in text or "cuda_error_out_of_memory" in text:
            return True
    return False


def is_device_error(exc: BaseException) -> bool:
    """Any CUDA/cupy failure (the device must not be trusted further)."""
    for item in _exception_chain(exc):
        if isinstance(item, DeviceError):
            return True
        module = type(item).__module__ or ""
        if module.startswith(("cupy", "cupyx", "cupy_backends")) or "CUDA" in type(item).__name__:
            return True
    return False
