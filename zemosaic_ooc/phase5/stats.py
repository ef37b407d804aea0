"""Exact global percentiles out of core.

The values live in blocks; ``values_of(block)`` returns the (1-D, host) values a
block contributes.  Pass 1 counts them and finds their range.  Then, for every
order statistic a percentile needs, histograms on fixed edges narrow the value
range bin by bin (a skewed sky, where nearly every value falls in one bin of the
full range, just takes another level) until the bin holding the wanted rank is
small enough to gather; the rank is then selected exactly with ``np.partition``.
The result equals ``np.percentile(all_values, q)`` (linear interpolation) while
memory stays at one block plus at most ``max_gather`` values.
"""
from __future__ import annotations

from typing import Callable, Iterable, Sequence

import numpy as np

N_BINS = 4096
MAX_GATHER = 1 << 20
MAX_LEVELS = 8


def _bin_index(values: np.ndarray, edges: np.ndarray) -> np.ndarray:
    return np.clip(np.searchsorted(edges, values, side="right") - 1, 0, len(edges) - 2)


def _members(values: np.ndarray, levels: list[tuple[np.ndarray, int]]) -> np.ndarray:
    """Values inside the nested bins chosen so far."""
    for edges, chosen in levels:
        inside = (values >= edges[0]) & (values <= edges[-1])
        values = values[inside]
        values = values[_bin_index(values, edges) == chosen]
    return values


def _order_statistic(blocks: Sequence, values_of: Callable[[object], np.ndarray], rank: int,
                     lo: float, hi: float, max_gather: int) -> float:
    levels: list[tuple[np.ndarray, int]] = []
    below = 0                                    # values ranked before the current range
    for _level in range(MAX_LEVELS):
        edges = np.linspace(lo, hi, N_BINS + 1)
        hist = np.zeros(N_BINS, dtype=np.int64)
        member_min, member_max = np.inf, -np.inf
        for block in blocks:
            v = _members(values_of(block), levels)
            v = v[(v >= lo) & (v <= hi)]
            if v.size:
                hist += np.bincount(_bin_index(v, edges), minlength=N_BINS)
                member_min = min(member_min, float(v.min()))
                member_max = max(member_max, float(v.max()))
        if member_min == member_max:          # every remaining value is the same (e.g. many zeros)
            return member_min
        cumulative = below + np.cumsum(hist)
        chosen = int(np.searchsorted(cumulative, rank, side="right"))
        count = int(hist[chosen])
        start = int(cumulative[chosen - 1]) if chosen > 0 else below
        new_lo, new_hi = float(edges[chosen]), float(edges[chosen + 1])
        levels.append((edges, chosen))
        last_level = _level == MAX_LEVELS - 1
        if count <= max_gather or last_level or not (new_lo < new_hi):
            gathered = [_members(values_of(block), levels) for block in blocks]
            values = np.concatenate([g for g in gathered if g.size]) if gathered else np.zeros(0)
            k = rank - start
            return float(np.partition(values, k)[k])
        below, lo, hi = start, new_lo, new_hi
    raise AssertionError("unreachable: the last level always gathers")  # pragma: no cover


def exact_percentiles(blocks: Sequence, values_of: Callable[[object], np.ndarray],
                      qs: Iterable[float], *, max_gather: int = MAX_GATHER) -> list[float]:
    """numpy-linear percentiles ``qs`` (0–100) of the union of every block's values (NaN if none)."""
    qs = list(qs)
    count, lo, hi = 0, np.inf, -np.inf
    for block in blocks:
        v = values_of(block)
        if v.size:
            count += v.size
            lo = min(lo, float(v.min()))
            hi = max(hi, float(v.max()))
    if count == 0:
        return [float("nan")] * len(qs)
    if lo == hi:
        return [lo] * len(qs)
    cache: dict[int, float] = {}
    results = []
    for q in qs:
        position = (count - 1) * (q / 100.0)
        lower = int(np.floor(position))
        upper = min(lower + 1, count - 1)
        frac = position - lower
        for rank in (lower, upper):
            if rank not in cache:
                cache[rank] = _order_statistic(blocks, values_of, rank, lo, hi, max_gather)
        a, b = cache[lower], cache[upper]
        results.append(b - (b - a) * (1 - frac) if frac >= 0.5 else a + (b - a) * frac)
    return results


#: the MAD of a normal distribution times this is its standard deviation
MAD_TO_SIGMA = 1.4826


def robust_sigma(values: np.ndarray) -> float:
    """1.4826 × the median absolute deviation from the median (a normal's σ); NaN when empty."""
    values = np.asarray(values)
    if values.size == 0:
        return float("nan")
    return float(MAD_TO_SIGMA * np.median(np.abs(values - np.median(values))))
