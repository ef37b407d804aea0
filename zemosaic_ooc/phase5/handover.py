"""Stage arrays handed from one block stage to the next on the device.

Every block stage writes its arrays to the mosaic store: that is what resume, the CPU replays
and the final product read.  In a device run, the stage that computed a block on the device
also keeps the block's arrays there (:meth:`StageHandover.keep`, from the block's commit,
after its store write), within a share of the VRAM budget
(:data:`~zemosaic_ooc.device_budget.HANDOVER_SHARE`).  A later stage's task on the device then
assembles the region it needs from the kept blocks (:meth:`StageHandover.region`: a copy on
the device) instead of reading the store's chunk files and copying them to the device.

A kept block holds the same bits as the store's chunk (the store's copy is its host copy,
cast to the store's dtype before either is made), so where a region comes from changes
nothing in any result.  A region that is not wholly kept, and any task on the host (the CPU
path, a replay after an out-of-memory error), reads the store.

Keys are (the store array's path, block row, block column) on the store's block grid: arrays
are kept whole blocks at a time, as their stages write them.  Values are (h, w) or (h, w, 3)
arrays (HWC) of the store array's dtype.
"""
from __future__ import annotations

import threading
from typing import Any, Iterable

import numpy as np

from ..backend import Backend, is_out_of_memory
from .grid import Box


class StageHandover:
    """Blocks of stage arrays kept on ``device`` within ``capacity`` bytes. Thread-safe.

    With no device (the CPU path, a Dask run) it keeps nothing and every region is a store read.
    One sent to another process (a Dask worker) arrives empty and without a device.
    """

    def __init__(self, device: Backend | None, capacity: int, shape_hw: tuple[int, int], block: int):
        self.device = device
        self.capacity = max(0, int(capacity))
        self.shape_hw = (int(shape_hw[0]), int(shape_hw[1]))
        self.block = int(block)
        self.used = 0
        self.peak = 0
        self.kept_blocks = 0
        self.refused_blocks = 0
        self.regions_served = 0
        self.bytes_served = 0
        self._items: dict[tuple[str, int, int], Any] = {}
        self._lock = threading.Lock()

    @classmethod
    def store_only(cls, shape_hw: tuple[int, int], block: int) -> "StageHandover":
        """One that keeps nothing: every region is read from the store."""
        return cls(None, 0, shape_hw, block)

    def __getstate__(self) -> dict[str, Any]:
        return {"shape_hw": self.shape_hw, "block": self.block}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(None, 0, state["shape_hw"], state["block"])        # as store_only

    def grow(self, nbytes: int) -> None:
        """Add ``nbytes`` to the capacity (a share of the budget another use has given back)."""
        if self.device is not None:
            with self._lock:
                self.capacity += max(0, int(nbytes))

    def lend(self, nbytes: int) -> int:
        """Take up to ``nbytes`` of the free capacity away for another use (given back with
        :meth:`grow`); returns the bytes taken (0 without a device)."""
        if self.device is None:
            return 0
        with self._lock:
            taken = max(0, min(int(nbytes), self.capacity - self.used))
            self.capacity -= taken
        return taken

    def _key(self, name: str, box: Box) -> tuple[str, int, int] | None:
        """The block key of ``box``, or None when ``box`` is not exactly one block of the grid."""
        y0, y1, x0, x1 = box
        by, bx = y0 // self.block, x0 // self.block
        if (y0 != by * self.block or x0 != bx * self.block
                or y1 != min(self.shape_hw[0], y0 + self.block)
                or x1 != min(self.shape_hw[1], x0 + self.block)):
            return None
        return (name, by, bx)

    def takes(self, be: Backend) -> bool:
        """True when a task running on ``be`` should hand its arrays over (``be`` is the device)."""
        return self.device is not None and be is self.device and self.capacity > 0

    def keep(self, array: Any, box: Box, value: Any) -> bool:
        """Keep ``value``, the device array of block ``box`` of the store array ``array``
        (written there by the caller), as ``array``'s dtype.

        Returns False (nothing kept) when ``box`` is not one whole block, ``value`` is not on
        the device, it does not fit the capacity, or the device has no room for the cast or
        copy (keeps run in block commits, outside the OOM guard); the store then serves that
        block."""
        key = self._key(str(array.path), box)
        if (key is None or value is None or self.device is None
                or isinstance(value, np.ndarray) != self.device.on_host):
            return False
        try:
            value = value.astype(array.dtype, copy=False)
            if value.base is not None:     # a view would keep its whole base (a halo group) alive
                value = value.copy()
        except Exception as exc:           # noqa: BLE001 - no room for the copy: the store serves it
            if not is_out_of_memory(exc):
                raise
            with self._lock:
                self.refused_blocks += 1
            return False
        nbytes = int(value.nbytes)
        with self._lock:
            old = self._items.pop(key, None)
            if old is not None:
                self.used -= int(old.nbytes)
            if self.used + nbytes > self.capacity:
                self.refused_blocks += 1
                return False
            self._items[key] = value
            self.used += nbytes
            self.peak = max(self.peak, self.used)
            self.kept_blocks += 1
        return True

    def region(self, be: Backend, array: Any, rows: slice, cols: slice) -> Any:
        """``array[rows, cols]`` (a store array) on ``be``: assembled from the kept blocks when
        ``be`` is the device and every block the region meets is kept, else read from the
        store.  Always a new array: callers may write into it."""
        if self.device is not None and be is self.device:
            pieces = self._pieces(str(array.path), rows, cols)
            if pieces is not None:
                xp = be.xp
                bands = [band[0] if len(band) == 1 else xp.concatenate(band, axis=1) for band in pieces]
                out = bands[0] if len(bands) == 1 else xp.concatenate(bands, axis=0)
                if len(bands) == 1 and len(pieces[0]) == 1:
                    out = out.copy()
                # the kept blocks were made on other threads' streams and may be let go (a
                # drop, an OOM) as soon as this returns: their memory would then be reused on
                # those streams, so the copy must be done first
                be.synchronize_stream()
                with self._lock:
                    self.regions_served += 1
                    self.bytes_served += int(out.nbytes)
                return out
        return be.asarray(array[rows, cols])

    def _pieces(self, name: str, rows: slice, cols: slice) -> list[list[Any]] | None:
        """The kept blocks' parts of the region, by block row, or None when one is missing."""
        height, width = self.shape_hw
        y0, y1, _ = rows.indices(height)
        x0, x1, _ = cols.indices(width)
        if y1 <= y0 or x1 <= x0:
            return None
        b = self.block
        bands = []
        with self._lock:
            for by in range(y0 // b, (y1 - 1) // b + 1):
                band = []
                for bx in range(x0 // b, (x1 - 1) // b + 1):
                    value = self._items.get((name, by, bx))
                    if value is None:
                        return None
                    band.append(value[max(y0, by * b) - by * b:min(y1, (by + 1) * b) - by * b,
                                      max(x0, bx * b) - bx * b:min(x1, (bx + 1) * b) - bx * b])
                bands.append(band)
        return bands

    def drop(self, arrays: Iterable[Any], box: Box | None = None) -> None:
        """Let go of the kept blocks of the store arrays ``arrays`` (of block ``box`` alone,
        when given)."""
        names = {str(a.path) for a in arrays}
        with self._lock:
            keys = ([k for k in self._items if k[0] in names] if box is None
                    else [self._key(name, box) for name in names])
            for key in keys:
                value = self._items.pop(key, None)
                if value is not None:
                    self.used -= int(value.nbytes)

    def clear(self) -> None:
        """Let go of every kept block (the device memory is freed with the arrays)."""
        with self._lock:
            self._items.clear()
            self.used = 0

    def summary(self) -> dict[str, int]:
        return {"handover_capacity": int(self.capacity), "handover_peak_bytes": int(self.peak),
                "handover_kept_blocks": int(self.kept_blocks),
                "handover_refused_blocks": int(self.refused_blocks),
                "handover_regions_served": int(self.regions_served),
                "handover_bytes_served": int(self.bytes_served)}
