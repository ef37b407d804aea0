"""The run plan: per-tile scalars and the global numbers every block task reads.

The plan is decided by the driver between stages (DESIGN principle 2) and is
JSON-serialisable so it can be stored in the output store and shipped to
workers.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from ..backend import Backend
from ..store.tiles import TileRecord, TileStore
from .mapping import TileGeometry, crop_margins
from .prep import TilePlan, prepare_region, region_mask, tile_weights_v4


def build_tile_plans(records: list[TileRecord], opts: Any) -> list[TilePlan]:
    """§2.2–§2.6 per-tile scalars from the ingested records and the options."""
    taus = tile_weights_v4(
        [r.nframes_raw for r in records], enabled=bool(opts.enable_tile_weighting),
        mode=str(opts.tile_weight_mode), v4=bool(opts.tile_weight_v4_enabled),
        curve=str(opts.tile_weight_v4_curve), strength=float(opts.tile_weight_v4_strength),
        w_min=float(opts.tile_weight_v4_min), w_max=float(opts.tile_weight_v4_max))
    floor = float(opts.phase5_alpha_weight_floor)
    floor = 0.0 if not np.isfinite(floor) else float(np.clip(floor, 0.0, 1.0))
    plans = []
    for record, tau in zip(records, taus):
        crop = crop_margins(record.shape_hw, bool(opts.apply_master_tile_crop),
                            float(opts.master_tile_crop_percent), bool(opts.quality_crop_enabled))
        alpha_is_int = bool(record.alpha_dtype) and np.dtype(record.alpha_dtype).kind in "iu"
        plans.append(TilePlan(
            index=record.index, tile_id=record.tile_id, header_text=record.header,
            shape_hw=tuple(record.shape_hw), crop_hw=crop, has_alpha=record.has_alpha,
            alpha_scale_255=alpha_is_int and (record.alpha_max or 0.0) > 1.0,
            soft_weights=bool(opts.phase5_alpha_soft_weights), weight_floor=floor,
            tau=float(tau), empty_flag=record.empty_flag))
    return plans


def geometry(tile: TilePlan) -> TileGeometry:
    return TileGeometry(tile.index, tile.header_text, tuple(tile.shape_hw), tuple(tile.crop_hw))


def read_raw_region(store: TileStore, tile: TilePlan, rows: tuple[int, int],
                    cols: tuple[int, int], *, with_data: bool = True
                    ) -> tuple[np.ndarray | None, np.ndarray | None]:
    """Raw (C, h, w) data (None unless ``with_data``) and raw alpha of a cropped-tile region [r0, r1) × [c0, c1)."""
    dh, dw = tile.crop_hw
    rs = slice(rows[0] + dh, rows[1] + dh)
    cs = slice(cols[0] + dw, cols[1] + dw)
    data = store.read_data(tile.index, rs, cs) if with_data else None
    alpha = store.read_alpha(tile.index, rs, cs) if tile.has_alpha else None
    return data, alpha


def nan_threshold(backend: Backend, store: TileStore, tile: TilePlan, *,
                  rows_per_strip: int = 256) -> float:
    """§2.8 θ of a tile: 0.5 if max(mask) > 0.5 else 0 (mask = a_t or m_t), read in row strips."""
    saved = tile.nan_threshold
    tile.nan_threshold = None
    h, w = tile.cropped_hw
    maximum = 0.0
    try:
        for r0 in range(0, h, rows_per_strip):
            # with ALPHA, m = a_t depends on the ALPHA plane alone: the data planes are not read
            data, alpha = read_raw_region(store, tile, (r0, min(h, r0 + rows_per_strip)), (0, w),
                                          with_data=not tile.has_alpha)
            mask = region_mask(backend, None if data is None else backend.asarray(data),
                               None if alpha is None else backend.asarray(alpha), tile)
            if mask.size:
                maximum = max(maximum, float(backend.xp.max(mask)))
            if maximum > 0.5:
                break                 # θ is decided: later strips cannot change it
    finally:
        tile.nan_threshold = saved
    return 0.5 if maximum > 0.5 else 0.0


class StoreCalibrationSource:
    """:class:`~.calibrate.CalibrationSource` over the TileStore: planes of any region, streamed previews."""

    def __init__(self, backend: Backend, store: TileStore, tiles: list[TilePlan], preview_size: int,
                 rows_per_strip: int = 256):
        self.backend = backend
        self.store = store
        self.tiles = tiles
        self.preview_size = int(preview_size)
        self.rows_per_strip = rows_per_strip

    def _prepared(self, t: int, rows: tuple[int, int], cols: tuple[int, int]) -> tuple[Any, Any]:
        data, alpha = read_raw_region(self.store, self.tiles[t], rows, cols)
        prepared, mask, _ = prepare_region(
            self.backend, self.backend.asarray(data),
            None if alpha is None else self.backend.asarray(alpha), self.tiles[t],
            apply_gain_offset=False, want_weight=False)
        return prepared, mask

    def region(self, t: int, rows: tuple[int, int], cols: tuple[int, int]) -> tuple[Any, Any]:
        from .calibrate import luminance

        prepared, mask = self._prepared(t, rows, cols)
        return luminance(self.backend, prepared), mask

    def preview(self, t: int) -> Any:
        from .calibrate import rec601_luminance, recenter_preview_streamed

        h, w = self.tiles[t].cropped_hw

        def strips():
            for r0 in range(0, h, self.rows_per_strip):
                prepared, _ = self._prepared(t, (r0, min(h, r0 + self.rows_per_strip)), (0, w))
                yield r0, rec601_luminance(self.backend, prepared)

        return recenter_preview_streamed(self.backend, strips(), (h, w), self.preview_size)
