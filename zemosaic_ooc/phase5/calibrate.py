"""Inter-tile photometric calibration (spec §3): pair fits, solver M0 and its post-steps.

One gain g_t and one offset o_t per tile, fitted on luminance previews and
applied to all three channels.  Faithful to ZeMosaic 271f109, quirks included
(CRPIX-clamped overlap boxes, sky band on the pair mean, M0's soft anchor that
can shrink every gain, the under-constrained guard, the P8 clamp).

Memory: a pair needs the luminance and mask of its two tiles (each tile must
fit in the budget); previews are at most 128 px on a side.
"""
from __future__ import annotations

import logging
import math
import warnings
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import numpy as np
from astropy.io import fits
from astropy.wcs import WCS, FITSFixedWarning

from ..backend import Backend
from ..concurrency import ordered_map
from .graph import DisjointSets
from .grid import OverlapPair, clamped_boxes, overlap_pairs_with_cascade
from .mapping import TileGeometry, output_to_tile
from .resample import region_bounds, sample_bilinear

log = logging.getLogger(__name__)

GAIN_CLAMP = (0.75, 1.25)        # §3.9 P8 (solver-settings constants, never passed)
OFFSET_CLAMP_ADU = 50.0


@dataclass
class PairFit:
    i: int
    j: int
    a: float
    b: float
    weight: float
    n_samples: int = 0


@dataclass
class CalibrationResult:
    """Applied per-tile gains/offsets and what led to them (for the summary and report)."""

    gains: list[float]
    offsets: list[float]
    applied: bool
    status: str
    pairs_found: list[tuple[int, int]] = field(default_factory=list)
    pair_fits: list[PairFit] = field(default_factory=list)
    anchor: int | None = None
    solver_output: list[tuple[float, float]] = field(default_factory=list)
    after_recenter: list[tuple[float, float]] = field(default_factory=list)
    after_blend: list[tuple[float, float]] = field(default_factory=list)
    guard_reasons: list[str] = field(default_factory=list)
    overlap_threshold: float = 0.0

    def to_json(self) -> dict[str, Any]:
        return {
            "gains": self.gains, "offsets": self.offsets, "applied": self.applied,
            "status": self.status, "pairs_found": [list(p) for p in self.pairs_found],
            "pair_fits": [vars(p) for p in self.pair_fits], "anchor": self.anchor,
            "solver_output": [list(v) for v in self.solver_output],
            "after_recenter": [list(v) for v in self.after_recenter],
            "after_blend": [list(v) for v in self.after_blend],
            "guard_reasons": self.guard_reasons, "overlap_threshold": self.overlap_threshold,
        }


# --------------------------------------------------------------------------- area resize
def area_weights(n_in: int, n_out: int) -> np.ndarray:
    """OpenCV INTER_AREA weights (n_out × n_in): fractional overlap of [o·s, (o+1)·s) / s."""
    scale = n_in / n_out
    weights = np.zeros((n_out, n_in), dtype=np.float64)
    for o in range(n_out):
        start, stop = o * scale, (o + 1) * scale
        first, last = int(math.floor(start)), min(n_in, int(math.ceil(stop)))
        for i in range(first, last):
            overlap = min(stop, i + 1) - max(start, i)
            if overlap > 0:
                weights[o, i] = overlap / scale
    return weights


def area_resize(backend: Backend, plane: Any, out_hw: tuple[int, int]) -> Any:
    """INTER_AREA resize of a 2-D float plane; NaN where any contributing pixel is NaN."""
    xp = backend.xp
    h_in, w_in = plane.shape
    wy = backend.asarray(area_weights(h_in, out_hw[0]))
    wx = backend.asarray(area_weights(w_in, out_hw[1]))
    nan = xp.isnan(plane)
    values = wy @ xp.where(nan, 0.0, plane).astype(xp.float64) @ wx.T
    touched = ((wy > 0).astype(xp.float64) @ nan.astype(xp.float64) @ (wx > 0).astype(xp.float64).T) > 0
    return xp.where(touched, xp.nan, values).astype(xp.float32)


# --------------------------------------------------------------------------- planes
def luminance(backend: Backend, data: Any) -> Any:
    """L_t: mean of the three channels in float32 (NaN if any is NaN); data (C, h, w)."""
    return backend.xp.mean(data, axis=0, dtype=backend.xp.float32)


def rec601_luminance(backend: Backend, data: Any) -> Any:
    """Y = 0.299·R + 0.587·G + 0.114·B in float32 (NaN where not finite); data (C, h, w)."""
    xp = backend.xp
    y = (xp.float32(0.299) * data[0] + xp.float32(0.587) * data[1]
         + xp.float32(0.114) * data[2]).astype(xp.float32)
    return xp.where(xp.isfinite(y), y, xp.float32(np.nan))


def recenter_preview(backend: Backend, y: Any, preview_size: int) -> Any:
    """§3.2 R_t from the Rec.601 luminance plane: INTER_AREA-reduced above the preview size."""
    h, w = y.shape
    if preview_size and max(h, w) > preview_size:
        scale = max(h, w) / float(preview_size)
        new_w = max(8, int(round(w / scale)))
        new_h = max(8, int(round(h / scale)))
        return area_resize(backend, y, (new_h, new_w))
    return y


def preview_shape(full_hw: tuple[int, int], preview_size: int) -> tuple[int, int] | None:
    """Output shape of the §3.2 INTER_AREA reduction, or None when no reduction applies."""
    h, w = full_hw
    if not preview_size or max(h, w) <= preview_size:
        return None
    scale = max(h, w) / float(preview_size)
    return (max(8, int(round(h / scale))), max(8, int(round(w / scale))))


def recenter_preview_streamed(backend: Backend, strips: Any, full_hw: tuple[int, int],
                              preview_size: int) -> Any:
    """§3.2 R_t from Rec.601 row strips ``(r0, y_strip)``: the INTER_AREA sums accumulated strip by strip."""
    xp = backend.xp
    out_hw = preview_shape(full_hw, preview_size)
    if out_hw is None:
        return xp.concatenate([y for _, y in strips], axis=0)
    wy = backend.asarray(area_weights(full_hw[0], out_hw[0]))
    wx = backend.asarray(area_weights(full_hw[1], out_hw[1]))
    wx_pos = (wx > 0).astype(xp.float64)
    values = xp.zeros(out_hw, dtype=xp.float64)
    touched = xp.zeros(out_hw, dtype=xp.float64)
    for r0, y in strips:
        r1 = r0 + y.shape[0]
        nan = xp.isnan(y)
        values += wy[:, r0:r1] @ xp.where(nan, 0.0, y).astype(xp.float64) @ wx.T
        touched += (wy[:, r0:r1] > 0).astype(xp.float64) @ nan.astype(xp.float64) @ wx_pos.T
    return xp.where(touched > 0, xp.nan, values).astype(xp.float32)


class CalibrationSource:
    """What the calibration reads of the prepared tiles (with the §2.8 NaN, before any gain)."""

    def region(self, t: int, rows: tuple[int, int], cols: tuple[int, int]) -> tuple[Any, Any]:
        """(L_t, M_t) float32 on cropped-tile rows × cols."""
        raise NotImplementedError

    def preview(self, t: int) -> Any:
        """R_t (§3.2), at most ``intertile_preview_size`` on a side."""
        raise NotImplementedError


# --------------------------------------------------------------------------- pair grids
def _pair_target_wcs(out_header: fits.Header, bbox: tuple[int, int, int, int],
                     preview_size: int) -> tuple[WCS, tuple[int, int]]:
    """§3.5 steps 1–2: the cutout WCS of the pair bbox, rescaled to the preview."""
    y0, y1, x0, x1 = bbox
    sub_w, sub_h = max(1, x1 - x0), max(1, y1 - y0)
    header = out_header.copy()
    header["NAXIS1"] = sub_w
    header["NAXIS2"] = sub_h
    header["CRPIX1"] = float(header["CRPIX1"]) - x0
    header["CRPIX2"] = float(header["CRPIX2"]) - y0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FITSFixedWarning)
        target = WCS(header)
    shape_out = (sub_h, sub_w)
    max_dim = max(sub_h, sub_w)
    if max_dim > preview_size:
        scale = preview_size / max_dim
        new_w = max(8, int(round(sub_w * scale)))
        new_h = max(8, int(round(sub_h * scale)))
        scale_x, scale_y = sub_w / new_w, sub_h / new_h
        preview = target.deepcopy()
        preview.wcs.crpix[0] = (float(preview.wcs.crpix[0]) - 0.5) / scale_x + 0.5
        preview.wcs.crpix[1] = (float(preview.wcs.crpix[1]) - 0.5) / scale_y + 0.5
        if preview.wcs.has_cd():
            preview.wcs.cd[0, :] *= scale_x
            preview.wcs.cd[1, :] *= scale_y
        else:
            preview.wcs.cdelt[0] *= scale_x
            preview.wcs.cdelt[1] *= scale_y
        preview.pixel_shape = (new_w, new_h)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                preview.fix()
            except Exception:
                pass
        target = preview
        shape_out = (new_h, new_w)
    return target, shape_out


def _reproject_tile_planes(backend: Backend, source: CalibrationSource, t: int, geom: TileGeometry,
                           target: WCS, shape_out: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """reproject_interp of L_t and M_t onto a small target grid, as float32 (reading only the region needed)."""
    ys, xs = np.mgrid[0:shape_out[0], 0:shape_out[1]].astype(np.float64)
    uu, vv = output_to_tile(geom, target, xs.ravel(), ys.ravel())
    bounds = region_bounds(uu, vv, geom.cropped_hw, np)
    if bounds is None:
        empty = np.full(shape_out, np.nan, dtype=np.float32)
        return empty, empty.copy()
    r0, r1, c0, c1 = bounds
    lum, mask = source.region(t, (r0, r1), (c0, c1))
    planes = backend.xp.stack([lum, mask])
    values = backend.to_host(sample_bilinear(backend, planes, (r0, c0), geom.cropped_hw,
                                             backend.asarray(uu), backend.asarray(vv)))
    return (values[0].astype(np.float32).reshape(shape_out),
            values[1].astype(np.float32).reshape(shape_out))


def _mask_valid(mask_reproj: np.ndarray | None) -> np.ndarray | None:
    if mask_reproj is None:
        return None
    finite = np.isfinite(mask_reproj)
    if not finite.any():
        return None
    threshold = 0.5 if float(np.max(mask_reproj[finite])) > 0.5 else 0.0
    with np.errstate(invalid="ignore"):
        return finite & (mask_reproj > threshold)


def robust_affine_fit(x_values: np.ndarray, y_values: np.ndarray,
                      clip_sigma: float = 2.5) -> tuple[float, float] | None:
    """§3.5 step 7: iterated OLS with κσ clipping (≤ 6 rounds); the last OLS solution."""
    if x_values.size < 16:
        return None
    x = x_values.astype(np.float64, copy=False)
    y = y_values.astype(np.float64, copy=False)
    mask = np.ones_like(x, dtype=bool)
    clip_sigma = max(1.0, float(clip_sigma))
    result = (1.0, 0.0)
    for _ in range(6):
        if mask.sum() < 8:
            break
        design = np.vstack([x[mask], np.ones(mask.sum(), dtype=np.float64)]).T
        try:
            solution, *_ = np.linalg.lstsq(design, y[mask], rcond=None)
        except Exception:
            return None
        a, b = float(solution[0]), float(solution[1])
        result = (a, b)
        residuals = y - (a * x + b)
        sigma = float(np.std(residuals[mask]))
        if not math.isfinite(sigma) or sigma <= 1e-6:
            break
        new_mask = mask & (np.abs(residuals) <= clip_sigma * sigma)
        if new_mask.sum() == mask.sum() or new_mask.sum() < 8:
            break
        mask = new_mask
    return result


def fit_pair(backend: Backend, pair: OverlapPair, source: CalibrationSource,
             geom_i: TileGeometry, geom_j: TileGeometry, out_header: fits.Header,
             preview_size: int, sky_percentile: Sequence[float], clip_sigma: float) -> PairFit | None:
    """§3.5 for one pair: previews, valid samples, sky band, robust fit."""
    target, shape_out = _pair_target_wcs(out_header, pair.bbox, preview_size)
    arr_i, rm_i = _reproject_tile_planes(backend, source, pair.i, geom_i, target, shape_out)
    arr_j, rm_j = _reproject_tile_planes(backend, source, pair.j, geom_j, target, shape_out)
    valid = np.isfinite(arr_i) & np.isfinite(arr_j)
    for mv in (_mask_valid(rm_i), _mask_valid(rm_j)):
        if mv is not None:
            valid &= mv
    if not valid.any():
        return None
    sample_i = arr_i[valid]
    sample_j = arr_j[valid]
    if sample_i.size < 64:
        return None
    sky = 0.5 * (sample_i + sample_j)
    p_low = np.percentile(sky, float(sky_percentile[0]))
    p_high = np.percentile(sky, float(sky_percentile[1]))
    if not (np.isfinite(p_low) and np.isfinite(p_high)):
        return None
    if p_high <= p_low:
        p_low, p_high = np.nanmin(sky), np.nanmax(sky)
    band = (sky >= p_low) & (sky <= p_high)
    if band.sum() < 32:
        band = np.ones_like(sky, dtype=bool)
    fit = robust_affine_fit(sample_i[band], sample_j[band], clip_sigma)
    if fit is None:
        return None
    return PairFit(pair.i, pair.j, fit[0], fit[1], pair.weight, int(sample_i.size))


# --------------------------------------------------------------------------- solver
def choose_anchor(connectivity: np.ndarray, tile_weights: Sequence[float] | None) -> int:
    """§3.6: argmax(c_t·ψ_t) with ψ = sqrt(τ/median τ); first index on ties."""
    n = len(connectivity)
    if tile_weights is None:
        return int(np.argmax(connectivity)) if np.any(connectivity > 0) else 0
    weights = np.asarray(tile_weights, dtype=np.float64)
    weights = np.where(np.isfinite(weights) & (weights > 0), weights, 1.0)
    positive = weights[weights > 0]
    median = float(np.median(positive)) if positive.size else 1.0
    if not math.isfinite(median) or median <= 0:
        median = 1.0
    scores = np.sqrt(weights / median)
    scores = np.where(np.isfinite(scores) & (scores > 0), scores, 1.0)
    if np.any(connectivity > 0):
        return int(np.argmax(connectivity * scores))
    return int(np.argmax(scores)) if n else 0


def solve_m0(n_tiles: int, entries: Sequence[PairFit], anchor: int) -> tuple[list[tuple[float, float]], np.ndarray]:
    """§3.7 solver M0: weighted least squares with a soft anchor; returns (post-reset, raw)."""
    rows: list[np.ndarray] = []
    rhs: list[float] = []
    for e in entries:
        if not math.isfinite(e.a) or abs(e.a) < 1e-6:
            continue
        s = math.sqrt(max(1.0, float(e.weight)))
        row = np.zeros(2 * n_tiles)
        row[e.i] = -s
        row[e.j] = e.a * s
        rows.append(row)
        rhs.append(0.0)
        row = np.zeros(2 * n_tiles)
        row[n_tiles + e.i] = s
        row[n_tiles + e.j] = -s
        row[e.j] = -e.b * s
        rows.append(row)
        rhs.append(0.0)
    row = np.zeros(2 * n_tiles)
    row[anchor] = 1.0
    rows.append(row)
    rhs.append(1.0)
    row = np.zeros(2 * n_tiles)
    row[n_tiles + anchor] = 1.0
    rows.append(row)
    rhs.append(0.0)
    solution, *_ = np.linalg.lstsq(np.vstack(rows), np.asarray(rhs), rcond=None)
    result = []
    for t in range(n_tiles):
        g, o = float(solution[t]), float(solution[n_tiles + t])
        if not math.isfinite(g) or abs(g) < 1e-6:
            g = 1.0
        if not math.isfinite(o):
            o = 0.0
        result.append((g, o))
    return result, solution


def _trivial(values: Sequence[tuple[float, float]]) -> bool:
    return all(abs(g - 1.0) <= 1e-6 and abs(o) <= 1e-6 for g, o in values)


def _pair_clip(value: Sequence[float], default: tuple[float, float]) -> tuple[float, float]:
    try:
        lo, hi = float(value[0]), float(value[1])
    except Exception:
        return default
    if not (math.isfinite(lo) and math.isfinite(hi)):
        return default
    return (min(lo, hi), max(lo, hi))


def post_steps(solution: list[tuple[float, float]], recenter_medians: Callable[[list[tuple[float, float]]], list[float]] | None,
               opts: Any, *, tile_ids: Sequence[str], guard_counts: dict[str, int],
               result: CalibrationResult) -> list[tuple[float, float]] | None:
    """§3.9 P1–P8; returns the applied (g, o) per tile or None for "no calibration"."""
    values = [(1.0 if not math.isfinite(g) else float(g), 0.0 if not math.isfinite(o) else float(o))
              for g, o in solution]
    if _trivial(values):                                                    # P1
        result.status = "trivial_solution"
        return None
    if recenter_medians is not None:                                        # P2
        medians = recenter_medians(values)
        usable = [m for m in medians if math.isfinite(m) and m > 0]
        if usable:
            target = float(np.median(usable))
            lo, hi = _pair_clip(opts.intertile_recenter_clip, (0.85, 1.18))
            for t, m in enumerate(medians):
                if math.isfinite(m) and m > 0:
                    rho = min(hi, max(lo, target / m))
                    values[t] = (rho * values[t][0], rho * values[t][1])
    result.after_recenter = list(values)
    blend = float(opts.intertile_affine_blend or 1.0)                       # P4
    blend = min(1.0, max(0.0, blend))
    if blend < 0.999999:
        values = [(1.0 + blend * (g - 1.0), blend * o) for g, o in values]
        if _trivial(values):
            result.after_blend = list(values)
            result.status = "trivial_after_blend"
            return None
    result.after_blend = list(values)
    if len(set(tile_ids)) != len(tile_ids):                                 # P5
        result.status = "duplicate_tile_ids"
        return None
    if opts.intertile_underconstrained_guard_enabled:                       # P6
        max_pairs = int(opts.intertile_underconstrained_max_pairs or 1)
        max_active = int(opts.intertile_underconstrained_max_active_tiles or 2)
        reasons = []
        active = guard_counts.get("active_tiles", 0)
        if active <= 0:
            active = len(values)
        raw_pairs = guard_counts.get("raw_pairs", 0) or -1
        pruned_pairs = guard_counts.get("pruned_pairs", 0) or -1
        if 0 < active <= max_active:
            reasons.append(f"active_tiles<={max_active}")
        if 0 <= raw_pairs <= max_pairs:
            reasons.append(f"raw_pairs<={max_pairs}")
        if 0 <= pruned_pairs <= max_pairs:
            reasons.append(f"pruned_pairs<={max_pairs}")
        if reasons:
            result.guard_reasons = reasons
            mode = str(opts.intertile_underconstrained_force_mode or "offset_only").lower()
            if mode == "disable_photometric":
                result.status = "guard_disabled"
                return None
            g_lo, g_hi = _pair_clip(opts.intertile_underconstrained_gain_clip, (0.85, 1.18))
            o_lo, o_hi = _pair_clip(opts.intertile_underconstrained_offset_clip, (-2000.0, 2000.0))
            values = [(max(g_lo, min(g_hi, 1.0)), max(o_lo, min(o_hi, o))) for _, o in values]
    if len({(round(g, 5), round(o, 5)) for g, o in values}) <= 1:          # P7
        result.status = "degenerate"
        return None
    clamped = []                                                            # P8
    for g, o in values:
        g = min(GAIN_CLAMP[1], max(GAIN_CLAMP[0], g))
        o = max(-OFFSET_CLAMP_ADU, min(OFFSET_CLAMP_ADU, o))
        clamped.append((g, o))
    result.status = "applied"
    return clamped


TileLoader = Callable[[int], tuple[Any, Any | None]]


def calibrate(backend: Backend, geometries: Sequence[TileGeometry], tile_ids: Sequence[str],
              taus: Sequence[float], out_wcs: WCS, shape_hw: tuple[int, int], opts: Any,
              source: CalibrationSource,
              progress: Callable[[int, int], None] | None = None, workers: int = 1) -> CalibrationResult:
    """§3 end to end, reading tiles through ``source``.

    A pair reads only the tile regions under its preview grid, and R_t is
    accumulated strip by strip, so memory stays far below one tile.  The pairs (and
    the recentring previews) are measured on ``workers`` threads; the results are
    taken in pair order, so they do not depend on it.
    """
    # the pair fits use ``warnings.catch_warnings``, which is not thread-safe: the filters are
    # saved here and restored once every worker has finished (as ingest does)
    with warnings.catch_warnings():
        return _calibrate(backend, geometries, tile_ids, taus, out_wcs, shape_hw, opts, source,
                          progress, workers)


def _calibrate(backend: Backend, geometries: Sequence[TileGeometry], tile_ids: Sequence[str],
               taus: Sequence[float], out_wcs: WCS, shape_hw: tuple[int, int], opts: Any,
               source: CalibrationSource, progress: Callable[[int, int], None] | None,
               workers: int) -> CalibrationResult:
    """:func:`calibrate` inside its warnings guard."""
    n_tiles = len(geometries)
    result = CalibrationResult(gains=[1.0] * n_tiles, offsets=[0.0] * n_tiles, applied=False,
                               status="not_run")
    if n_tiles < 2:
        result.status = "fewer_than_two_tiles"
        return result
    out_header = out_wcs.to_header()
    boxes = clamped_boxes(geometries, out_wcs, shape_hw)
    pairs, threshold = overlap_pairs_with_cascade(boxes, shape_hw, float(opts.intertile_overlap_min))
    result.overlap_threshold = threshold
    result.pairs_found = [(p.i, p.j) for p in pairs]
    if not pairs:
        result.status = "no_overlap_pairs"
        return result
    # §3.4 pruning is inactive below 10 tiles or with few pairs; it is applied when due.
    kept = prune_pairs(pairs, n_tiles, int(opts.intertile_prune_k))

    preview_size = max(128, int(opts.intertile_preview_size))

    entries: list[PairFit] = []
    connectivity = np.zeros(n_tiles)
    measured = ordered_map(lambda pair: fit_pair(backend, pair, source, geometries[pair.i],
                                                 geometries[pair.j], out_header, preview_size,
                                                 opts.intertile_sky_percentile,
                                                 opts.intertile_robust_clip_sigma),
                           kept, workers)
    for k, (pair, fit) in enumerate(measured):
        if isinstance(fit, BaseException):
            raise fit
        if progress:
            progress(k + 1, len(kept))
        if fit is None:
            continue
        result.pair_fits.append(fit)
        entries.extend([fit, fit])                 # the legacy duplicate (§3.5 step 8)
        connectivity[fit.i] += fit.weight
        connectivity[fit.j] += fit.weight
    if not entries:
        result.status = "no_usable_pair"
        return result
    anchor = choose_anchor(connectivity, list(taus))
    result.anchor = anchor
    solution, _raw = solve_m0(n_tiles, entries, anchor)
    result.solver_output = list(solution)

    recenter: Callable[[list[tuple[float, float]]], list[float]] | None = None
    if opts.intertile_global_recenter:
        def recenter_medians(values: list[tuple[float, float]]) -> list[float]:
            def median(t: int) -> float:
                g, o = values[t]
                preview = backend.to_host(source.preview(t))
                corrected = preview.astype(np.float32) * np.float32(g) + np.float32(o)
                corrected = corrected[~np.isnan(corrected)]     # np.nanmedian, without its warning
                return float(np.median(corrected)) if corrected.size else float("nan")

            medians = []
            for _, value in ordered_map(median, range(len(values)), workers):
                if isinstance(value, BaseException):
                    raise value
                medians.append(value)
            return medians

        recenter = recenter_medians

    active = {p.i for p in pairs} | {p.j for p in pairs}
    guard_counts = {"active_tiles": len(active), "raw_pairs": len(pairs), "pruned_pairs": len(kept)}
    applied = post_steps(solution, recenter, opts, tile_ids=list(tile_ids),
                         guard_counts=guard_counts, result=result)
    if applied is None:
        return result
    result.gains = [g for g, _ in applied]
    result.offsets = [o for _, o in applied]
    result.applied = True
    return result


def prune_pairs(pairs: list[OverlapPair], n_tiles: int, k: int) -> list[OverlapPair]:
    """§3.4: keep each tile's K heaviest pairs plus bridges, when N ≥ 10 and pairs > 2·N·K."""
    if n_tiles < 10 or len(pairs) <= 2 * n_tiles * k:
        return list(pairs)
    order = sorted(pairs, key=lambda p: (-p.weight, p.i, p.j))
    keep: set[tuple[int, int]] = set()
    for t in range(n_tiles):
        incident = [p for p in order if p.i == t or p.j == t][:k]
        keep.update((p.i, p.j) for p in incident)
    sets = DisjointSets(n_tiles)
    for p in order:
        if (p.i, p.j) in keep:
            sets.union(p.i, p.j)
    active = {p.i for p in pairs} | {p.j for p in pairs}
    for p in order:
        if sets.n_groups(active) <= 1:
            break
        if sets.find(p.i) != sets.find(p.j):
            keep.add((p.i, p.j))
            sets.union(p.i, p.j)
    if sets.n_groups(active) > 1:
        return list(pairs)
    return [p for p in pairs if (p.i, p.j) in keep]
