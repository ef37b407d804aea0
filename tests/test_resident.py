"""Resident prepared tiles (phase5/resident.py): gathers from a whole prepared tile kept on the
device give the region path's values bit for bit, within the capacity, and the pipeline's
device path uses them (numpy standing in for the device)."""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from zemosaic_ooc.backend import numpy_as_device_backend
from zemosaic_ooc.memory import MemoryShelf
from zemosaic_ooc.options import Phase5Options
from zemosaic_ooc.phase5.coadd import coadd_block, union_bbox
from zemosaic_ooc.phase5.grid import iter_blocks
from zemosaic_ooc.phase5.pipeline import run_pipeline
from zemosaic_ooc.phase5.resident import ResidentTiles, resident_bytes

from planned_demo import planned_demo


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    backend, store, tiles, grid, shape_hw = planned_demo(tmp_path_factory.mktemp("resident"), seed=11)
    for k, tile in enumerate(tiles):
        tile.union_bbox = union_bbox(backend, store, tile, grid)
        tile.bg_offsets = [0.01 * k, -0.02 * k, 0.005]
        tile.gain, tile.offset = 1.0 + 0.03 * k, 0.002 * k
        tile.two_pass_gain = 1.0 + 0.05 * (k - 1)
    return backend, store, tiles, grid, list(iter_blocks(shape_hw, 96))


def _with_resident(backend, capacity):
    return dataclasses.replace(backend, resident=ResidentTiles(capacity))


def _assert_blocks_equal(backend, other, store, tiles, grid, blocks, **kwargs):
    for block in blocks:
        reference = coadd_block(backend, store, tiles, grid, block, **kwargs)
        result = coadd_block(other, store, tiles, grid, block, **kwargs)
        assert np.array_equal(reference.mosaic, result.mosaic, equal_nan=True)
        assert np.array_equal(reference.coverage, result.coverage)
        assert np.array_equal(reference.union, result.union)


def test_blocks_from_resident_tiles_equal_blocks_from_region_reads(setup):
    backend, store, tiles, grid, blocks = setup
    resident_backend = _with_resident(backend, 1 << 30)
    _assert_blocks_equal(backend, resident_backend, store, tiles, grid, blocks)
    # every tile was read and prepared once, then gathered from by every block it reaches
    assert resident_backend.resident.loads == len(tiles) == len(resident_backend.resident)
    assert resident_backend.resident.used == sum(resident_bytes(t) for t in tiles)


def test_pass2_resident_tiles_carry_the_two_pass_gain_and_binary_weights(setup):
    backend, store, tiles, grid, blocks = setup
    resident_backend = _with_resident(backend, 1 << 30)
    _assert_blocks_equal(backend, resident_backend, store, tiles, grid, blocks)
    _assert_blocks_equal(backend, resident_backend, store, tiles, grid, blocks, two_pass=True)
    # the pass-2 preparation is kept apart from pass 1's (different gain and weights)
    assert resident_backend.resident.loads == 2 * len(tiles)


def test_a_capacity_below_one_tile_keeps_nothing_and_reads_regions(setup):
    backend, store, tiles, grid, blocks = setup
    small = _with_resident(backend, min(resident_bytes(t) for t in tiles) - 1)
    _assert_blocks_equal(backend, small, store, tiles, grid, blocks)
    assert len(small.resident) == 0 and small.resident.loads == 0


def test_resident_tiles_stay_within_their_capacity(setup):
    backend, store, tiles, grid, blocks = setup
    capacity = 2 * max(resident_bytes(t) for t in tiles)
    two = _with_resident(backend, capacity)
    _assert_blocks_equal(backend, two, store, tiles, grid, blocks)
    assert 0 < two.resident.used <= capacity and len(two.resident) <= 2
    assert two.resident.loads > len(tiles)          # evicted tiles were loaded again when needed


def test_freeing_device_memory_drops_the_resident_tiles(setup):
    backend, store, tiles, grid, blocks = setup
    device = dataclasses.replace(numpy_as_device_backend(), resident=ResidentTiles(1 << 30))
    coadd_block(device, store, tiles, grid, blocks[0])
    assert len(device.resident) > 0
    device.free_memory()
    assert len(device.resident) == 0 and device.resident.used == 0


def test_the_shelf_counts_device_values_against_the_device_capacity():
    shelf = MemoryShelf(100, device_capacity=1000)
    assert shelf.put("host", object(), 80)
    assert not shelf.put("host2", object(), 80)                 # host share full
    assert shelf.put("dev", object(), 900, on_device=True)      # VRAM share is separate
    assert not shelf.put("dev2", object(), 200, on_device=True)
    assert (shelf.used, shelf.device_used) == (80, 900)
    shelf.pop("dev")
    assert shelf.device_used == 0 and shelf.put("dev2", object(), 200, on_device=True)


def test_freeing_device_memory_drops_the_device_values_of_the_samples_shelves():
    """After an OOM the block samples kept in VRAM go (their blocks are resampled); host ones stay."""
    shelf = MemoryShelf(100, device_capacity=1000)
    assert shelf.put("host", object(), 80)
    assert shelf.put("dev", object(), 900, on_device=True)
    device = dataclasses.replace(numpy_as_device_backend(), shelves=[shelf])
    device.free_memory()
    assert shelf.get("dev") is None and shelf.device_used == 0
    assert shelf.get("host") is not None and shelf.used == 80
    assert shelf.put("dev2", object(), 1000, on_device=True)          # the room is back


def test_the_device_path_uses_resident_tiles_and_gives_the_cpu_mosaic_bit_for_bit(tmp_path):
    from golden import read_store_window
    from zemosaic_ooc.demo import make_demo_tiles

    tiles = make_demo_tiles(tmp_path / "tiles", nx=2, ny=2, tile_hw=(192, 224), seed=4)
    opts = Phase5Options(block_size=128)
    run_pipeline(tiles, tmp_path / "cpu.zarr", opts, workers=2)
    device = numpy_as_device_backend()
    summary = run_pipeline(tiles, tmp_path / "dev.zarr", opts, workers=2, device=device)
    assert summary.device["resident_tiles"] == len(tiles)
    assert summary.device["replays"] == 0
    assert device.resident is None                   # given back at the end of the run
    ours, ref = read_store_window(tmp_path / "dev.zarr"), read_store_window(tmp_path / "cpu.zarr")
    for a, b in zip(ours[:3], ref[:3]):
        assert np.array_equal(a, b, equal_nan=True)
