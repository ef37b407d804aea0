"""Exact global percentiles out of core.

The values live in blocks; ``values_of(block)`` returns the (1-D, host) values a
block contributes.  Every value is mapped to an unsigned integer key that sorts
like the value (the IEEE-754 bits, sign folded: float32 → uint32, anything else
as float64 → uint64), and the wanted order statistics are found by a radix
selection on 16-bit digits of the key, most significant first: one scan over the
blocks counts the first digit of every key (65 536 bins, no value range needed);
each later scan counts the next digit of the keys inside the buckets chosen so
far, for every wanted rank at once.  A bucket small enough (``max_gather``) is
gathered and its rank selected with ``np.partition`` at once.  So a float32
statistic takes at most two scans and a float64 one at most four, whatever the
distribution (a sky where nearly every value shares its top bits, a run of
identical zeros), and all the percentiles asked for share the scans.

The result equals ``np.percentile(all_values, q)`` (linear interpolation) while
memory stays at ``workers`` blocks plus at most ``max_gather`` keys per wanted
rank.  Scans run on ``workers`` threads; the keys of the first scan are kept in
memory while they fit ``cache_bytes``, so later scans need not call ``values_of``
(a zarr read and a per-pixel formula) again.  NaN values are ignored.
"""
from __future__ import annotations

import threading
from typing import Callable, Iterable, Sequence

import numpy as np

from ..concurrency import ordered_map

DIGIT_BITS = 16
N_DIGIT_BINS = 1 << DIGIT_BITS
MAX_GATHER = 1 << 20


def sortable_keys(values: np.ndarray, *, wide: bool = False) -> np.ndarray:
    """Unsigned integer keys that sort as ``values`` do (1-D, NaN dropped).

    float32 values give uint32 keys; any other dtype (or ``wide``) is taken as float64
    and gives uint64 keys.  Negative values have every bit flipped, the others their sign
    bit set, so the unsigned order is the numeric order (-0.0 sorts just below +0.0).
    """
    flat = np.asarray(values).ravel()
    if flat.dtype != np.float32 or wide:
        flat = flat.astype(np.float64, copy=False)
    flat = flat[~np.isnan(flat)]
    bits = flat.view(np.uint32 if flat.dtype == np.float32 else np.uint64)
    sign = bits.dtype.type(1) << bits.dtype.type(8 * bits.dtype.itemsize - 1)
    return np.where((bits & sign) != 0, ~bits, bits | sign)


def key_value(key: int, width: int) -> float:
    """The value whose :func:`sortable_keys` key is ``key`` (``width`` 32 or 64 bits)."""
    sign = 1 << (width - 1)
    bits = key ^ sign if key & sign else ~key & ((1 << width) - 1)
    unsigned, floating = (np.uint32, np.float32) if width == 32 else (np.uint64, np.float64)
    return float(np.array([bits], dtype=unsigned).view(floating)[0])


class _Bucket:
    """Keys sharing their top ``depth`` digits (= ``prefix``), and the ranks wanted inside them."""

    def __init__(self, depth: int, prefix: int, count: int) -> None:
        self.depth, self.prefix, self.count = depth, prefix, count
        self.ranks: dict[int, int] = {}          # rank among all values -> rank inside the bucket


def _locate(buckets: dict[int, _Bucket], hist: np.ndarray, depth: int, prefix: int,
            ranks: dict[int, int]) -> None:
    """Place every wanted rank (``ranks``: global -> inside the parent) in the bin of ``hist`` holding it."""
    cumulative = np.cumsum(hist, dtype=np.int64)
    for rank, inside in ranks.items():
        digit = int(np.searchsorted(cumulative, inside, side="right"))
        start = int(cumulative[digit - 1]) if digit else 0
        key = (prefix << DIGIT_BITS) | digit
        bucket = buckets.setdefault(key, _Bucket(depth, key, int(hist[digit])))
        bucket.ranks[rank] = inside - start


def exact_percentiles(blocks: Sequence, values_of: Callable[[object], np.ndarray],
                      qs: Iterable[float], *, max_gather: int = MAX_GATHER, workers: int = 1,
                      cache_bytes: int = 0) -> list[float]:
    """numpy-linear percentiles ``qs`` (0–100) of the union of every block's values (NaN if none).

    ``workers`` threads call ``values_of`` side by side; the first scan's keys are kept in
    memory up to ``cache_bytes`` (0: none kept, every scan calls ``values_of`` again).
    """
    qs = [float(q) for q in qs]
    if any(not 0.0 <= q <= 100.0 for q in qs):
        raise ValueError(f"percentiles must lie in [0, 100], got {qs}")
    blocks = list(blocks)
    for wide in (False, True):
        found = _exact_percentiles(blocks, values_of, qs, max_gather, max(1, int(workers)),
                                   int(cache_bytes), wide)
        if found is not None:
            return found
    raise AssertionError("unreachable: float64 keys never mix")  # pragma: no cover


def _exact_percentiles(blocks: list, values_of: Callable[[object], np.ndarray], qs: list[float],
                       max_gather: int, workers: int, cache_bytes: int, wide: bool) -> list[float] | None:
    """:func:`exact_percentiles` with keys of one width; None when blocks gave both widths."""
    cache: dict[int, np.ndarray] = {}
    cached_bytes = 0
    lock = threading.Lock()

    def keys_of(k: int) -> np.ndarray:
        kept = cache.get(k)
        return kept if kept is not None else sortable_keys(values_of(blocks[k]), wide=wide)

    # ---- scan 1: the first digit of every key
    first = np.zeros(N_DIGIT_BINS, dtype=np.int64)
    widths: set[int] = set()

    def first_digits(k: int) -> tuple[int, np.ndarray | None]:
        nonlocal cached_bytes
        keys = keys_of(k)
        width = 8 * keys.dtype.itemsize
        hist = np.bincount((keys >> keys.dtype.type(width - DIGIT_BITS)).astype(np.intp),
                           minlength=N_DIGIT_BINS) if keys.size else None
        with lock:
            if keys.size and cached_bytes + keys.nbytes <= cache_bytes:
                cache[k] = keys
                cached_bytes += keys.nbytes
        return width, hist

    for _, result in ordered_map(first_digits, range(len(blocks)), workers):
        if isinstance(result, BaseException):
            raise result
        width, hist = result
        if hist is not None:
            widths.add(width)
            first += hist
    if len(widths) > 1:
        return None                                  # float32 and other blocks: all as float64
    count = int(first.sum())
    if count == 0:
        return [float("nan")] * len(qs)
    width = widths.pop()
    n_digits = width // DIGIT_BITS

    # the ranks the percentiles need (linear interpolation between two neighbours)
    wanted: dict[int, int] = {}
    plan = []
    for q in qs:
        position = (count - 1) * (q / 100.0)
        lower = int(np.floor(position))
        upper = min(lower + 1, count - 1)
        plan.append((lower, upper, position - lower))
        wanted[lower] = lower
        wanted[upper] = upper

    found: dict[int, int] = {}                       # rank -> key
    buckets: dict[int, _Bucket] = {}
    _locate(buckets, first, 1, 0, wanted)
    while buckets:
        # a bucket of one key (every digit fixed) or of a single value is found without a scan
        for key in list(buckets):
            bucket = buckets[key]
            if bucket.depth == n_digits:
                for rank in bucket.ranks:
                    found[rank] = bucket.prefix
                del buckets[key]
        if not buckets:
            break
        todo = list(buckets.values())
        gather = [b.count <= max_gather for b in todo]

        def refine(k: int, todo=todo, gather=gather) -> list[np.ndarray]:
            keys = keys_of(k)
            out = []
            for bucket, whole in zip(todo, gather):
                shift = keys.dtype.type(width - DIGIT_BITS * bucket.depth)
                inside = keys[(keys >> shift) == keys.dtype.type(bucket.prefix)]
                if whole:
                    out.append(inside)
                else:
                    digits = (inside >> keys.dtype.type(int(shift) - DIGIT_BITS)) & keys.dtype.type(N_DIGIT_BINS - 1)
                    out.append(np.bincount(digits.astype(np.intp), minlength=N_DIGIT_BINS))
            return out

        gathered: list[list[np.ndarray]] = [[] for _ in todo]
        hists = [np.zeros(N_DIGIT_BINS, dtype=np.int64) for _ in todo]
        for _, result in ordered_map(refine, range(len(blocks)), workers):
            if isinstance(result, BaseException):
                raise result
            for j, part in enumerate(result):
                if gather[j]:
                    if part.size:
                        gathered[j].append(part)
                else:
                    hists[j] += part
        buckets = {}
        for j, bucket in enumerate(todo):
            if gather[j]:
                keys = np.concatenate(gathered[j])
                inside = sorted(set(bucket.ranks.values()))
                selected = np.partition(keys, inside)
                for rank, k in bucket.ranks.items():
                    found[rank] = int(selected[k])
            else:
                _locate(buckets, hists[j], bucket.depth + 1, bucket.prefix, bucket.ranks)

    results = []
    for lower, upper, frac in plan:
        a, b = key_value(found[lower], width), key_value(found[upper], width)
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
