"""Seam check: the per-channel step of the mosaic across every tile boundary.

For each ordered pair of overlapping tiles (A, B), the boundary is the part of A's
footprint outline that lies inside B.  Along it, points are sampled every
``spacing`` grid pixels; at each point and each depth ``k`` of ``depths`` the mosaic is
read ``k`` px inside A (``p_in``) and ``k`` px outside A (``p_out``) along the outline's
normal.  A pair of probes counts only where tile A is the *only* tile whose coverage
changes between them (so crossings with other tiles' edges, and A's own corners, are left
out), B covers both, both probes lie in the autocrop window and all channels are finite.

The step of a channel is the median of ``mosaic(p_in) − mosaic(p_out)``; its standard
error is ``1.2533 · 1.4826 · MAD / sqrt(n)`` with n the number of edge points used.  A
boundary is *flagged* when, in any channel, ``|step|`` exceeds both
``rel_threshold × range`` (range = P99 − P1 of the channel over the valid mosaic) and
``n_sigma × standard error``.

Memory: sample points are gathered chunk by chunk (:func:`~.reading.gather_points`).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np

from ..phase5.stats import robust_sigma
from .footprints import TileFootprint
from .reading import gather_points

DEFAULT_GAP = 2
DEFAULT_DEPTH = 8
DEFAULT_REL_THRESHOLD = 0.025
MIN_POINTS_TO_FLAG = 16
DEFAULT_N_SIGMA = 5.0
MAX_POINTS_PER_BOUNDARY = 4096


@dataclass
class SeamResult:
    """The step across one boundary: the outline of tile ``a`` inside tile ``b``."""

    a: int
    b: int
    a_id: str
    b_id: str
    n_points: int
    n_pairs: int
    step: list[float]                  # median(inside − outside) per channel, ADU
    stderr: list[float]                # standard error of the median per channel
    sky_range: list[float]             # P99 − P1 per channel
    rel_step: list[float]              # step / range per channel
    threshold: list[float]             # per channel: max(rel_threshold·range, n_sigma·stderr)
    flagged: bool
    mid_xy: tuple[float, float]        # a point of the boundary (grid pixels), for labels
    xs: np.ndarray = field(default=None, repr=False)   # used edge points (grid x, y)
    ys: np.ndarray = field(default=None, repr=False)

    @property
    def name(self) -> str:
        return f"{self.a_id} | {self.b_id}"

    @property
    def worst_rel(self) -> float:
        vals = [abs(v) for v in self.rel_step if math.isfinite(v)]
        return max(vals) if vals else float("nan")

    def to_json(self) -> dict[str, Any]:
        return {"a": self.a, "b": self.b, "a_id": self.a_id, "b_id": self.b_id,
                "n_points": self.n_points, "n_pairs": self.n_pairs, "step": self.step,
                "stderr": self.stderr, "sky_range": self.sky_range, "rel_step": self.rel_step,
                "threshold": self.threshold, "flagged": self.flagged,
                "mid_xy": list(self.mid_xy)}


def _edge_samples(polygon: np.ndarray, spacing: float) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Points every ``spacing`` px along the closed outline and their inward unit normals."""
    x, y = polygon[:, 0], polygon[:, 1]
    xn, yn = np.roll(x, -1), np.roll(y, -1)
    area = 0.5 * float(np.sum(x * yn - xn * y))
    sign = 1.0 if area > 0 else -1.0
    px, py, nx, ny = [], [], [], []
    for x0, y0, x1, y1 in zip(x, y, xn, yn):
        dx, dy = x1 - x0, y1 - y0
        length = math.hypot(dx, dy)
        if length < 1e-9:
            continue
        n = max(1, int(length // spacing))
        t = (np.arange(n) + 0.5) / n
        px.append(x0 + t * dx)
        py.append(y0 + t * dy)
        # left normal (-dy, dx) points inside a positively oriented outline
        nx.append(np.full(n, sign * -dy / length))
        ny.append(np.full(n, sign * dx / length))
    if not px:
        empty = np.zeros(0)
        return empty, empty, empty, empty
    return np.concatenate(px), np.concatenate(py), np.concatenate(nx), np.concatenate(ny)


def _bbox_overlap(a: TileFootprint, b: TileFootprint) -> bool:
    ay0, ay1, ax0, ax1 = a.bbox()
    by0, by1, bx0, bx1 = b.bbox()
    return ay0 < by1 and by0 < ay1 and ax0 < bx1 and bx0 < ax1


def _profile_weights(offsets_in: np.ndarray) -> np.ndarray:
    """Weights w (2n,) with step = w · [v(in offsets), v(−in offsets)] under the model
    v(s) = a + b·s + step·[s > 0] (least squares, one slope for both sides).

    With offsets symmetric about the edge, a straight gradient and any curvature that is
    even about the edge cancel, so the smooth sky and nebulosity do not read as a step.
    """
    s = np.concatenate([offsets_in, -offsets_in]).astype(np.float64)
    design = np.column_stack([np.ones_like(s), s, (s > 0).astype(np.float64)])
    pinv = np.linalg.pinv(design)
    return pinv[2]


def seam_check(mosaic, footprints: Sequence[TileFootprint], window: tuple[int, int, int, int],
               sky_range: Sequence[float], *, gap: int = DEFAULT_GAP, depth: int = DEFAULT_DEPTH,
               rel_threshold: float = DEFAULT_REL_THRESHOLD, n_sigma: float = DEFAULT_N_SIGMA,
               spacing: float = 1.0,
               max_points: int = MAX_POINTS_PER_BOUNDARY) -> list[SeamResult]:
    """Seam results for every ordered pair of overlapping tiles with usable boundary samples.

    ``mosaic`` is the store's (H, W, C) zarr array (or any array with the same indexing);
    ``window`` the autocrop window; ``sky_range`` P99 − P1 per channel.  At each edge point
    the profile across the edge is read at offsets ``gap .. depth`` px on both sides.
    """
    wy0, wy1, wx0, wx1 = window
    n_ch = int(mosaic.shape[2]) if len(mosaic.shape) == 3 else 1
    sky_range = [float(v) for v in sky_range]
    gap, depth = max(1, int(gap)), max(int(gap) + 1, int(depth))
    offsets = np.arange(gap, depth + 1, dtype=np.float64)
    weights = _profile_weights(offsets)
    results: list[SeamResult] = []
    for fa in footprints:
        others = [fb for fb in footprints if fb is not fa and _bbox_overlap(fa, fb)]
        if not others:
            continue
        ex, ey, nx, ny = _edge_samples(fa.polygon, spacing)
        if ex.size == 0:
            continue
        # edge points inside at least one other tile (cheap pre-filter)
        in_any = np.zeros(ex.size, dtype=bool)
        for fb in others:
            in_any |= fb.contains(ex, ey)
        sel = np.flatnonzero(in_any)
        if sel.size == 0:
            continue
        ex, ey, nx, ny = ex[sel], ey[sel], nx[sel], ny[sel]

        def probe(d: float) -> tuple[np.ndarray, np.ndarray]:
            return (np.rint(ex + d * nx).astype(np.int64), np.rint(ey + d * ny).astype(np.int64))

        xin_far, yin_far = probe(depth)
        xout_far, yout_far = probe(-depth)
        xin_near, yin_near = probe(gap)
        xout_near, yout_near = probe(-gap)
        ok = ((np.minimum(yin_far, yout_far) >= wy0) & (np.maximum(yin_far, yout_far) < wy1)
              & (np.minimum(xin_far, xout_far) >= wx0) & (np.maximum(xin_far, xout_far) < wx1))
        ok &= fa.contains(xin_far, yin_far) & fa.contains(xin_near, yin_near)
        ok &= ~fa.contains(xout_far, yout_far) & ~fa.contains(xout_near, yout_near)
        covered_by: dict[int, np.ndarray] = {}
        for fc in others:
            far_in = fc.contains(xin_far, yin_far)
            far_out = fc.contains(xout_far, yout_far)
            ok &= (far_in == far_out) & (fc.contains(xin_near, yin_near) == far_in) \
                & (fc.contains(xout_near, yout_near) == far_in)
            covered_by[fc.index] = far_out
        use = np.flatnonzero(ok)
        if use.size == 0:
            continue
        # the profile across the edge at every usable point, gathered chunk by chunk
        prof = np.empty((use.size, 2 * offsets.size, n_ch), dtype=np.float32)
        for k, d in enumerate(np.concatenate([offsets, -offsets])):
            px, py = probe(d)
            prof[:, k, :] = gather_points(mosaic, py[use], px[use]).reshape(use.size, n_ch)
        finite = np.isfinite(prof).all(axis=(1, 2))
        steps = np.einsum("k,nkc->nc", weights, prof.astype(np.float64))   # (n, C)
        for fb in others:
            pts = np.flatnonzero(covered_by[fb.index][use] & finite)
            if pts.size == 0:
                continue
            if pts.size > max_points:     # keep evenly spaced points
                pts = pts[np.linspace(0, pts.size - 1, max_points).round().astype(int)]
            diffs = steps[pts]
            step, stderr, rel, thr = [], [], [], []
            flagged = False
            for c in range(n_ch):
                dc = diffs[:, c]
                med = float(np.median(dc))
                se = 1.2533 * robust_sigma(dc) / math.sqrt(pts.size)   # s.e. of a median
                rng = sky_range[c] if c < len(sky_range) else float("nan")
                r = med / rng if (math.isfinite(rng) and rng > 0) else float("nan")
                t = max(rel_threshold * rng if math.isfinite(rng) else float("inf"), n_sigma * se)
                step.append(med)
                stderr.append(se)
                rel.append(r)
                thr.append(t)
                if math.isfinite(r) and abs(med) > t and pts.size >= MIN_POINTS_TO_FLAG:
                    flagged = True
            gx, gy = ex[use][pts], ey[use][pts]
            mid = pts.size // 3 if fa.index < fb.index else (2 * pts.size) // 3   # labels apart
            results.append(SeamResult(
                a=fa.index, b=fb.index, a_id=fa.tile_id, b_id=fb.tile_id,
                n_points=int(pts.size), n_pairs=int(pts.size * offsets.size), step=step,
                stderr=stderr, sky_range=sky_range[:n_ch], rel_step=rel, threshold=thr,
                flagged=flagged, mid_xy=(float(gx[mid]), float(gy[mid])), xs=gx, ys=gy))
    return results


def seam_metric(seams: Sequence[SeamResult]) -> float:
    """One number for a mosaic's seams: the RMS over boundaries and channels of step / (P99 − P1).

    Boundaries with fewer than :data:`MIN_POINTS_TO_FLAG` edge points (a corner grazing
    another tile) are left out, as the check never flags them: their step is mostly noise.
    NaN when no boundary could be measured.  Lower is better; a step of 1 % of the range on
    every boundary gives 0.01.
    """
    values = [v for s in seams if s.n_points >= MIN_POINTS_TO_FLAG
              for v in s.rel_step if math.isfinite(v)]
    if not values:
        return float("nan")
    return float(math.sqrt(sum(v * v for v in values) / len(values)))


def seam_metric_stderr(seams: Sequence[SeamResult]) -> float:
    """Standard error of :func:`seam_metric` from each boundary's own standard error.

    With m² = mean(r²) over N steps r (each with standard error e), var(r²) ≈ 4·r²·e², so
    se(m) ≈ sqrt(Σ 4·r²·e²) / (2·N·m).  Two metrics closer than about twice their combined
    standard error are the same within the measurement's noise.
    """
    terms = [(r, e / s.sky_range[c]) for s in seams if s.n_points >= MIN_POINTS_TO_FLAG
             for c, (r, e) in enumerate(zip(s.rel_step, s.stderr))
             if math.isfinite(r) and c < len(s.sky_range) and s.sky_range[c] > 0]
    if not terms:
        return float("nan")
    metric = math.sqrt(sum(r * r for r, _ in terms) / len(terms))
    if metric == 0:
        return 0.0
    return math.sqrt(sum(4.0 * r * r * e * e for r, e in terms)) / (2.0 * len(terms) * metric)
