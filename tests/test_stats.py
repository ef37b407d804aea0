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
