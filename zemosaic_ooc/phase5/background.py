"""Background offsets (spec §4.3–§4.4): exact overlap medians, out of core, and their solve.

For every pair s < t of tiles whose §4.2 boxes intersect, the median over the
overlap pixels (both weights > 0) of d_s − d_t, per channel, at full output
resolution.  The overlap is walked in row strips so memory stays bounded; the
difference values of one pair (at most a tile's worth) are gathered and the
median is taken exactly with numpy.  The offsets k then solve reproject's
least-squares system directly (its SGD converges to the same solution).
"""
from __future__ import annotations

import concurrent.futures as cf
from typing import Callable, Sequence

import numpy as np

from ..backend import Backend
from ..store.tiles import TileStore
from .coadd import open_view
from .grid import Box
from .mapping import DEFAULT_CONTROL_STEP, OutputGrid
from .prep import TilePlan


def boxes_overlap(a: Box, b: Box) -> bool:
    """reproject's ``ReprojectedArraySubset.overlaps`` on half-open boxes."""
    return not (a[1] <= b[0] or b[1] <= a[0] or a[3] <= b[2] or b[3] <= a[2])


def pair_offset(backend: Backend, store: TileStore, tile_s: TilePlan, tile_t: TilePlan,
                grid: OutputGrid, *, strip_pixels: int = 1 << 20, two_pass: bool = False,
                step: int = DEFAULT_CONTROL_STEP) -> list[float]:
    """O_st per channel: median of d_s − d_t over the overlap (NaN when it is empty).

    The overlap is walked in strips of about ``strip_pixels``; in each, both tiles are
    mapped and read once (:func:`~.coadd.open_view`) and sampled chunk by chunk.
    """
    y0 = max(tile_s.box[0], tile_t.box[0])
    y1 = min(tile_s.box[1], tile_t.box[1])
    x0 = max(tile_s.box[2], tile_t.box[2])
    x1 = min(tile_s.box[3], tile_t.box[3])
    rows_per_strip = max(1, strip_pixels // max(1, x1 - x0))
    pieces: list[list[np.ndarray]] = [[], [], []]
    for sy0 in range(y0, y1, rows_per_strip):
        strip = (sy0, min(y1, sy0 + rows_per_strip), x0, x1)
        views = [open_view(backend, store, tile, grid, strip, step=step,
                           gain_override=tile.two_pass_gain if two_pass else None,
                           binary_weights=two_pass) for tile in (tile_s, tile_t)]
        if views[0] is None or views[1] is None:
            continue
        for (rows, stencil_s), (_, stencil_t) in zip(views[0].chunks(), views[1].chunks()):
            d_s, f_s, _ = views[0].samples(stencil_s)
            d_t, f_t, _ = views[1].samples(stencil_t)
            both = (f_s > 0) & (f_t > 0)
            diff = d_s - d_t
            for c in range(3):
                values = diff[..., c][both[..., c]]
                if values.size:
                    pieces[c].append(backend.to_host(values))
    result = []
    for c in range(3):
        if pieces[c]:
            result.append(float(np.median(np.concatenate(pieces[c]))))
        else:
            result.append(float("nan"))
    return result


def solve_offsets(offset_matrix: np.ndarray) -> np.ndarray:
    """§4.4: k with Σ_j∈N(i) (k_i − k_j) = Σ_j O_ij and zero mean; NaN for tiles without partner.

    ``offset_matrix`` is N×N with O_ij (NaN where undetermined, O_ji = −O_ij).
    With a single tile, or none, the offsets are 0 (reproject matches
    backgrounds only for two or more arrays).  Disconnected components get
    the minimum-norm solution (each component zero-mean); the reference leaves
    that level undefined.
    """
    n = offset_matrix.shape[0]
    if n < 2:
        return np.zeros(n)
    known = ~np.isnan(offset_matrix)
    np.fill_diagonal(known, False)
    has_partner = known.any(axis=1)
    k = np.full(n, np.nan)
    idx = np.nonzero(has_partner)[0]
    if idx.size == 0:
        return k
    m = idx.size
    lap = np.zeros((m, m))
    rhs = np.zeros(m)
    for a, i in enumerate(idx):
        for b, j in enumerate(idx):
            if i != j and known[i, j]:
                lap[a, a] += 1.0
                lap[a, b] -= 1.0
                rhs[a] += offset_matrix[i, j]
    system = np.vstack([lap, np.ones((1, m))])
    target = np.concatenate([rhs, [0.0]])
    solution, *_ = np.linalg.lstsq(system, target, rcond=None)
    k[idx] = solution
    return k


def background_offsets(backend: Backend, store: TileStore, tiles: Sequence[TilePlan],
                       grid: OutputGrid, *, two_pass: bool = False,
                       progress: Callable[[int, int], None] | None = None,
                       step: int = DEFAULT_CONTROL_STEP,
                       strip_pixels: int = 1 << 20, workers: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """Per-tile, per-channel offsets k (N × 3) and the pairwise matrices (3 × K × K).

    Only tiles with a §4.2 box take part (others get 0 and contribute nothing).  Pairs
    run on ``workers`` threads (numpy releases the GIL in the gathers and arithmetic);
    each holds one strip of both tiles, so memory grows with ``workers``.
    """
    kept = [t for t in tiles if t.box is not None]
    n = len(kept)
    matrices = np.full((3, n, n), np.nan)
    pairs = [(a, b) for a in range(n) for b in range(a + 1, n)
             if boxes_overlap(kept[a].box, kept[b].box)]
    def one(pair: tuple[int, int]) -> list[float]:
        a, b = pair
        return pair_offset(backend, store, kept[a], kept[b], grid, two_pass=two_pass, step=step,
                           strip_pixels=strip_pixels)

    if n >= 2:
        with cf.ThreadPoolExecutor(max_workers=max(1, int(workers))) as pool:
            results = pool.map(one, pairs) if workers > 1 else map(one, pairs)
            for done, ((a, b), offsets) in enumerate(zip(pairs, results)):
                for c in range(3):
                    matrices[c, a, b] = offsets[c]
                    matrices[c, b, a] = -offsets[c]
                if progress:
                    progress(done + 1, len(pairs))
    result = np.zeros((len(tiles), 3))
    position = {t.index: a for a, t in enumerate(kept)}
    per_channel = [solve_offsets(matrices[c]) if n >= 2 else np.zeros(n) for c in range(3)]
    for row, tile in enumerate(tiles):
        if tile.index in position:
            result[row] = [per_channel[c][position[tile.index]] for c in range(3)]
    return result, matrices
