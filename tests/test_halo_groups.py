"""Halo stage groups (phase5/grid.halo_superblocks): every chunk in one group, enough groups for
the workers, the groups in flight within the budget, and the same blur whatever the grouping."""
from __future__ import annotations

import numpy as np
import pytest

from zemosaic_ooc.backend import numpy_backend
from zemosaic_ooc.phase5.grid import halo_superblocks, iter_blocks
from zemosaic_ooc.phase5.renorm import blur_radius, blurred_coverage_block

GiB = 2 ** 30


def _haloed_area(group, shape_hw, halo):
    h, w = shape_hw
    return (min(h, group[1] + halo) - max(0, group[0] - halo)) * (min(w, group[3] + halo) - max(0, group[2] - halo))


@pytest.mark.parametrize("shape_hw,block,halo,budget,workers", [
    ((7000, 7000), 1472, 200, 1.5 * GiB, 16), ((7000, 7000), 1472, 200, 1.5 * GiB, 2),
    ((3050, 3053), 128, 200, 24 * 2 ** 20, 2), ((900, 2500), 256, 275, 0.5 * GiB, 4),
    ((7000, 7000), 1472, 200, 1.5 * GiB, 1)])
def test_groups_cover_every_chunk_once_and_fit_the_budget_at_once(shape_hw, block, halo, budget, workers):
    groups = halo_superblocks(shape_hw, block, halo, int(budget), workers=workers)
    owners = {}
    for g in groups:
        assert g[0] % block == 0 and g[2] % block == 0          # chunk-aligned
        for b in iter_blocks(shape_hw, block):
            if g[0] <= b[0] < g[1] and g[2] <= b[2] < g[3]:
                assert b[1] <= g[1] and b[3] <= g[3]
                owners[b] = owners.get(b, 0) + 1
    assert set(owners.values()) == {1} and len(owners) == len(list(iter_blocks(shape_hw, block)))
    side = groups[0][1] - groups[0][0]
    if side > block:                                            # k > 1 only within the budget
        at_once = min(workers, len(groups))
        assert at_once * max(_haloed_area(g, shape_hw, halo) for g in groups) * 32 <= budget


def test_many_workers_get_as_many_groups_as_the_grid_has_blocks():
    """A 7000 px grid with 1472 px blocks: 25 groups for 16 workers (before: 4 groups of 4416 px)."""
    assert len(halo_superblocks((7000, 7000), 1472, 200, int(1.5 * GiB), workers=16)) == 25


def test_coverage_blur_is_the_same_for_every_grouping():
    """Each group computes its area grown by the blur radius: the whole-image result, for any k."""
    rng = np.random.default_rng(4)
    shape_hw, block, sigma = (260, 300), 40, 6.0
    coverage = np.where(rng.random(shape_hw) < 0.1, 0.0, rng.gamma(3.0, size=shape_hw)).astype(np.float32)
    backend = numpy_backend(GiB)
    radius = blur_radius(sigma)
    whole_cb, whole_s = blurred_coverage_block(backend, coverage, sigma)
    for budget, workers in ((GiB, 1), (GiB, 8), (600_000, 2)):
        out_cb = np.full(shape_hw, np.nan, np.float32)
        groups = halo_superblocks(shape_hw, block, radius, budget, workers=workers)
        for y0, y1, x0, x1 in groups:
            gy0, gy1 = max(0, y0 - radius), min(shape_hw[0], y1 + radius)
            gx0, gx1 = max(0, x0 - radius), min(shape_hw[1], x1 + radius)
            cb, _ = blurred_coverage_block(backend, coverage[gy0:gy1, gx0:gx1], sigma)
            out_cb[y0:y1, x0:x1] = cb[y0 - gy0:y1 - gy0, x0 - gx0:x1 - gx0]
        assert np.array_equal(out_cb, whole_cb), (budget, workers, len(groups))
