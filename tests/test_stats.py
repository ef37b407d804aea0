"""Exact out-of-core percentiles equal numpy's over the union of the blocks."""
import numpy as np
import pytest

from zemosaic_ooc.phase5.stats import exact_percentiles


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_exact_percentiles_equal_numpy_linear_percentiles(seed):
    rng = np.random.default_rng(seed)
    blocks = [rng.normal(size=rng.integers(0, 5000)).astype(np.float32) for _ in range(7)]
    blocks.append(np.full(300, 0.25, dtype=np.float32))  # many ties in one bin
    everything = np.concatenate(blocks)
    qs = [0.0, 5.0, 50.0, 99.0, 99.5, 100.0]
    ours = exact_percentiles(list(range(len(blocks))), lambda k: blocks[k], qs)
    assert ours == pytest.approx([float(np.percentile(everything.astype(np.float64), q)) for q in qs],
                                 rel=0, abs=1e-12)


def test_exact_percentiles_of_nothing_are_nan():
    assert np.isnan(exact_percentiles([0], lambda k: np.zeros(0), [5.0])[0])


def test_exact_percentiles_refine_skewed_values_without_gathering_them_all():
    """A sky with a few bright stars: nearly every value falls in one bin of the full range."""
    rng = np.random.default_rng(7)
    blocks = [np.concatenate([rng.normal(400.0, 3.0, 20000), rng.uniform(1e4, 6e4, 5)]).astype(np.float32)
              for _ in range(5)]
    everything = np.concatenate(blocks).astype(np.float64)
    qs = [5.0, 50.0, 99.5]
    ours = exact_percentiles(list(range(5)), lambda k: blocks[k], qs, max_gather=500)
    assert ours == pytest.approx([float(np.percentile(everything, q)) for q in qs], rel=0, abs=1e-9)


def test_exact_percentile_inside_a_huge_run_of_identical_values():
    """Most seam-gradient values are exactly 0: the P99 sits in a bin of identical values."""
    blocks = [np.zeros(50000, dtype=np.float32) for _ in range(4)]
    blocks[0][:100] = np.linspace(0.1, 1.0, 100, dtype=np.float32)
    everything = np.concatenate(blocks).astype(np.float64)
    ours = exact_percentiles(list(range(4)), lambda k: blocks[k], [50.0, 99.0, 99.99], max_gather=1000)
    assert ours == pytest.approx([float(np.percentile(everything, q)) for q in (50.0, 99.0, 99.99)],
                                 rel=0, abs=1e-9)


def _numpy_percentiles(blocks, qs):
    everything = np.concatenate([np.asarray(b, dtype=np.float64).ravel() for b in blocks])
    everything = everything[~np.isnan(everything)]
    return [float(np.percentile(everything, q)) for q in qs]


def test_sortable_keys_sort_as_the_values_and_come_back_exactly():
    from zemosaic_ooc.phase5.stats import key_value, sortable_keys
    for dtype, width in ((np.float32, 32), (np.float64, 64)):
        values = np.array([-np.inf, -3.5e30, -1.0, -1e-40, -0.0, 0.0, 1e-40, 2.0, 7e30, np.inf], dtype=dtype)
        keys = sortable_keys(values)
        assert keys.dtype == (np.uint32 if width == 32 else np.uint64)
        assert list(np.argsort(keys, kind="stable")) == list(range(values.size))
        assert [key_value(int(k), width) for k in keys] == [float(v) for v in values]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_exact_percentiles_refine_every_digit_when_nothing_may_be_gathered(dtype):
    """max_gather=0 forces the radix selection down to the last 16-bit digit (2 for float32, 4 for float64)."""
    rng = np.random.default_rng(3)
    blocks = [rng.normal(100.0, 1e-3, size=3000).astype(dtype) for _ in range(3)]
    blocks.append(-rng.lognormal(size=500).astype(dtype))
    qs = [0.0, 1.0, 33.3, 50.0, 99.9, 100.0]
    ours = exact_percentiles(range(len(blocks)), lambda k: blocks[k], qs, max_gather=0)
    assert ours == pytest.approx(_numpy_percentiles(blocks, qs), rel=0, abs=0)


@pytest.mark.parametrize("workers,cache_bytes", [(1, 0), (3, 0), (3, 1 << 30), (2, 20000)])
def test_exact_percentiles_are_the_same_on_threads_and_with_cached_keys(workers, cache_bytes):
    rng = np.random.default_rng(11)
    blocks = [rng.gamma(2.0, size=rng.integers(0, 9000)).astype(np.float32) for _ in range(9)]
    calls = []

    def values_of(k):
        calls.append(k)
        return blocks[k]

    qs = [5.0, 50.0, 99.5]
    ours = exact_percentiles(range(len(blocks)), values_of, qs, workers=workers, cache_bytes=cache_bytes,
                             max_gather=100)
    assert ours == pytest.approx(_numpy_percentiles(blocks, qs), rel=0, abs=0)
    if cache_bytes >= 1 << 30:
        assert sorted(calls) == list(range(len(blocks)))      # later scans read the kept keys


def test_exact_percentiles_mix_float32_and_float64_blocks_and_ignore_nan():
    blocks = [np.array([1.0, 2.0, np.nan, 5.0], dtype=np.float32), np.array([0.1, 3.0, np.nan, 4.0]),
              np.zeros(0, dtype=np.float32)]
    qs = [0.0, 25.0, 50.0, 90.0, 100.0]
    assert exact_percentiles(range(3), lambda k: blocks[k], qs) == pytest.approx(
        _numpy_percentiles(blocks, qs), rel=0, abs=0)


def test_exact_percentiles_take_two_scans_for_float32_whatever_the_spread():
    """All ranks share the scans: one to count the first digit, one to finish (gather or last digit)."""
    rng = np.random.default_rng(5)
    blocks = [np.concatenate([np.full(40000, 400.0), rng.normal(400.0, 0.01, 40000)]).astype(np.float32)
              for _ in range(4)]
    calls = []

    def values_of(k):
        calls.append(k)
        return blocks[k]

    qs = [1.0, 5.0, 50.0, 99.0, 99.5]
    ours = exact_percentiles(range(4), values_of, qs, max_gather=10)
    assert ours == pytest.approx(_numpy_percentiles(blocks, qs), rel=0, abs=0)
    assert len(calls) == 2 * len(blocks)


def test_exact_percentiles_refuse_a_percentile_outside_0_100():
    with pytest.raises(ValueError, match=r"\[0, 100\]"):
        exact_percentiles([0], lambda k: np.ones(3, np.float32), [50.0, 101.0])


def test_exact_percentiles_match_numpy_on_many_random_layouts():
    """Random block counts, sizes, dtypes, ties, infinities, gather limits, threads and caches."""
    rng = np.random.default_rng(2026)
    for _ in range(60):
        dtype = rng.choice([np.float32, np.float64])
        n_blocks = int(rng.integers(1, 6))
        pool = rng.normal(0.0, 10.0 ** rng.integers(-3, 4), size=int(rng.integers(1, 40))).astype(dtype)
        blocks = []
        for _ in range(n_blocks):
            size = int(rng.integers(0, 400))
            values = rng.choice(pool, size) if rng.random() < 0.5 else rng.normal(size=size).astype(dtype)
            if size and rng.random() < 0.2:
                values[rng.integers(0, size)] = rng.choice([np.inf, -np.inf, np.nan, -0.0])
            blocks.append(values.astype(dtype))
        if not any(np.isfinite(b).any() or np.isinf(b).any() for b in blocks):
            continue
        qs = sorted(rng.uniform(0, 100, size=int(rng.integers(1, 5))).tolist() + [0.0, 100.0])
        ours = exact_percentiles(range(n_blocks), lambda k: blocks[k], qs,
                                 max_gather=int(rng.integers(0, 60)), workers=int(rng.integers(1, 4)),
                                 cache_bytes=int(rng.choice([0, 1 << 20])))
        with np.errstate(invalid="ignore"):             # inf - inf in both interpolations
            expected = _numpy_percentiles(blocks, qs)
            assert np.allclose(ours, expected, rtol=0, atol=0, equal_nan=True) or ours == expected, \
                (dtype, qs, ours, expected)
