"""The inter-tile calibration measures its pairs on several threads: the result is the
one-thread result exactly (pairs taken in order), and the warning filters are left as found."""
from __future__ import annotations

import warnings

import pytest

from zemosaic_ooc.options import Phase5Options
from zemosaic_ooc.phase5.calibrate import calibrate
from zemosaic_ooc.phase5.plan import StoreCalibrationSource, geometry

from planned_demo import planned_demo


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    return planned_demo(tmp_path_factory.mktemp("calib"), seed=9)


def _run(setup, workers):
    backend, store, tiles, grid, shape_hw = setup
    opts = Phase5Options()
    source = StoreCalibrationSource(backend, store, tiles, int(opts.intertile_preview_size))
    return calibrate(backend, [geometry(t) for t in tiles], [t.tile_id for t in tiles],
                     [t.tau for t in tiles], grid.wcs(), shape_hw, opts, source, workers=workers)


def test_calibration_on_threads_equals_the_one_thread_result(setup):
    one = _run(setup, 1)
    several = _run(setup, 3)
    assert one.applied and len(one.pair_fits) >= 4
    assert one.to_json() == several.to_json()


def test_calibration_threads_leave_the_warning_filters_as_found(setup):
    before = list(warnings.filters)
    _run(setup, 4)
    assert warnings.filters == before


def test_corrected_calibration_on_threads_equals_the_one_thread_result(setup):
    """The corrected mode's pairs (phase5/corrected.py) are sampled and fitted side by side too."""
    from zemosaic_ooc.phase5.corrected import corrected_calibration, corrected_to_json

    backend, store, tiles, grid, _ = setup
    ids = [t.tile_id for t in tiles]
    before = list(warnings.filters)
    one = corrected_calibration(backend, store, tiles, grid, workers=1)
    several = corrected_calibration(backend, store, tiles, grid, workers=3)
    assert warnings.filters == before
    assert len(one.pair_fits) >= 4 and one.applied
    assert corrected_to_json(one, ids) == corrected_to_json(several, ids)
