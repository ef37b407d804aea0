"""Host-memory helpers: budgets in pixels, and handing freed memory back to the OS.

glibc keeps freed heap memory in its arenas (one per thread), so a process that
allocates and frees large temporaries block after block keeps a resident set far
above what it uses.  :func:`release_memory` asks glibc to return it
(``malloc_trim``); it is a no-op elsewhere.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import gc
import threading
from typing import Any, Hashable

_libc = None
_M_ARENA_MAX = -8


def _glibc():
    global _libc
    if _libc is None:
        try:
            name = ctypes.util.find_library("c")
            lib = ctypes.CDLL(name) if name else None
            _libc = lib if lib is not None and hasattr(lib, "malloc_trim") else False
        except OSError:
            _libc = False
    return _libc or None


def limit_arenas(count: int = 2) -> None:
    """Cap glibc's malloc arenas (each worker thread otherwise keeps its own free pool)."""
    lib = _glibc()
    if lib is not None and hasattr(lib, "mallopt"):
        lib.mallopt(_M_ARENA_MAX, int(count))


def release_memory(collect: bool = False) -> None:
    """Return freed heap memory to the OS (glibc ``malloc_trim``); optionally run the GC first."""
    if collect:
        gc.collect()
    lib = _glibc()
    if lib is not None:
        lib.malloc_trim(0)


def strip_pixels(budget_bytes: int, bytes_per_pixel: int = 256, *, minimum: int = 1 << 16,
                 maximum: int = 1 << 22) -> int:
    """How many output pixels a strip task may hold within a share of the budget."""
    return int(max(minimum, min(maximum, budget_bytes // (2 * bytes_per_pixel))))


class MemoryShelf:
    """Values handed from one stage to a later one in memory, within ``capacity`` bytes.

    ``put`` keeps a value only while it fits (callers fall back to the store otherwise);
    ``pop`` hands it over once and frees its share.  Values living on a device (``put(...,
    on_device=True)``) count against ``device_capacity`` instead (VRAM, not RAM).
    Thread-safe.  A shelf sent to another process (a Dask worker) arrives empty: the values
    stay in the process that made them.
    """

    def __getstate__(self) -> dict[str, Any]:
        return {"capacity": self.capacity, "device_capacity": self.device_capacity}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["capacity"], device_capacity=state.get("device_capacity", 0))

    def __init__(self, capacity: int, *, device_capacity: int = 0):
        self.capacity = max(0, int(capacity))
        self.device_capacity = max(0, int(device_capacity))
        self.used = 0
        self.device_used = 0
        self.items: dict[Hashable, tuple[Any, int, bool]] = {}
        self._lock = threading.Lock()

    def _release(self, item: tuple[Any, int, bool]) -> None:
        if item[2]:
            self.device_used -= item[1]
        else:
            self.used -= item[1]

    def put(self, key: Hashable, value: Any, nbytes: int, *, on_device: bool = False) -> bool:
        with self._lock:
            old = self.items.pop(key, None)
            if old is not None:
                self._release(old)
            if on_device:
                if self.device_used + nbytes > self.device_capacity:
                    return False
                self.device_used += nbytes
            else:
                if self.used + nbytes > self.capacity:
                    return False
                self.used += nbytes
            self.items[key] = (value, nbytes, bool(on_device))
            return True

    def get(self, key: Hashable) -> Any | None:
        """The value kept under ``key`` (None if none), left on the shelf."""
        with self._lock:
            item = self.items.get(key)
            return None if item is None else item[0]

    def clear(self) -> None:
        """Let go of every value."""
        with self._lock:
            self.items.clear()
            self.used = self.device_used = 0

    def drop_device(self) -> None:
        """Let go of the values kept on a device (after an out-of-memory error: the VRAM is
        needed more than they are); host values stay."""
        with self._lock:
            for key in [k for k, item in self.items.items() if item[2]]:
                del self.items[key]
            self.device_used = 0

    def pop(self, key: Hashable) -> Any | None:
        with self._lock:
            item = self.items.pop(key, None)
            if item is None:
                return None
            self._release(item)
            return item[0]
