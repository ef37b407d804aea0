"""Patchwork suppressor (spec §7), block by block with halos.

Blurs are OpenCV's ``GaussianBlur`` written once over the backend's ndimage:
a separable normalised Gaussian of radius round(1.5σ) (Python rounding) with
the REFLECT_101 border (ndimage mode "mirror").  Global statistics (median of
Y, max C, P99 of the seam gradient, P99.5 of |Δ|, P5 of |Y_f|) are exact
out-of-core percentiles computed by the pipeline between block stages.
Layouts: mosaic blocks (h, w, 3) float32; coverage (h, w) float32.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from ..backend import Backend
from .channels import all_finite
from .filters import opencv_gaussian_weights, separable_blur

LUMA = (0.2126, 0.7152, 0.0722)
PRESETS = {"low": (0.70, 0.90, 0.85), "normal": (1.0, 1.0, 1.0), "strong": (1.30, 1.10, 1.20)}


@dataclass(frozen=True)
class PatchworkParams:
    k: float
    sigma_small: float
    sigma_large: float
    sigma_seam: float
    delta: float

    def radius(self, sigma: float) -> int:
        return int(round(1.5 * sigma))

    @property
    def halo(self) -> int:
        return max(self.radius(self.sigma_large), self.radius(self.sigma_small))

    @property
    def seam_halo(self) -> int:
        return self.radius(self.sigma_seam) + 1


def resolve_params(opts: Any) -> PatchworkParams:
    """§7.2 parameter resolution, with the seam-heal function's own clips."""
    sigma0 = float(np.clip(float(opts.patchwork_suppressor_sigma_px), 8, 512))
    band = float(np.clip(int(opts.patchwork_suppressor_seam_band_px), 16, 1024))
    delta0 = float(np.clip(float(opts.patchwork_suppressor_max_delta), 0.02, 0.35))
    s_k, s_sigma, s_delta = PRESETS.get(str(opts.patchwork_suppressor_strength).lower(), PRESETS["normal"])
    if not bool(opts.patchwork_suppressor_protect_stars):
        s_k *= 1.10
    sigma_small = max(12.0, sigma0 * s_sigma)
    sigma_large = max(sigma_small + 1.0, 2.6 * sigma0 * s_sigma)
    sigma_seam = float(np.clip(band / 64.0, 1.2, 8.0))
    delta = float(np.clip(delta0 * s_delta, 0.02, 0.35))
    k = min(1.0, 0.45 * s_k)
    k = float(np.clip(k, 0.0, 1.0))
    sigma_small = float(np.clip(sigma_small, 1.0, 512.0))
    sigma_large = float(np.clip(sigma_large, sigma_small + 1.0, 1024.0))
    sigma_seam = float(np.clip(sigma_seam, 0.5, 64.0))
    delta = float(np.clip(delta, 0.01, 0.30))
    return PatchworkParams(k, sigma_small, sigma_large, sigma_seam, delta)


def blur(backend: Backend, plane: Any, sigma: float, rows: slice | None = None) -> Any:
    """§7.3 B_σ on a float32 plane (REFLECT_101 border = ndimage's "mirror"), float32 out
    (its rows ``rows`` only, when given)."""
    return separable_blur(backend, plane, opencv_gaussian_weights(sigma), "mirror", rows)


def luminance(backend: Backend, mosaic: Any) -> Any:
    xp = backend.xp
    return (xp.float32(LUMA[0]) * mosaic[..., 0] + xp.float32(LUMA[1]) * mosaic[..., 1]
            + xp.float32(LUMA[2]) * mosaic[..., 2]).astype(xp.float32)


def valid_mask(backend: Backend, mosaic: Any, coverage: Any, alpha: Any) -> Any:
    xp = backend.xp
    return (all_finite(xp, mosaic) & (alpha > 0) & xp.isfinite(coverage) & (coverage > 0))


def filled_luminance(backend: Backend, mosaic: Any, valid: Any, median_y: float) -> Any:
    xp = backend.xp
    y = luminance(backend, mosaic)
    return xp.where(valid, y, xp.float32(median_y)).astype(xp.float32)


def seam_source(backend: Backend, coverage: Any, max_coverage: float) -> Any:
    """§7.4 step 4: Z = clip(nan_to_num(C) / max(C), 0, 1)."""
    xp = backend.xp
    return xp.clip(xp.nan_to_num(coverage).astype(xp.float32) / xp.float32(max_coverage), 0.0, 1.0)


def gradient_magnitude(backend: Backend, z: Any) -> Any:
    """§7.4 step 5: numpy-gradient magnitude (central inside, one-sided at the borders)."""
    xp = backend.xp
    gy, gx = xp.gradient(z)
    return xp.sqrt(gx * gx + gy * gy).astype(xp.float32)


def seam_weight(backend: Backend, gradient: Any, g99: float, sigma_seam: float) -> Any:
    xp = backend.xp
    ratio = xp.clip(gradient / xp.float32(g99), 0.0, 1.0).astype(xp.float32)
    return xp.clip(blur(backend, ratio, sigma_seam), 0.0, 1.0)


def apply_correction(backend: Backend, mosaic: Any, y_filled: Any, valid: Any, w_seam: Any,
                     delta: Any, cap: float, eps: float, params: PatchworkParams) -> Any:
    """§7.4 steps 8–12 on a block (the Δ cap, correction, ratio clip, output)."""
    xp = backend.xp
    delta = xp.clip(delta, -cap, cap)
    corr = xp.float32(params.k) * (w_seam * valid.astype(xp.float32)) * delta
    with np.errstate(invalid="ignore", divide="ignore"):
        ratio = xp.where(valid, (y_filled - corr) / xp.maximum(y_filled, xp.float32(eps)), xp.float32(1.0))
    ratio = xp.clip(ratio, 1.0 - params.delta, 1.0 + params.delta).astype(xp.float32)
    out = xp.where(valid[..., None], mosaic * ratio[..., None], mosaic)
    return out.astype(xp.float32)
