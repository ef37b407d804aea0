"""§5.3 step 3: the band-scanning union bbox equals a full nearest-neighbour scan of the box."""
from __future__ import annotations

import numpy as np
import pytest

from zemosaic_ooc.phase5.coadd import tile_strips, union_bbox
from zemosaic_ooc.phase5.prep import union_mask
from zemosaic_ooc.phase5.resample import sample_nearest

from planned_demo import planned_demo


def full_scan_bbox(backend, store, tile, grid):
    """The reference: nearest-neighbour b_t on every pixel of the §4.2 box."""
    rows, cols = [], []
    for strip, uu, vv, origin, raw_data, raw_alpha in tile_strips(backend, store, tile, grid):
        b = union_mask(backend, raw_data, raw_alpha, tile)
        vals = sample_nearest(backend, b[None], origin, tile.cropped_hw, uu, vv)[0]
        ys, xs = np.nonzero(np.nan_to_num(vals, nan=0.0) > 0)
        rows += list(ys + strip[0])
        cols += list(xs + strip[2])
    if not rows:
        return None
    return (min(rows), max(rows) + 1, min(cols), max(cols) + 1)


@pytest.mark.parametrize("band", [1, 7, 32])
def test_union_bbox_equals_full_scan(tmp_path, band):
    backend, store, tiles, grid, _ = planned_demo(tmp_path, seed=3)
    for tile in tiles:
        expected = full_scan_bbox(backend, store, tile, grid)
        assert expected is not None
        assert union_bbox(backend, store, tile, grid, band=band) == expected
