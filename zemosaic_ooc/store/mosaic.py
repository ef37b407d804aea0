"""MosaicStore: the output Zarr group (mosaic, coverage, alpha, stage arrays, plan).

Layout (ACCEPTANCE §6): ``mosaic`` (H, W, 3) float32 HWC, NaN outside the valid
area; ``coverage`` (H, W) float32; ``alpha`` (H, W) uint8; stage arrays under
``stages/`` (the pass-1 mosaic before masking, its coverage, the alpha union U).
Chunks are the blocks.  Arrays stay on the Phase-4 grid; the autocrop is a
window (``attrs['window']`` = [y0, y1, x0, x1]) applied at export.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import zarr

from ..errors import StoreError
from .chunks import DirectArray
from .codecs import create_checked_array

FINAL_ARRAYS = {
    "mosaic": ("float32", 3),
    "coverage": ("float32", 0),
    "alpha": ("uint8", 0),
}


class MosaicStore:
    """Thin wrapper over the output zarr group; arrays are created once per run."""

    def __init__(self, path: str | Path, group: zarr.Group):
        self.path = Path(path)
        self.group = group

    @classmethod
    def create(cls, path: str | Path, shape_hw: tuple[int, int], block: int, *,
               overwrite: bool = False) -> "MosaicStore":
        path = Path(path)
        if path.exists() and not overwrite and any(path.iterdir()):
            raise StoreError(f"{path}: output store already exists (use --overwrite to replace it)")
        try:
            group = zarr.open_group(str(path), mode="w")
        except OSError as exc:
            raise StoreError(f"{path}: cannot create the output store ({exc})") from exc
        store = cls(path, group)
        store.attrs_update(shape_hw=list(shape_hw), block=int(block))
        return store

    @classmethod
    def open(cls, path: str | Path, mode: str = "r") -> "MosaicStore":
        return cls(path, zarr.open_group(str(path), mode=mode))

    @property
    def attrs(self) -> dict[str, Any]:
        return dict(self.group.attrs)

    def attrs_update(self, **values: Any) -> None:
        self.group.attrs.update(json.loads(json.dumps(values, default=_json_default)))

    def require(self, name: str, shape: tuple[int, ...], dtype: str, chunks: tuple[int, ...],
                fill_value: Any = 0) -> DirectArray:
        if name in self.group:
            return DirectArray(self.group[name])
        # a crc32c checksum per chunk, so a damaged chunk fails to read instead of giving wrong pixels
        return DirectArray(create_checked_array(self.group, name, shape=shape, dtype=dtype, chunks=chunks,
                                                fill_value=fill_value))

    def array(self, name: str) -> DirectArray:
        """The array ``name``; its slices are read on the calling thread (store/chunks.py)."""
        return DirectArray(self.group[name])


def _json_default(value: Any) -> Any:
    if isinstance(value, (np.integer,)):
        return int(value)
    if isinstance(value, (np.floating,)):
        v = float(value)
        return None if not np.isfinite(v) else v
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, tuple):
        return list(value)
    return str(value)
