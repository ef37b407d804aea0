"""Prepared whole tiles kept in a device's memory (VRAM), so block tasks skip the tile store.

On the CPU every block task reads the tile regions under its block from the tile store and
prepares them (§2, :func:`~.prep.prepare_region`).  On a GPU that host work, not the
arithmetic, sets the pace.  :class:`ResidentTiles` keeps, per tile, the *whole* cropped
tile prepared and packed for the gathers on the device: (H·W, 4) float32 (d_R, d_G, d_B, w)
and (H·W, 1) float32 b_t, 20 bytes per tile pixel, loaded once (one store read, one copy to
the device) and then used by every block the tile reaches.

The values are exactly the per-region ones: every step of §2 is per pixel and a region is a
window of the whole tile, so a gather from the whole tile at the same cropped-tile
coordinates reads the same numbers (tested against the region path).

The tiles are kept within ``capacity`` bytes (a share of the VRAM budget, see
:mod:`zemosaic_ooc.device_budget`), least recently used out; a tile larger than the capacity
is never kept and its blocks read regions as on the CPU.  Thread-safe: one thread loads a
tile while the others wanting it wait.  :meth:`clear` drops them all (the OOM guard frees
device memory through :meth:`~zemosaic_ooc.backend.Backend.free_memory`).
"""
from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Any, Callable, Hashable

from ..backend import Backend
from ..store.tiles import TileStore
from .plan import read_raw_region
from .prep import TilePlan

#: device bytes per cropped-tile pixel of a resident tile: packed d + w (16) and b_t (4)
RESIDENT_BYTES_PER_PIXEL = 20


@dataclass
class ResidentTile:
    """One prepared whole tile on the device: ``packed`` (H·W, 4) float32, ``union`` (H·W, 1) float32."""

    packed: Any
    union: Any

    @property
    def nbytes(self) -> int:
        return int(self.packed.nbytes) + int(self.union.nbytes)


def resident_bytes(tile: TilePlan) -> int:
    """Device bytes a resident copy of ``tile`` takes."""
    height, width = tile.cropped_hw
    return RESIDENT_BYTES_PER_PIXEL * int(height) * int(width)


def prep_key(tile: TilePlan, gain_override: float | None, binary_weights: bool) -> Hashable:
    """What the prepared values depend on besides the pixels: tile, §2.8 θ, gains, pass-2 weights."""
    return (tile.index, tile.nan_threshold, float(tile.gain), float(tile.offset),
            None if tile.gain_rgb is None else tuple(tile.gain_rgb),
            None if tile.offset_rgb is None else tuple(tile.offset_rgb),
            None if gain_override in (None, 1.0) else float(gain_override), bool(binary_weights))


#: ``prepare(backend, raw_data, raw_alpha, tile, want_data, want_union, gain_override,
#: binary_weights)`` → (packed, union): :func:`~.coadd.prepared_planes`
Prepare = Callable[..., tuple[Any, Any]]


class ResidentTiles:
    """Whole prepared tiles on a device within ``capacity`` bytes (see the module docstring)."""

    def __init__(self, capacity: int):
        self.capacity = max(0, int(capacity))
        self.used = 0
        self.loads = 0
        self._items: dict[Hashable, ResidentTile] = {}
        self._loading: dict[Hashable, threading.Lock] = {}
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._items)

    def get(self, backend: Backend, store: TileStore, tile: TilePlan, prepare: Prepare, *,
            gain_override: float | None = None, binary_weights: bool = False) -> ResidentTile | None:
        """The resident copy of ``tile`` (loading it on first use), or None when it cannot be kept."""
        size = resident_bytes(tile)
        if size > self.capacity:
            return None
        key = prep_key(tile, gain_override, binary_weights)
        with self._lock:
            found = self._touch(key)
            if found is not None:
                return found
            gate = self._loading.setdefault(key, threading.Lock())
        with gate:
            with self._lock:
                found = self._touch(key)
            if found is not None:
                return found
            height, width = tile.cropped_hw
            raw_data, raw_alpha = read_raw_region(store, tile, (0, height), (0, width))
            packed, union = prepare(backend, backend.asarray(raw_data),
                                    None if raw_alpha is None else backend.asarray(raw_alpha), tile,
                                    want_data=True, want_union=True, gain_override=gain_override,
                                    binary_weights=binary_weights)
            entry = ResidentTile(packed, union)
            # other threads gather from it on their own streams: the copy and the kernels that
            # made it must be finished before it is shared
            backend.synchronize_stream()
            with self._lock:
                while self._items and self.used + entry.nbytes > self.capacity:
                    oldest = next(iter(self._items))
                    self.used -= self._items.pop(oldest).nbytes
                self._items[key] = entry
                self.used += entry.nbytes
                self.loads += 1
                self._loading.pop(key, None)
            return entry

    def _touch(self, key: Hashable) -> ResidentTile | None:
        entry = self._items.pop(key, None)
        if entry is not None:
            self._items[key] = entry          # most recently used last
        return entry

    def clear(self) -> None:
        """Drop every resident tile (tasks still using one keep their reference)."""
        with self._lock:
            self._items.clear()
            self.used = 0

    def summary(self) -> dict[str, int]:
        return {"resident_tiles": len(self._items), "resident_bytes": int(self.used),
                "resident_capacity": int(self.capacity), "resident_loads": int(self.loads)}
