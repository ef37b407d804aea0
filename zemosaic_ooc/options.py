"""Phase5Options: the options of PHASE5_SPEC §9 under ZeMosaic's key names, plus ours.

(Minimal first version; the option catalogue with ignored/refused keys and
"did you mean" lives here too.)
"""
from __future__ import annotations

import dataclasses
import difflib
import json
from dataclasses import dataclass, field
from typing import Any, Mapping

from .errors import OptionError


@dataclass
class Phase5Options:
    # --- §2 tile preparation
    apply_master_tile_crop: bool = True
    master_tile_crop_percent: float = 3.0
    quality_crop_enabled: bool = False
    phase5_alpha_soft_weights: bool = True
    phase5_alpha_weight_floor: float = 0.02
    enable_tile_weighting: bool = True
    tile_weight_mode: str = "n_frames"
    tile_weight_v4_enabled: bool = True
    tile_weight_v4_curve: str = "sqrt"
    tile_weight_v4_strength: float = 1.0
    tile_weight_v4_min: float = 0.75
    tile_weight_v4_max: float = 1.35
    # --- §3 inter-tile calibration
    intertile_photometric_match: bool = True
    intertile_preview_size: int = 128
    intertile_overlap_min: float = 0.05
    intertile_sky_percentile: tuple[float, float] = (30.0, 70.0)
    intertile_robust_clip_sigma: float = 2.5
    intertile_prune_k: int = 8
    intertile_prune_weight_mode: str = "area"
    intertile_global_recenter: bool = True
    intertile_recenter_clip: tuple[float, float] = (0.85, 1.18)
    intertile_affine_blend: float = 0.30
    intertile_underconstrained_guard_enabled: bool = True
    intertile_underconstrained_max_pairs: int = 1
    intertile_underconstrained_max_active_tiles: int = 2
    intertile_underconstrained_force_mode: str = "offset_only"
    intertile_underconstrained_gain_clip: tuple[float, float] = (0.85, 1.18)
    intertile_underconstrained_offset_clip: tuple[float, float] = (-2000.0, 2000.0)
    # --- §5 coadd
    crop_follow_signal: bool = True
    # --- §6 two-pass
    two_pass_coverage_renorm: bool = True
    two_pass_cov_sigma_px: float = 50
    two_pass_cov_gain_clip: tuple[float, float] = (0.85, 1.18)
    # --- §7 patchwork
    patchwork_suppressor_enabled: bool = True
    patchwork_suppressor_strength: str = "strong"
    patchwork_suppressor_sigma_px: float = 64.0
    patchwork_suppressor_seam_band_px: int = 320
    patchwork_suppressor_max_delta: float = 0.30
    patchwork_suppressor_protect_stars: bool = False
    # --- §8 GPU
    use_gpu_phase5: bool = True
    # --- our own
    gpu: str = "auto"
    memory_budget: int = 2 * 1024**3
    block_size: int | None = None
    scheduler: str = "local"
    photometry: str = "zemosaic"
    skip_bad_tiles: bool = False

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any] | None = None) -> "Phase5Options":
        opts = cls()
        for key, value in (values or {}).items():
            opts.set(key, value)
        return opts

    def set(self, key: str, value: Any) -> None:
        names = [f.name for f in dataclasses.fields(self)]
        if key not in names:
            close = difflib.get_close_matches(key, names, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise OptionError(f"unknown option {key!r}{hint}")
        setattr(self, key, value)

    def to_dict(self) -> dict[str, Any]:
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in dataclasses.asdict(self).items()}


def parse_option_value(text: str) -> Any:
    """``--option KEY=VALUE`` values are JSON, falling back to a plain string."""
    try:
        return json.loads(text)
    except (json.JSONDecodeError, ValueError):
        return text
