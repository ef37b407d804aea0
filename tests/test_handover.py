"""Stage arrays handed from one block stage to the next on the device (phase5/handover.py).

A device run keeps the blocks it computed on the device for the later stages, which then
assemble their regions there instead of reading the store.  The store still gets every block,
and a kept block holds the same bits, so the mosaic must not change by a single bit; numpy
stands in for the device module here.
"""
from __future__ import annotations

import numpy as np
import pytest
import zarr

from zemosaic_ooc.backend import numpy_as_device_backend, numpy_backend
from zemosaic_ooc.demo import make_demo_tiles
from zemosaic_ooc.options import Phase5Options
from zemosaic_ooc.phase5 import pipeline
from zemosaic_ooc.phase5.grid import iter_blocks
from zemosaic_ooc.phase5.handover import StageHandover
from zemosaic_ooc.store import chunks
from zemosaic_ooc.store.mosaic import MosaicStore

SHAPE, BLOCK = (300, 290), 128


@pytest.fixture()
def stage_array(tmp_path):
    """A (300, 290, 3) float32 store array in 128 px chunks, filled block by block."""
    store = MosaicStore.create(tmp_path / "s.zarr", SHAPE, BLOCK)
    array = store.require("stages/example", SHAPE + (3,), "float32", (BLOCK, BLOCK, 3))
    values = np.random.default_rng(3).normal(size=SHAPE + (3,)).astype(np.float32)
    for y0, y1, x0, x1 in iter_blocks(SHAPE, BLOCK):
        array[y0:y1, x0:x1, :] = values[y0:y1, x0:x1]
    return array, values


def _kept_everywhere(array, values, device, capacity=1 << 30):
    handover = StageHandover(device, capacity, SHAPE, BLOCK)
    for y0, y1, x0, x1 in iter_blocks(SHAPE, BLOCK):
        assert handover.keep(array, (y0, y1, x0, x1), values[y0:y1, x0:x1])
    return handover


def test_a_region_across_kept_blocks_equals_the_store_read(stage_array):
    array, values = stage_array
    device = numpy_as_device_backend()
    handover = _kept_everywhere(array, values, device)
    rows, cols = slice(50, 260), slice(100, 290)
    region = handover.region(device, array, rows, cols)
    assert np.array_equal(region, array[rows, cols]) and region.dtype == np.float32
    inside = handover.region(device, array, slice(10, 20), slice(130, 140))     # one block
    assert np.array_equal(inside, values[10:20, 130:140])
    assert handover.summary()["handover_regions_served"] == 2
    # a new array: writing into it leaves the kept block as it was
    inside[...] = 0
    assert np.array_equal(handover.region(device, array, slice(10, 20), slice(130, 140)), values[10:20, 130:140])


def test_a_region_meeting_a_block_not_kept_is_read_from_the_store(stage_array, monkeypatch):
    array, values = stage_array
    device = numpy_as_device_backend()
    handover = _kept_everywhere(array, values, device)
    handover.drop([array], (128, 256, 128, 256))
    reads = []
    monkeypatch.setattr(chunks, "read_region", lambda layout, bounds, _r=chunks.read_region:
                        reads.append(bounds) or _r(layout, bounds))
    assert np.array_equal(handover.region(device, array, slice(100, 200), slice(0, 200)), values[100:200, 0:200])
    assert handover.summary()["handover_regions_served"] == 0 and len(reads) == 1
    # regions away from the dropped block still come from the device
    assert np.array_equal(handover.region(device, array, slice(0, 100), slice(0, 290)), values[0:100])
    assert handover.summary()["handover_regions_served"] == 1 and len(reads) == 1


def test_tasks_on_the_host_read_the_store(stage_array):
    array, values = stage_array
    handover = _kept_everywhere(array, values, numpy_as_device_backend())
    host = numpy_backend()
    assert not handover.takes(host)
    assert np.array_equal(handover.region(host, array, slice(0, 300), slice(0, 290)), values)
    assert handover.summary()["handover_regions_served"] == 0


def test_only_whole_blocks_within_the_capacity_are_kept_in_the_store_dtype(stage_array):
    array, values = stage_array
    device = numpy_as_device_backend()
    block_bytes = BLOCK * BLOCK * 3 * 4
    handover = StageHandover(device, 2 * block_bytes, SHAPE, BLOCK)
    assert not handover.keep(array, (0, 100, 0, 128), values[0:100, 0:128])          # part of a block
    assert not handover.keep(array, (0, 128, 0, 128), None)
    wide = values[0:128, 0:128].astype(np.float64)
    assert handover.keep(array, (0, 128, 0, 128), wide)                              # cast to float32
    assert handover.used == block_bytes
    base = np.ascontiguousarray(values[0:128, 0:256])
    assert handover.keep(array, (0, 128, 128, 256), base[:, 128:])                   # a view: copied
    assert handover.used == 2 * block_bytes
    assert not handover.keep(array, (128, 256, 0, 128), values[128:256, 0:128])       # full
    summary = handover.summary()
    assert summary["handover_kept_blocks"] == 2 and summary["handover_refused_blocks"] == 1
    assert handover.region(device, array, slice(0, 128), slice(0, 256)).dtype == np.float32
    handover.drop([array])
    assert handover.used == 0
    # no device: nothing is kept, every region is the store's
    none = StageHandover.store_only(SHAPE, BLOCK)
    assert not none.takes(device) and not none.keep(array, (0, 128, 0, 128), values[0:128, 0:128])


def _store_arrays(path):
    group = zarr.open_group(str(path), mode="r")
    names = ["mosaic", "coverage", "alpha", "pass2_mask", "stages/pass1_final_mosaic",
             "stages/twopass_mosaic", "stages/patchwork_delta"]
    return {name: group[name][...] for name in names}, {k: group.attrs[k] for k in ("two_pass", "patchwork")}


def test_a_device_run_hands_its_stage_arrays_over_with_the_same_mosaic(tmp_path, monkeypatch):
    """Full default pipeline (two-pass and an acting patchwork suppressor) on the device code
    path, with and without the handover: the same bytes in every array, fewer store reads."""
    tiles = make_demo_tiles(tmp_path / "tiles", nx=3, ny=2, tile_hw=(256, 288), overlap=0.15, seed=5)
    read_bytes = []
    original = chunks.read_region

    def counted(layout, bounds):
        out = original(layout, bounds)
        read_bytes.append(out.nbytes)
        return out

    monkeypatch.setattr(chunks, "read_region", counted)
    runs = {}
    for label, capacity in (("handover", None), ("store", 0)):
        if capacity is not None:
            monkeypatch.setattr(pipeline, "handover_capacity", lambda budget: capacity)
            monkeypatch.setattr(StageHandover, "grow", lambda self, nbytes: None)
        read_bytes.clear()
        summary = pipeline.run_pipeline(tiles, tmp_path / f"{label}.zarr", Phase5Options(block_size=128),
                                        device=numpy_as_device_backend(), workers=2)
        runs[label] = (_store_arrays(tmp_path / f"{label}.zarr"), summary.device, sum(read_bytes))
    (arrays, attrs), device, read_with = runs["handover"]
    (arrays_store, attrs_store), device_store, read_without = runs["store"]
    assert attrs["patchwork"]["ran"] and attrs["two_pass"]["ran"]
    assert attrs == attrs_store
    for name, values in arrays.items():
        assert np.array_equal(values, arrays_store[name], equal_nan=values.dtype.kind == "f"), name
    assert device["handover_regions_served"] > 0 and device["handover_refused_blocks"] == 0
    assert device_store["handover_regions_served"] == 0
    assert read_with < 0.6 * read_without, (read_with, read_without)


def test_a_handover_sent_to_another_process_arrives_empty(stage_array):
    import pickle

    array, values = stage_array
    handover = _kept_everywhere(array, values, numpy_as_device_backend())
    copy = pickle.loads(pickle.dumps(handover))
    assert copy.device is None and copy.used == 0 and copy.shape_hw == SHAPE and copy.block == BLOCK
    assert np.array_equal(copy.region(numpy_backend(), array, slice(0, 10), slice(0, 10)), values[:10, :10])


@pytest.mark.parametrize("kill_at", ["finish:3", "pass2:3", "merge:2"])
def test_a_device_run_resumed_mid_stage_gives_the_same_bytes(tmp_path, kill_at):
    """A device run killed mid-stage and resumed on the device: the blocks done before the kill
    are in the store only, the others are handed over again; regions that meet both come from
    the store.  Every array equals the uninterrupted device run's."""
    import os
    import subprocess
    import sys

    from conftest import REPO_ROOT

    tiles = make_demo_tiles(tmp_path / "tiles", nx=3, ny=2, tile_hw=(256, 288), overlap=0.15, seed=5)
    options = Phase5Options(block_size=128)
    pipeline.run_pipeline(tiles, tmp_path / "ref.zarr", options, device=numpy_as_device_backend(), workers=2)
    out = tmp_path / "killed.zarr"
    script = ("import sys\n"
              "from zemosaic_ooc.backend import numpy_as_device_backend\n"
              "from zemosaic_ooc.options import Phase5Options\n"
              "from zemosaic_ooc.phase5.pipeline import run_pipeline\n"
              "run_pipeline(sys.argv[2:], sys.argv[1], Phase5Options(block_size=128),\n"
              "             device=numpy_as_device_backend(), workers=2)\n")
    env = dict(os.environ, ZEMOSAIC_OOC_TEST_KILL_AT=kill_at,
               PYTHONPATH=os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")])))
    killed = subprocess.run([sys.executable, "-c", script, str(out), *map(str, tiles)], env=env,
                            capture_output=True, text=True, timeout=300)
    assert killed.returncode == -9, killed.stderr[-2000:]
    summary = pipeline.resume_pipeline(out, device=numpy_as_device_backend(), workers=2)
    assert summary.device["handover_regions_served"] > 0
    (arrays, attrs), (expected, expected_attrs) = _store_arrays(out), _store_arrays(tmp_path / "ref.zarr")
    assert attrs == expected_attrs
    for name, values in arrays.items():
        assert np.array_equal(values, expected[name], equal_nan=values.dtype.kind == "f"), name


def test_a_block_the_device_has_no_room_to_copy_is_left_to_the_store(stage_array):
    """keep runs in block commits, outside the OOM guard: an out-of-memory error in its cast
    is a refusal, not a failed run; other errors are raised."""
    from zemosaic_ooc.backend import DeviceError, DeviceOutOfMemory

    array, values = stage_array
    handover = StageHandover(numpy_as_device_backend(), 1 << 30, SHAPE, BLOCK)

    class Failing(np.ndarray):
        error: type = DeviceOutOfMemory

        def astype(self, *args, **kwargs):
            raise self.error("injected")

    block = values[0:128, 0:128].copy().view(Failing)
    assert not handover.keep(array, (0, 128, 0, 128), block)
    assert handover.summary()["handover_refused_blocks"] == 1 and handover.used == 0
    Failing.error = DeviceError
    with pytest.raises(DeviceError):
        handover.keep(array, (0, 128, 0, 128), block)


def test_the_samples_share_goes_to_the_handover_after_pass_1(tmp_path):
    """The background walk's samples are used up by pass 1: their share of the VRAM budget is
    then the handover's, so a small device keeps more of the later stages' blocks."""
    from zemosaic_ooc import device_budget

    tiles = make_demo_tiles(tmp_path / "tiles", nx=2, ny=2, tile_hw=(192, 208), overlap=0.3, seed=3)
    budget = 8 << 20
    summary = pipeline.run_pipeline(tiles, tmp_path / "out.zarr", Phase5Options(block_size=128),
                                    device=numpy_as_device_backend(budget), workers=2)
    assert summary.device["handover_capacity"] == (device_budget.handover_capacity(budget)
                                                   + device_budget.samples_capacity(budget))
    assert summary.device["handover_peak_bytes"] > device_budget.handover_capacity(budget)


def test_lending_takes_only_free_capacity_and_growing_gives_it_back(stage_array):
    """The pass-2 samples borrow the handover's free room (lend) and return it after pass 2."""
    array, values = stage_array
    device = numpy_as_device_backend()
    block_bytes = BLOCK * BLOCK * 3 * 4
    handover = StageHandover(device, 3 * block_bytes, SHAPE, BLOCK)
    assert handover.keep(array, (0, 128, 0, 128), values[0:128, 0:128])
    assert handover.lend(10 * block_bytes) == 2 * block_bytes          # only what is free
    assert handover.capacity == block_bytes
    assert not handover.keep(array, (0, 128, 128, 256), values[0:128, 128:256])   # lent away
    assert handover.lend(block_bytes) == 0
    handover.grow(2 * block_bytes)
    assert handover.capacity == 3 * block_bytes
    assert handover.keep(array, (0, 128, 128, 256), values[0:128, 128:256])
    assert StageHandover.store_only(SHAPE, BLOCK).lend(block_bytes) == 0
