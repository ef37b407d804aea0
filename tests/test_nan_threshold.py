"""§2.8 θ (plan.nan_threshold): 0.5 when the tile's mask passes 0.5 somewhere, else 0; with
ALPHA the mask is a_t, so only the ALPHA plane is read."""
from __future__ import annotations

import dataclasses

import pytest

from zemosaic_ooc.phase5.plan import nan_threshold, read_raw_region
from zemosaic_ooc.phase5.prep import prepare_region

from planned_demo import planned_demo


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    return planned_demo(tmp_path_factory.mktemp("theta"), seed=3)


def _theta_from_whole_tile(backend, store, tile):
    h, w = tile.cropped_hw
    data, alpha = read_raw_region(store, tile, (0, h), (0, w))
    plan = dataclasses.replace(tile, nan_threshold=None)
    _, mask, _ = prepare_region(backend, data, alpha, plan, apply_gain_offset=False, want_weight=False)
    return 0.5 if float(mask.max()) > 0.5 else 0.0


class _NoDataStore:
    """A tile store whose data planes must not be read (ALPHA is enough for θ)."""

    def __init__(self, store, scale_alpha=1):
        self.store, self.scale_alpha = store, scale_alpha

    def read_data(self, *args, **kwargs):
        raise AssertionError("θ of a tile with ALPHA read its data planes")

    def read_alpha(self, *args, **kwargs):
        return self.store.read_alpha(*args, **kwargs) // self.scale_alpha


def test_theta_of_tiles_with_alpha_comes_from_alpha_alone(setup):
    backend, store, tiles, _, _ = setup
    assert all(t.has_alpha for t in tiles)
    for tile in tiles:
        assert nan_threshold(backend, _NoDataStore(store), tile) == _theta_from_whole_tile(backend, store, tile) == 0.5


def test_alpha_never_above_half_gives_theta_zero(setup):
    backend, store, tiles, _, _ = setup
    # ALPHA / 3 tops out at 85/255 = 0.33: the mask never passes 0.5
    assert nan_threshold(backend, _NoDataStore(store, scale_alpha=3), tiles[0], rows_per_strip=17) == 0.0


def test_theta_without_alpha_comes_from_the_finite_data(setup):
    backend, store, tiles, _, _ = setup
    plain = dataclasses.replace(tiles[1], has_alpha=False, nan_threshold=0.25)
    assert nan_threshold(backend, store, plain) == _theta_from_whole_tile(backend, store, plain) == 0.5
    assert plain.nan_threshold == 0.25                  # the plan's value is left as it was
