"""Exact global percentiles out of core.

The values live in blocks; ``values_of(block)`` returns the (1-D, host) values a
block contributes.  Pass 1 counts them and finds their range; pass 2 builds a
histogram on fixed edges; pass 3 gathers only the values in the bins holding the
wanted ranks and selects them exactly (``np.partition``).  The result equals
``np.percentile(all_values, q)`` (linear interpolation) without ever holding all
values in memory.
"""
from __future__ import annotations

from typing import Callable, Iterable, Sequence

import numpy as np

N_BINS = 4096


def exact_percentiles(blocks: Sequence, values_of: Callable[[object], np.ndarray],
                      qs: Iterable[float]) -> list[float]:
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
    edges = np.linspace(lo, hi, N_BINS + 1)
    hist = np.zeros(N_BINS, dtype=np.int64)
    for block in blocks:
        v = values_of(block)
        if v.size:
            idx = np.clip(np.searchsorted(edges, v, side="right") - 1, 0, N_BINS - 1)
            hist += np.bincount(idx, minlength=N_BINS)
    cumulative = np.cumsum(hist)
    ranks: set[int] = set()
    plan = []
    for q in qs:
        position = (count - 1) * (q / 100.0)
        lower = int(np.floor(position))
        upper = min(lower + 1, count - 1)
        ranks.update((lower, upper))
        plan.append((lower, upper, position - lower))
    wanted_bins = {int(np.searchsorted(cumulative, r, side="right")) for r in ranks}
    gathered: dict[int, list[np.ndarray]] = {b: [] for b in wanted_bins}
    for block in blocks:
        v = values_of(block)
        if v.size:
            idx = np.clip(np.searchsorted(edges, v, side="right") - 1, 0, N_BINS - 1)
            for b in wanted_bins:
                sel = v[idx == b]
                if sel.size:
                    gathered[b].append(sel)
    order_stat: dict[int, float] = {}
    for r in ranks:
        b = int(np.searchsorted(cumulative, r, side="right"))
        before = int(cumulative[b - 1]) if b > 0 else 0
        values = np.concatenate(gathered[b])
        k = r - before
        order_stat[r] = float(np.partition(values, k)[k])
    results = []
    for lower, upper, frac in plan:
        a, b = order_stat[lower], order_stat[upper]
        results.append(b - (b - a) * (1 - frac) if frac >= 0.5 else a + (b - a) * frac)
    return results
