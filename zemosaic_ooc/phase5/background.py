"""Background offsets (spec §4.3–§4.4): exact overlap medians, out of core, and their solve.

For every pair s < t of tiles whose §4.2 boxes intersect, the median over the
overlap pixels (both weights > 0) of d_s − d_t, per channel, at full output
resolution.  The difference values are gathered and each median is taken
exactly with numpy, in one of two ways that give the same values up to the float32
rounding of the mapping (laid over other rectangles: a few ulps at a few pixels):

* by blocks (when all the differences fit in the memory given): one walk over the
  mosaic's blocks resamples every tile once per block; the block samples are kept
  for the coadd that follows (pass 1 after the first walk, pass 2 after the
  pass-2 walk), which then does not resample them;
* pair by pair: each overlap is walked in row strips, so memory stays bounded
  by a tile's worth of differences.

The offsets k then solve reproject's least-squares system directly (its SGD
converges to the same solution).
"""
from __future__ import annotations

import concurrent.futures as cf
import threading
from typing import Any, Callable, Sequence

import numpy as np

from ..backend import Backend
from ..memory import MemoryShelf
from ..store.tiles import TileStore
from .coadd import open_view, sample_block
from .grid import Box, intersect
from .mapping import DEFAULT_CONTROL_STEP, OutputGrid
from .prep import TilePlan

#: ``run_on(stage, key, task)`` runs ``task(key, backend)`` on some backend and returns its
#: result (the pipeline passes its OOM guard's :meth:`~..fallback.guard.OomGuard.call`)
RunOn = Callable[[str, Any, Callable[[Any, Backend], Any]], Any]


def walk_stage(two_pass: bool) -> str:
    """The OOM guard's stage label of a background-offset walk (its replays are counted by it)."""
    return "pass-2 background" if two_pass else "background"


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
            # f > 0 only where d is finite (TileView.samples)
            values = overlap_differences(backend, (d_s, f_s > 0), (d_t, f_t > 0))
            for c in range(3):
                if values[c].size:
                    pieces[c].append(values[c])
    return [_median(pieces[c]) for c in range(3)]


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


def _median(pieces: list[np.ndarray]) -> float:
    return float(np.median(np.concatenate(pieces))) if pieces else float("nan")


def block_pair_offsets(backend: Backend, store: TileStore, tiles: Sequence[TilePlan], grid: OutputGrid,
                       pairs: Sequence[tuple[TilePlan, TilePlan]], blocks: Sequence[Box], *,
                       step: int = DEFAULT_CONTROL_STEP, workers: int = 1,
                       cache: MemoryShelf | None = None,
                       progress: Callable[[int, int], None] | None = None,
                       run_on: RunOn | None = None, two_pass: bool = False) -> list[list[float]]:
    """O_st of every pair from a walk over the output blocks (those of the coadd that follows).

    Each block is resampled once with :func:`~.coadd.sample_block` (all its tiles, and for
    pass 1 their union; ``two_pass``: the pass-2 samples, each tile at its two-pass gain with
    binary weights); the difference values of every pair overlapping there are gathered
    (every pixel of an overlap lies in exactly one block) and each median is taken exactly
    at the end.  The block samples go into ``cache`` (keyed by block, while it has room) for
    that coadd.  ``run_on`` chooses the backend of each block (default: ``backend``).
    Memory: the gathered differences, 12 bytes per overlap pixel, plus a block per worker.
    """
    stage = walk_stage(two_pass)
    pieces: dict[tuple[int, int], list[list[np.ndarray]]] = {
        (s.index, t.index): [[], [], []] for s, t in pairs}
    lock = threading.Lock()

    def one(block: Box, be: Backend) -> None:
        xp = be.xp
        samples = sample_block(be, store, tiles, grid, block, with_union=not two_pass, two_pass=two_pass,
                               step=step)
        found = {item.tile.index: item for item in samples.tiles}
        local = []
        for s, t in pairs:
            ss, st = found.get(s.index), found.get(t.index)
            overlap = intersect(ss.box, st.box) if ss is not None and st is not None else None
            if overlap is None:
                continue
            parts = []
            for item in (ss, st):
                y0, x0 = item.box[0], item.box[2]
                sl = (slice(overlap[0] - y0, overlap[1] - y0), slice(overlap[2] - x0, overlap[3] - x0))
                d = item.data[sl]
                parts.append((d, xp.isfinite(d) & (item.weight[sl] > 0)))
            local.append(((s.index, t.index), overlap_differences(be, parts[0], parts[1])))
        with lock:
            for key, values in local:
                for c in range(3):
                    if values[c].size:
                        pieces[key][c].append(values[c])
        if cache is not None:
            cache.put(block, samples, samples.nbytes, on_device=samples.xp is not np)

    def walk(block: Box) -> None:
        return run_on(stage, block, one) if run_on is not None else one(block, backend)

    with cf.ThreadPoolExecutor(max_workers=max(1, int(workers))) as pool:
        done_blocks = pool.map(walk, blocks) if workers > 1 else map(walk, blocks)
        for done, _ in enumerate(done_blocks):
            if progress:
                progress(done + 1, len(blocks))
        # the medians on the pool too (numpy's partition releases the GIL): one per pair and
        # channel, up to a few ms each, 3 × (number of pairs) of them
        keys = [((s.index, t.index), c) for s, t in pairs for c in range(3)]
        medians = (pool.map if workers > 1 else map)(lambda key: _median(pieces[key[0]][key[1]]), keys)
        found = dict(zip(keys, medians))
    return [[found[((s.index, t.index), c)] for c in range(3)] for s, t in pairs]


def overlap_differences(be: Backend, first: tuple[Any, Any], second: tuple[Any, Any]) -> list[np.ndarray]:
    """The values d_s − d_t where both tiles count, per channel, on the host (float32).

    ``first`` / ``second``: (data, usable) of the two tiles over the same overlap region, HWC
    float32 and HWC bool, on ``be``.  The differences are masked with NaN where a tile does not
    count (a usable difference is finite: both values are) and come back in one copy; the
    host keeps the finite values of each channel, in row-major order.
    """
    xp = be.xp
    masked = be.to_host(xp.where(first[1] & second[1], first[0] - second[0], xp.float32(np.nan)))
    return [plane[~np.isnan(plane)] for plane in (masked[..., c] for c in range(3))]


def background_offsets(backend: Backend, store: TileStore, tiles: Sequence[TilePlan],
                       grid: OutputGrid, *, two_pass: bool = False,
                       progress: Callable[[int, int], None] | None = None,
                       step: int = DEFAULT_CONTROL_STEP,
                       strip_pixels: int = 1 << 20, workers: int = 1,
                       blocks: Sequence[Box] | None = None, cache: MemoryShelf | None = None,
                       diff_bytes: int = 0, run_on: RunOn | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Per-tile, per-channel offsets k (N × 3) and the pairwise matrices (3 × K × K).

    Only tiles with a §4.2 box take part (others get 0 and contribute nothing).  With
    ``blocks`` (the blocks of the coadd that follows), when the overlaps' difference values
    fit in ``diff_bytes``, the pairs are measured by one walk over the blocks
    (:func:`block_pair_offsets`, which also fills ``cache`` for that coadd, pass 1 or with
    ``two_pass`` pass 2); otherwise pair by pair in strips
    (:func:`pair_offset`), each pair holding one strip of both tiles.  Either way on
    ``workers`` threads (numpy releases the GIL in the gathers and arithmetic).  ``run_on``
    picks the backend of each block or pair (the OOM guard: the device, replayed on the CPU).
    """
    kept = [t for t in tiles if t.box is not None]
    n = len(kept)
    matrices = np.full((3, n, n), np.nan)
    pairs = [(a, b) for a in range(n) for b in range(a + 1, n)
             if boxes_overlap(kept[a].box, kept[b].box)]
    overlap_pixels = sum(_area(intersect(kept[a].box, kept[b].box)) for a, b in pairs)
    by_blocks = blocks is not None and 12 * overlap_pixels <= diff_bytes

    def measure(pair: tuple[int, int], be: Backend) -> list[float]:
        a, b = pair
        return pair_offset(be, store, kept[a], kept[b], grid, two_pass=two_pass, step=step,
                           strip_pixels=strip_pixels)

    def one(pair: tuple[int, int]) -> list[float]:
        return run_on(walk_stage(two_pass), pair, measure) if run_on is not None else measure(pair, backend)

    if n >= 2 and by_blocks:
        results = block_pair_offsets(backend, store, tiles, grid, [(kept[a], kept[b]) for a, b in pairs],
                                     blocks, step=step, workers=workers, cache=cache, progress=progress,
                                     run_on=run_on, two_pass=two_pass)
        for (a, b), offsets in zip(pairs, results):
            for c in range(3):
                matrices[c, a, b] = offsets[c]
                matrices[c, b, a] = -offsets[c]
    elif n >= 2:
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


def _area(box: Box | None) -> int:
    return 0 if box is None else (box[1] - box[0]) * (box[3] - box[2])
