"""Corrected inter-tile photometry (opt-in, ``photometry='corrected'``).

The default calibration (:mod:`.calibrate`) is a faithful port of ZeMosaic's §3,
quirks included.  This module replaces only that stage, and only when asked:

1. **True overlap pairs.**  Two tiles pair when their §4.2 output boxes intersect;
   the samples then come from every output pixel of the intersection where both
   tiles have full weight (soft alpha = 1, data finite after the §2.8 fill).
2. **Binned samples.**  The overlap is walked in row strips (out of core, through
   :func:`.coadd.open_view`, the very resampling of the coadd); each tile's
   data are averaged over ``b × b`` output-pixel bins that are fully valid in both
   tiles.  Binning keeps every spatial mode larger than ``b`` px (nebulosity,
   stars) and divides the noise by ``b``.
3. **Per-channel robust fits, unbiased under noise in both tiles.**  For every
   channel, ``y = a·x + c`` between the bin means of tile i (x) and tile j (y) is
   fitted by Deming regression, with the noise-variance ratio δ = σ_j²/σ_i²
   estimated from each tile's own pixel-to-pixel differences in the overlap, a
   differential background plane fitted alongside (a gradient in one tile must not
   leak into the slope), and κσ clipping of the orthogonal residuals (stars
   resampled differently, cosmic leftovers).  Slope and level standard errors give
   each pair its weight.
4. **An anchored global solve that cannot collapse.**  Per channel and per
   connected component of the pair graph: log-gains ``ℓ_i − ℓ_j = log a_ij`` by
   weighted least squares with one tile's ℓ fixed at 0 (a hard constraint: its
   column is removed), then offsets ``O_i − O_j = G_j·ȳ_ij − G_i·x̄_ij`` (the two
   tiles' mean levels over the pair's kept bins made equal) the same way.  The
   result is then re-expressed so that the component's gains have a geometric mean
   of 1 and its offsets a mean of 0 (one common affine map of the component's
   output, which changes no relative calibration).
5. Every tile without a usable pair keeps gain 1 and offset 0; every component is
   calibrated on its own, and the result says so (``components``, ``isolated``).

The applied correction is per channel: ``data_c ← G_c·data_c + O_c`` in
:func:`.prep.prepare_region`, on whichever backend runs the block.  Gains and
offsets are plain float64 scalars of the plan, shared by CPU and GPU runs.

Layouts: samples are (n, 3) float64 bin means; gains/offsets ``[tile][R, G, B]``.
"""
from __future__ import annotations

import dataclasses
import logging
import math
import warnings
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import numpy as np

from ..backend import Backend
from ..concurrency import ordered_map
from ..store.tiles import TileStore
from .channels import all_finite
from .coadd import TileView, open_view
from .graph import DisjointSets
from .grid import Box, intersect
from .mapping import OutputGrid
from .prep import TilePlan
from .stats import robust_sigma

log = logging.getLogger(__name__)

N_CHANNELS = 3
FULL_WEIGHT = 0.999          # f ≥ 0.999·τ: the tile's full (unramped) alpha
MIN_BINS = 64                # fewer usable bins: the pair is not used
MIN_OVERLAP_PX = 1024        # boxes overlapping less than this are not tried
MAX_BINS_PER_PAIR = 250_000  # the bin side grows until a pair holds at most this many bins
MIN_BIN_PX = 4
CLIP_SIGMA = 3.0
MAX_CLIP_ROUNDS = 8
GAIN_PRIOR_SIGMA = 0.5       # log-gain prior (weight 1/0.5²), only felt by unconstrained gains
MAX_DIFFS_PER_PAIR = 400_000


@dataclass
class ChannelFit:
    """Deming fit of tile j against tile i in one channel: y ≈ slope·x + intercept (ADU)."""

    slope: float
    intercept: float
    slope_se: float
    mean_x: float                   # mean of the kept bins, tile i (ADU)
    mean_y: float                   # mean of the kept bins, tile j (ADU)
    level_se: float                 # standard error of mean_y − slope·mean_x − intercept scale (ADU)
    n_kept: int
    resid_sigma: float              # robust σ of y − (slope·x + intercept) over kept bins (ADU)
    noise_ratio: float              # δ = σ_j² / σ_i² used


@dataclass
class PairSamples:
    """What a pair's overlap gave: bin means per tile, and pixel noise per tile and channel."""

    x: np.ndarray                   # (n, 3) tile i bin means
    y: np.ndarray                   # (n, 3) tile j bin means
    position: np.ndarray            # (n, 2) bin centres (x, y) in output pixels
    noise_i: np.ndarray             # (3,) robust σ of pixel differences, tile i
    noise_j: np.ndarray             # (3,)
    bin_px: int
    n_pixels: int                   # output pixels valid in both tiles


@dataclass
class CorrectedPairFit:
    i: int
    j: int
    bin_px: int
    n_pixels: int
    n_bins: int
    channels: list[ChannelFit] = field(default_factory=list)
    usable: bool = True
    reason: str = ""

    def to_json(self) -> dict[str, Any]:
        return {"i": self.i, "j": self.j, "bin_px": self.bin_px, "n_pixels": self.n_pixels,
                "n_bins": self.n_bins, "usable": self.usable, "reason": self.reason,
                "channels": [_finite_dict(dataclasses.asdict(c)) for c in self.channels]}


@dataclass
class CorrectedCalibration:
    """Per-tile, per-channel gains and offsets of the corrected mode."""

    gains_rgb: list[list[float]]
    offsets_rgb: list[list[float]]
    pairs_tried: list[tuple[int, int]]
    pair_fits: list[CorrectedPairFit]
    components: list[list[int]]     # connected components with ≥ 2 tiles
    isolated: list[int]             # tiles left uncalibrated (no usable pair)
    anchors: list[int]              # the tile held fixed in each component's solve
    status: str

    @property
    def applied(self) -> bool:
        return self.status == "applied"


def _finite_dict(d: dict[str, Any]) -> dict[str, Any]:
    return {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in d.items()}


# --------------------------------------------------------------------------- pairs
def true_overlap_pairs(tiles: Sequence[TilePlan], min_overlap_px: int = MIN_OVERLAP_PX) -> list[tuple[int, int, Box]]:
    """(i, j, overlap box) for every two tiles whose §4.2 output boxes intersect, i < j."""
    pairs = []
    for a in range(len(tiles)):
        for b in range(a + 1, len(tiles)):
            box = intersect(tiles[a].box, tiles[b].box)
            if box is None:
                continue
            if (box[1] - box[0]) * (box[3] - box[2]) < min_overlap_px:
                continue
            pairs.append((a, b, box))
    return pairs


def choose_bin_px(box: Box, max_bins: int = MAX_BINS_PER_PAIR) -> int:
    """The bin side: at least 4 px, larger when the overlap would give too many bins."""
    area = max(1, (box[1] - box[0]) * (box[3] - box[2]))
    return max(MIN_BIN_PX, int(math.ceil(math.sqrt(area / float(max_bins)))))


def _strip_samples(xp: Any, view: TileView) -> tuple[Any, Any]:
    """A view's whole box, chunk by chunk: data (h, w, 3) float32 (NaN invalid), weight f (h, w)."""
    height, width = view.uu.shape
    data = xp.empty((height, width, N_CHANNELS), dtype=xp.float32)
    weight = xp.empty((height, width), dtype=xp.float32)
    for rows, stencil in view.chunks():
        d, f, _ = view.samples(stencil)
        data[rows] = d
        weight[rows] = f[..., 0]
    return data, weight


def pair_samples(backend: Backend, store: TileStore, tile_i: TilePlan, tile_j: TilePlan,
                 grid: OutputGrid, box: Box, *, strip_pixels: int = 1 << 20) -> PairSamples:
    """Bin means of both tiles over ``box``, strip by strip (memory: one strip of both tiles).

    A bin counts when all its ``b × b`` pixels are valid in both tiles (finite in every
    channel, full weight), so both means cover exactly the same pixels.  Pixel noise per
    tile and channel is the robust σ of horizontal neighbour differences over pixels
    valid in both tiles, divided by √2.
    """
    xp = backend.xp
    b = choose_bin_px(box)
    y0, y1, x0, x1 = box
    width = x1 - x0
    rows = max(b, (max(1, strip_pixels // max(1, width)) // b) * b)
    wb = width // b
    xs: list[np.ndarray] = []
    ys: list[np.ndarray] = []
    centres: list[np.ndarray] = []
    diffs_i: list[list[np.ndarray]] = [[] for _ in range(N_CHANNELS)]
    diffs_j: list[list[np.ndarray]] = [[] for _ in range(N_CHANNELS)]
    n_pixels = 0
    full_area = max(1, (y1 - y0) * width)
    diff_stride = max(1, int(math.ceil(full_area / float(MAX_DIFFS_PER_PAIR))))
    for sy0 in range(y0, y1, rows):
        sy1 = min(y1, sy0 + rows)
        hb = (sy1 - sy0) // b
        if hb == 0 or wb == 0:
            continue
        strip = (sy0, sy0 + hb * b, x0, x0 + wb * b)
        view_i = open_view(backend, store, tile_i, grid, strip)
        view_j = open_view(backend, store, tile_j, grid, strip)
        if view_i is None or view_j is None:
            continue
        data_i, weight_i = _strip_samples(xp, view_i)
        data_j, weight_j = _strip_samples(xp, view_j)
        valid = (all_finite(xp, data_i) & all_finite(xp, data_j)
                 & (weight_i >= FULL_WEIGHT * float(tile_i.tau))
                 & (weight_j >= FULL_WEIGHT * float(tile_j.tau)))
        n_pixels += int(xp.count_nonzero(valid))
        pair_ok = valid[:, 1:] & valid[:, :-1]
        for c in range(N_CHANNELS):
            for data, sink in ((data_i, diffs_i), (data_j, diffs_j)):
                plane = data[..., c]
                d = (plane[:, 1:] - plane[:, :-1])[pair_ok]
                sink[c].append(backend.to_host(d[::diff_stride]).astype(np.float64))
        bin_ok = xp.all(valid.reshape(hb, b, wb, b), axis=(1, 3))
        if not bool(xp.any(bin_ok)):
            continue
        mean_i = xp.mean(xp.moveaxis(xp.where(valid[..., None], data_i, 0.0).astype(xp.float64), -1, 0)
                         .reshape(N_CHANNELS, hb, b, wb, b), axis=(2, 4))
        mean_j = xp.mean(xp.moveaxis(xp.where(valid[..., None], data_j, 0.0).astype(xp.float64), -1, 0)
                         .reshape(N_CHANNELS, hb, b, wb, b), axis=(2, 4))
        xs.append(backend.to_host(mean_i[:, bin_ok]).T)
        ys.append(backend.to_host(mean_j[:, bin_ok]).T)
        rows_k, cols_k = np.nonzero(backend.to_host(bin_ok))
        centres.append(np.column_stack([x0 + (cols_k + 0.5) * b - 0.5, sy0 + (rows_k + 0.5) * b - 0.5]))
    empty = np.zeros((0, N_CHANNELS))
    x = np.concatenate(xs) if xs else empty
    y = np.concatenate(ys) if ys else empty
    position = np.concatenate(centres) if centres else np.zeros((0, 2))
    noise_i = np.array([robust_sigma(np.concatenate(d)) / math.sqrt(2.0) if d else float("nan")
                        for d in diffs_i])
    noise_j = np.array([robust_sigma(np.concatenate(d)) / math.sqrt(2.0) if d else float("nan")
                        for d in diffs_j])
    return PairSamples(x, y, position, noise_i, noise_j, b, n_pixels)


# --------------------------------------------------------------------------- fits
def deming_slope(sxx: float, syy: float, sxy: float, delta: float) -> float:
    """Deming (errors-in-variables) slope for the noise-variance ratio δ = σ_y²/σ_x².

    δ → ∞ is ordinary least squares of y on x; δ = 1 is orthogonal regression.
    """
    if sxy == 0.0:
        return float("nan")
    diff = syy - delta * sxx
    return (diff + math.sqrt(diff * diff + 4.0 * delta * sxy * sxy)) / (2.0 * sxy)


def robust_deming_fit(x: np.ndarray, y: np.ndarray, delta: float, *,
                      covariates: np.ndarray | None = None, clip_sigma: float = CLIP_SIGMA,
                      max_rounds: int = MAX_CLIP_ROUNDS) -> ChannelFit | None:
    """Deming fit of y on x with κσ clipping of orthogonal residuals (float64, ADU).

    ``covariates`` (n, k), optional: extra terms fitted alongside, ``y ≈ a·x + c + Z·β``
    (the pair's differential background plane): Z is partialled out of x and y, the
    Deming slope fitted on what is left, then c and β by least squares; they keep a smooth
    background difference between the two tiles from biasing the slope.  Returns None with fewer than
    :data:`MIN_BINS` samples, a non-positive slope or a degenerate spread.
    """
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    if x.size < MIN_BINS:
        return None
    if not (math.isfinite(delta) and delta > 0):
        delta = 1.0
    z = None if covariates is None else np.asarray(covariates, dtype=np.float64)
    beta = None if z is None else np.zeros(z.shape[1])
    keep = np.ones(x.size, dtype=bool)
    slope = intercept = float("nan")
    for _ in range(max_rounds):
        n = int(keep.sum())
        if n < MIN_BINS:
            return None
        # the covariates are partialled out of x and y (Frisch–Waugh), then Deming on what is left
        design = np.ones((n, 1)) if z is None else np.column_stack([np.ones(n), z[keep]])
        xr = x[keep] - design @ np.linalg.lstsq(design, x[keep], rcond=None)[0]
        yr = y[keep] - design @ np.linalg.lstsq(design, y[keep], rcond=None)[0]
        sxx, syy, sxy = float(xr @ xr) / n, float(yr @ yr) / n, float(xr @ yr) / n
        slope = deming_slope(sxx, syy, sxy, delta)
        if not (math.isfinite(slope) and slope > 0):
            return None
        coef = np.linalg.lstsq(design, y[keep] - slope * x[keep], rcond=None)[0]
        intercept = float(coef[0])
        if z is not None:
            beta = coef[1:]
        target = y if z is None else y - z @ beta
        ortho = (target - slope * x - intercept) / math.sqrt(delta + slope * slope)
        centre = float(np.median(ortho[keep]))
        sigma = robust_sigma(ortho[keep])
        if not math.isfinite(sigma) or sigma <= 0:
            break
        new_keep = np.abs(ortho - centre) <= clip_sigma * sigma
        if np.array_equal(new_keep, keep):
            break
        keep = new_keep
    n = int(keep.sum())
    target = y if z is None else y - z @ beta
    xk, yk = x[keep], target[keep]
    resid = yk - slope * xk - intercept
    resid_sigma = float(np.std(resid))
    design = np.ones((n, 1)) if z is None else np.column_stack([np.ones(n), z[keep]])
    spread_x = float(np.std(xk - design @ np.linalg.lstsq(design, xk, rcond=None)[0]))  # x's own leverage
    # errors-in-variables: the residual in y carries both tiles' noise, σ_r² ≈ σ_y² + a²σ_x²
    slope_se = resid_sigma / (math.sqrt(n) * spread_x) if spread_x > 0 else float("inf")
    return ChannelFit(slope=float(slope), intercept=float(intercept), slope_se=float(slope_se),
                      mean_x=float(x[keep].mean()), mean_y=float(y[keep].mean()),
                      level_se=resid_sigma / math.sqrt(n), n_kept=n, resid_sigma=resid_sigma,
                      noise_ratio=float(delta))


def fit_pair_channels(i: int, j: int, samples: PairSamples) -> CorrectedPairFit:
    """Per-channel robust fits of one pair, with a differential background plane over the
    bin centres; unusable when any channel fails."""
    fit = CorrectedPairFit(i, j, samples.bin_px, samples.n_pixels, int(samples.x.shape[0]))
    if samples.x.shape[0] < MIN_BINS:
        fit.usable, fit.reason = False, f"{samples.x.shape[0]} full bins in the overlap (< {MIN_BINS})"
        return fit
    centre = samples.position.mean(axis=0)
    half = np.maximum(np.abs(samples.position - centre).max(axis=0), 1.0)
    plane = (samples.position - centre) / half              # (n, 2) in [−1, 1]
    for c in range(N_CHANNELS):
        delta = (samples.noise_j[c] / samples.noise_i[c]) ** 2 if samples.noise_i[c] > 0 else 1.0
        channel = robust_deming_fit(samples.x[:, c], samples.y[:, c], float(delta),
                                    covariates=plane)
        if channel is None:
            fit.usable, fit.reason = False, f"no robust fit in channel {'RGB'[c]}"
            fit.channels = []
            return fit
        fit.channels.append(channel)
    return fit


# --------------------------------------------------------------------------- solve
def connected_components(n_tiles: int, edges: Sequence[tuple[int, int]]) -> list[list[int]]:
    """Connected components (sorted lists, ordered by their first tile) of an undirected graph."""
    sets = DisjointSets(n_tiles)
    for a, b in edges:
        sets.union(a, b)
    return sets.groups()


def _weighted_lstsq(rows: list[tuple[dict[int, float], float, float]], columns: list[int]) -> np.ndarray:
    """Solve Σ w·(row·v − rhs)² over the unknowns ``columns`` (a fixed tile is simply absent)."""
    index = {t: k for k, t in enumerate(columns)}
    design = np.zeros((len(rows), len(columns)))
    rhs = np.zeros(len(rows))
    for r, (coeffs, value, weight) in enumerate(rows):
        s = math.sqrt(weight)
        for t, coeff in coeffs.items():
            if t in index:
                design[r, index[t]] = coeff * s
        rhs[r] = value * s
    solution, *_ = np.linalg.lstsq(design, rhs, rcond=None)
    return solution


def _solve_differences(component: Sequence[int], anchor: int, fits: Sequence[CorrectedPairFit],
                       equation: Callable[[CorrectedPairFit], tuple[float, float]],
                       prior_weight: float = 0.0) -> dict[int, float]:
    """Weighted least squares for ``v_i − v_j = value`` over the component's pairs, with
    ``v_anchor = 0`` a hard constraint; ``equation(fit)`` gives (value, weight); an optional
    prior ``v_t = 0`` of weight ``prior_weight`` on every other tile."""
    members = set(component)
    free = [t for t in component if t != anchor]
    values = {anchor: 0.0}
    if not free:
        return values
    rows = []
    for f in fits:
        if f.i in members:
            value, weight = equation(f)
            rows.append(({f.i: 1.0, f.j: -1.0}, value, weight))
    if prior_weight > 0:
        rows += [({t: 1.0}, 0.0, prior_weight) for t in free]
    for t, value in zip(free, _weighted_lstsq(rows, free)):
        values[t] = float(value)
    return values


def solve_component(component: Sequence[int], fits: Sequence[CorrectedPairFit], channel: int,
                    anchor: int) -> dict[int, tuple[float, float]]:
    """Gains and offsets of one component in one channel: {tile: (G, O)}.

    Log-gains and then offsets by weighted least squares with ``anchor`` fixed at
    (1, 0); then one common affine map so that gains have geometric mean 1 and
    offsets mean 0.  A weak prior ℓ_t = 0 (σ = 0.5) keeps a gain that no pair
    constrains (all overlaps flat) at 1 instead of leaving it undetermined.
    """
    def gain_equation(f: CorrectedPairFit) -> tuple[float, float]:
        ch = f.channels[channel]
        se = max(ch.slope_se / ch.slope, 1e-9)            # se of log a
        return math.log(ch.slope), 1.0 / (se * se)

    log_gain = _solve_differences(component, anchor, fits, gain_equation,
                                  prior_weight=1.0 / GAIN_PRIOR_SIGMA ** 2)
    gain = {t: math.exp(v) for t, v in log_gain.items()}

    def offset_equation(f: CorrectedPairFit) -> tuple[float, float]:
        ch = f.channels[channel]
        # equal mean levels over the pair's kept bins: G_i·x̄ + O_i = G_j·ȳ + O_j
        se = max(ch.level_se * max(gain[f.i], gain[f.j]), 1e-9)
        return gain[f.j] * ch.mean_y - gain[f.i] * ch.mean_x, 1.0 / (se * se)

    offset = _solve_differences(component, anchor, fits, offset_equation)
    scale = math.exp(-float(np.mean([log_gain[t] for t in component])))
    shift = -float(np.mean([scale * offset[t] for t in component]))
    return {t: (scale * gain[t], scale * offset[t] + shift) for t in component}


def choose_component_anchor(component: Sequence[int], fits: Sequence[CorrectedPairFit]) -> int:
    """The tile with the most valid overlap pixels in its pairs (first index on ties)."""
    totals = {t: 0 for t in component}
    for f in fits:
        if f.i in totals:
            totals[f.i] += f.n_pixels
            totals[f.j] += f.n_pixels
    return max(component, key=lambda t: (totals[t], -t))


def corrected_calibration(backend: Backend, store: TileStore, tiles: Sequence[TilePlan],
                          grid: OutputGrid, *, strip_pixels: int = 1 << 20,
                          progress: Callable[[int, int], None] | None = None,
                          workers: int = 1) -> CorrectedCalibration:
    """The corrected mode end to end, from the prepared tiles (before any gain) to gains/offsets.

    The pairs are sampled and fitted on ``workers`` threads (each holds one strip of its two
    tiles); every pair's fit is its own, so the result is the same as on one thread.
    """
    n_tiles = len(tiles)
    neutral = [dataclasses.replace(t, gain=1.0, offset=0.0, gain_rgb=None, offset_rgb=None) for t in tiles]
    gains = [[1.0] * N_CHANNELS for _ in range(n_tiles)]
    offsets = [[0.0] * N_CHANNELS for _ in range(n_tiles)]
    pairs = true_overlap_pairs(neutral)

    def fit(pair: tuple[int, int, Box]) -> CorrectedPairFit:
        i, j, box = pair
        samples = pair_samples(backend, store, neutral[i], neutral[j], grid, box, strip_pixels=strip_pixels)
        return fit_pair_channels(i, j, samples)

    fits: list[CorrectedPairFit] = []
    # the reads use ``warnings.catch_warnings``, which is not thread-safe: the filters are saved
    # here and restored once every worker has finished
    with warnings.catch_warnings():
        for k, (_, pair_fit) in enumerate(ordered_map(fit, pairs, workers)):
            if isinstance(pair_fit, BaseException):
                raise pair_fit
            fits.append(pair_fit)
            if progress:
                progress(k + 1, len(pairs))
    usable = [f for f in fits if f.usable]
    for f in fits:
        if not f.usable:
            log.info("corrected photometry: pair %s-%s not used: %s",
                     tiles[f.i].tile_id, tiles[f.j].tile_id, f.reason)
    groups = connected_components(n_tiles, [(f.i, f.j) for f in usable])
    components = [g for g in groups if len(g) > 1]
    isolated = [g[0] for g in groups if len(g) == 1]
    anchors = []
    for component in components:
        anchor = choose_component_anchor(component, usable)
        anchors.append(anchor)
        for c in range(N_CHANNELS):
            for t, (g, o) in solve_component(component, usable, c, anchor).items():
                gains[t][c], offsets[t][c] = g, o
    if isolated and n_tiles > 1:
        log.warning("corrected photometry: %d tile(s) have no usable overlap and stay uncalibrated: %s",
                    len(isolated), ", ".join(tiles[t].tile_id for t in isolated))
    if len(components) > 1:
        log.warning("corrected photometry: the overlap graph has %d connected components (%s); "
                    "each is calibrated on its own, so their levels are not tied to each other",
                    len(components),
                    "; ".join("[" + ", ".join(tiles[t].tile_id for t in g) + "]" for g in components))
    status = "applied" if components else ("fewer_than_two_tiles" if n_tiles < 2 else "no_usable_pair")
    return CorrectedCalibration(gains_rgb=gains, offsets_rgb=offsets,
                                pairs_tried=[(i, j) for i, j, _ in pairs], pair_fits=fits,
                                components=components, isolated=isolated, anchors=anchors,
                                status=status)


def corrected_to_json(result: CorrectedCalibration, tile_ids: Sequence[str]) -> dict[str, Any]:
    """The run-state / summary form (``mode = 'corrected'``; gains and offsets per channel)."""
    return {
        "mode": "corrected", "status": result.status, "applied": result.applied,
        "gains_rgb": result.gains_rgb, "offsets_rgb": result.offsets_rgb,
        "pairs_found": [list(p) for p in result.pairs_tried],
        "corrected_pair_fits": [f.to_json() for f in result.pair_fits],
        "components": [[int(t) for t in g] for g in result.components],
        "component_tile_ids": [[tile_ids[t] for t in g] for g in result.components],
        "isolated": [int(t) for t in result.isolated],
        "isolated_tile_ids": [tile_ids[t] for t in result.isolated],
        "anchors": [int(t) for t in result.anchors],
    }
