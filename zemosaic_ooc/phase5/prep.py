"""Tile preparation (spec §2) as a pure function of a raw tile region and per-tile scalars.

The driver decides every per-tile scalar once (:class:`TilePlan`: crop, alpha
scaling, soft-weight floor, tile weight τ, the §2.8 NaN threshold, the applied
inter-tile gain/offset); :func:`prepare_region` then turns any region of the raw
tile into the working data ZeMosaic's coadd sees, on any backend.  Since every
step of §2.2–§2.8 and §3.9 P9 is per pixel, a region gives exactly the pixels
of the whole prepared tile.

Layouts: raw data (C, h, w) float32; alpha (h, w) raw dtype; results: data
(C, h, w) float32 (NaN = no data), mask m (h, w) float32, weight ω (h, w) float64.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any, Sequence

import numpy as np

from ..backend import Backend


@dataclass
class TilePlan:
    """Everything a block task needs to know about one tile (JSON-serialisable)."""

    index: int
    tile_id: str
    header_text: str
    shape_hw: tuple[int, int]          # uncropped
    crop_hw: tuple[int, int]           # (dh, dw)
    has_alpha: bool
    alpha_scale_255: bool              # integer dtype with max > 1 → /255 (§2.2)
    soft_weights: bool
    weight_floor: float
    tau: float                         # §2.6 tile weight (1 when weighting is off)
    nan_threshold: float | None = None  # §2.8 θ, None when calibration did not run
    gain: float = 1.0                  # §3.9 applied gain
    offset: float = 0.0                # §3.9 applied offset
    empty_flag: bool = False           # ZMT_EMPT (§5.3)
    box: tuple[int, int, int, int] | None = None          # §4.2 box on Ω
    union_bbox: tuple[int, int, int, int] | None = None   # §5.3 nearest-neighbour bbox
    bg_offsets: list[float] = field(default_factory=lambda: [0.0, 0.0, 0.0])  # §4.4, per channel
    two_pass_gain: float = 1.0         # §6.4
    bg_offsets_pass2: list[float] = field(default_factory=lambda: [0.0, 0.0, 0.0])
    gain_rgb: list[float] | None = None    # corrected photometry: per-channel gain (R, G, B)
    offset_rgb: list[float] | None = None  # corrected photometry: per-channel offset (ADU)

    @property
    def cropped_hw(self) -> tuple[int, int]:
        return (self.shape_hw[0] - 2 * self.crop_hw[0], self.shape_hw[1] - 2 * self.crop_hw[1])

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        for key in ("shape_hw", "crop_hw", "box", "union_bbox"):
            if d[key] is not None:
                d[key] = list(d[key])
        d["bg_offsets"] = [None if not math.isfinite(v) else v for v in self.bg_offsets]
        d["bg_offsets_pass2"] = [None if not math.isfinite(v) else v for v in self.bg_offsets_pass2]
        return d

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> "TilePlan":
        d = dict(d)
        for key in ("shape_hw", "crop_hw", "box", "union_bbox"):
            if d.get(key) is not None:
                d[key] = tuple(d[key])
        d["bg_offsets"] = [float("nan") if v is None else float(v) for v in d["bg_offsets"]]
        d["bg_offsets_pass2"] = [float("nan") if v is None else float(v) for v in d["bg_offsets_pass2"]]
        return cls(**d)


def tile_weights_v4(raw_counts: Sequence[float], *, enabled: bool, mode: str, v4: bool,
                    curve: str = "sqrt", strength: float = 1.0, w_min: float = 0.75,
                    w_max: float = 1.35) -> list[float]:
    """§2.6: τ_t from frame counts (v4 curve + clip), or 1 when weighting is off."""
    if not enabled or str(mode).lower() != "n_frames":
        return [1.0] * len(raw_counts)
    counts = np.array([c if (math.isfinite(c) and c > 0) else 1.0 for c in raw_counts], dtype=np.float64)
    if not v4:
        return [float(c) for c in counts]
    median = float(np.median(counts)) if counts.size else 1.0
    if not math.isfinite(median) or median <= 0:
        median = 1.0
    ratio = counts / median
    curve = str(curve).lower()
    if curve == "log":
        shaped = 1.0 + np.log1p(np.maximum(0.0, ratio - 1.0))
    elif curve == "softcap":
        shaped = 1.0 + (ratio - 1.0) / (1.0 + np.abs(ratio - 1.0))
    else:
        shaped = np.sqrt(np.maximum(ratio, 1e-6))
    s = float(np.clip(strength, 0.0, 2.0))
    shaped = 1.0 + s * (shaped - 1.0)
    return [float(v) for v in np.clip(shaped, w_min, w_max)]


def normalized_alpha(backend: Backend, raw_alpha: Any, tile: TilePlan) -> Any:
    """§2.2: NaN/inf → 0, integer with max > 1 → /255, float32, clip [0, 1]."""
    xp = backend.xp
    alpha = xp.asarray(raw_alpha)
    if alpha.dtype.kind == "f":
        alpha = xp.nan_to_num(alpha, nan=0.0, posinf=0.0, neginf=0.0)
    if tile.alpha_scale_255:
        alpha = alpha.astype(xp.float32) / xp.float32(255.0)
    alpha = xp.clip(alpha.astype(xp.float32), 0.0, 1.0)
    return alpha


def soft_weight(backend: Backend, alpha: Any, tile: TilePlan) -> Any:
    """§2.4: a_t (float32) from the normalised alpha."""
    xp = backend.xp
    if tile.soft_weights:
        if tile.weight_floor > 0:
            return xp.where(alpha > 0, xp.maximum(alpha, xp.float32(tile.weight_floor)),
                            xp.float32(0.0)).astype(xp.float32)
        return alpha
    return (alpha > 0.5).astype(xp.float32)


def alpha_weight(backend: Backend, raw_alpha: Any, tile: TilePlan) -> Any:
    """§2.2 + §2.4: a_t (float32) of a tile with ALPHA, from the raw ALPHA plane."""
    return soft_weight(backend, normalized_alpha(backend, raw_alpha, tile), tile)


def region_mask(backend: Backend, raw_data: Any | None, raw_alpha: Any | None, tile: TilePlan) -> Any:
    """§2.5 mask m (h, w) float32 of a region: a_t with ALPHA (the data planes are not needed,
    ``raw_data`` may be None), else 1 where any channel of the (C, h, w) data is finite."""
    xp = backend.xp
    if tile.has_alpha and raw_alpha is not None:
        return alpha_weight(backend, raw_alpha, tile)
    return xp.any(xp.isfinite(xp.asarray(raw_data)), axis=0).astype(xp.float32)


def prepare_region(backend: Backend, raw_data: Any, raw_alpha: Any | None, tile: TilePlan, *,
                   apply_gain_offset: bool = True, want_weight: bool = True) -> tuple[Any, Any, Any]:
    """§2.4–§2.8 and §3.9 P9 on a region: returns (data, mask m, weight ω).

    data: (C, h, w) float32 with zero fill (§2.4), the §2.8 NaN fill when the
    calibration ran, then ×gain, +offset (per channel in the corrected mode); m: (h, w) float32 (§2.5);
    ω: (h, w) float64 = w·τ (§4.1), or None without ``want_weight``.
    """
    xp = backend.xp
    data = xp.array(raw_data, dtype=xp.float32, copy=True)
    mask = region_mask(backend, data, raw_alpha, tile)
    if tile.has_alpha and raw_alpha is not None:
        data = xp.where((mask > 0)[None], data, xp.float32(0.0))     # data[:, ~(a_t > 0)] = 0
        base_weight = mask
    else:
        base_weight = xp.clip(xp.nan_to_num(mask), 0.0, 1.0)
    if tile.nan_threshold is not None:
        data = xp.where((mask > tile.nan_threshold)[None], data, xp.float32(xp.nan))
    if apply_gain_offset and tile.gain_rgb is not None:
        # corrected photometry (phase5/corrected.py): one gain and offset per channel
        data *= backend.asarray(np.asarray(tile.gain_rgb, dtype=np.float32))[:, None, None]
        data += backend.asarray(np.asarray(tile.offset_rgb, dtype=np.float32))[:, None, None]
    elif apply_gain_offset:
        if tile.gain != 1.0:
            data *= xp.float32(tile.gain)   # python-float semantics: a float32 loop
        if tile.offset != 0.0:
            data += xp.float32(tile.offset)
    omega = base_weight.astype(xp.float64) * float(tile.tau) if want_weight else None
    return data, mask, omega


def union_mask(backend: Backend, raw_data: Any, raw_alpha: Any | None, tile: TilePlan) -> Any:
    """§5.3 step 1: b_t as float32 0/1 (ALPHA cast to uint8, /255, > 0.5; else all channels finite)."""
    xp = backend.xp
    if tile.empty_flag:
        return xp.zeros(raw_data.shape[-2:], dtype=xp.float32)
    if tile.has_alpha and raw_alpha is not None:
        alpha = xp.asarray(raw_alpha)
        if alpha.dtype.kind == "f":
            alpha = xp.nan_to_num(alpha, nan=0.0, posinf=0.0, neginf=0.0)
        alpha_u8 = alpha.astype(xp.uint8)
        return ((alpha_u8.astype(xp.float32) / xp.float32(255.0)) > 0.5).astype(xp.float32)
    return xp.all(xp.isfinite(raw_data), axis=0).astype(xp.float32)
