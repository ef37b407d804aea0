"""Array backends: the one place that knows about numpy versus cupy.

Every per-pixel formula in :mod:`zemosaic_ooc.phase5` is written once against a
:class:`Backend`: its ``xp`` (``numpy`` or ``cupy``) and its ``ndimage``
(``scipy.ndimage`` or ``cupyx.scipy.ndimage``).  Choosing the GPU therefore
changes where the arithmetic runs, never what it computes.

``cupy`` is imported in this module alone.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any

import numpy as np
import scipy.ndimage

from .errors import ZeMosaicOocError

log = logging.getLogger(__name__)


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
    """

    name: str
    xp: ModuleType
    ndimage: ModuleType
    budget_bytes: int = 2 * 1024**3
    is_device: bool = False
    extra: dict[str, Any] = field(default_factory=dict)

    def asarray(self, array: Any, dtype: Any = None) -> Any:
        """Move a host array to this backend (no copy on numpy when possible)."""
        return self.xp.asarray(array, dtype=dtype)

    def to_host(self, array: Any) -> np.ndarray:
        """Return a numpy array (a device→host copy on cupy)."""
        if self.xp is np:
            return np.asarray(array)
        return self.xp.asnumpy(array)

    def free_memory(self) -> None:
        """Release cached device memory (no-op on numpy)."""
        if self.xp is np:
            return
        try:
            self.xp.get_default_memory_pool().free_all_blocks()
            self.xp.get_default_pinned_memory_pool().free_all_blocks()
        except Exception:  # pragma: no cover - best effort on a device
            log.debug("could not free cupy pools", exc_info=True)

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


def cupy_backend(budget_bytes: int | None = None) -> Backend:  # pragma: no cover - device only
    """The GPU backend (cupy + cupyx.scipy.ndimage)."""
    import cupy
    import cupyx.scipy.ndimage as cndimage

    free, total = cupy.cuda.Device().mem_info
    if budget_bytes is None:
        budget_bytes = int(free * 0.6)
    pool = cupy.get_default_memory_pool()
    pool.set_limit(size=int(budget_bytes))
    return Backend(name="gpu", xp=cupy, ndimage=cndimage, budget_bytes=int(budget_bytes),
                   is_device=True, extra={"free_bytes": free, "total_bytes": total})


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
        return cupy_backend(gpu_budget_bytes)  # pragma: no cover - device only
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
