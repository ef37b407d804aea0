"""Pass 1 on samples kept from the background stage equals pass 1 resampling; the two
background walks (by blocks, pair by pair) give the same offsets."""
from __future__ import annotations

import numpy as np
import pytest

from zemosaic_ooc.phase5.background import background_offsets
from zemosaic_ooc.memory import MemoryShelf
from zemosaic_ooc.phase5.coadd import coadd_block, union_bbox
from zemosaic_ooc.phase5.grid import iter_blocks

from planned_demo import planned_demo


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    backend, store, tiles, grid, shape_hw = planned_demo(tmp_path_factory.mktemp("samples"), seed=5)
    for tile in tiles:
        tile.union_bbox = union_bbox(backend, store, tile, grid)
    return backend, store, tiles, grid, list(iter_blocks(shape_hw, 96))


def test_background_by_blocks_equals_pair_by_pair(setup):
    backend, store, tiles, grid, blocks = setup
    by_pairs, m_pairs = background_offsets(backend, store, tiles, grid)
    cache = MemoryShelf(1 << 30)
    by_blocks, m_blocks = background_offsets(backend, store, tiles, grid, blocks=blocks, cache=cache,
                                             diff_bytes=1 << 30, workers=2)
    assert np.array_equal(np.isnan(m_pairs), np.isnan(m_blocks))
    assert np.nanmax(np.abs(m_pairs - m_blocks)) < 1e-4
    assert np.max(np.abs(by_pairs - by_blocks)) < 1e-4
    assert len(cache.items) == len(blocks)


def test_pass1_on_kept_samples_equals_resampling(setup):
    backend, store, tiles, grid, blocks = setup
    offsets, _ = background_offsets(backend, store, tiles, grid)
    for tile, row in zip(tiles, offsets):
        tile.bg_offsets = [float(v) for v in row]
    cache = MemoryShelf(1 << 30)
    background_offsets(backend, store, tiles, grid, blocks=blocks, cache=cache, diff_bytes=1 << 30)
    for block in blocks:
        fresh = coadd_block(backend, store, tiles, grid, block)
        kept = coadd_block(backend, store, tiles, grid, block, samples=cache.pop(block))
        assert np.array_equal(fresh.mosaic, kept.mosaic, equal_nan=True)
        assert np.array_equal(fresh.coverage, kept.coverage)
        assert np.array_equal(fresh.union, kept.union)
    assert cache.used == 0


def test_sample_cache_respects_its_capacity(setup):
    backend, store, tiles, grid, blocks = setup
    cache = MemoryShelf(200_000)
    background_offsets(backend, store, tiles, grid, blocks=blocks, cache=cache, diff_bytes=1 << 30)
    assert 0 < cache.used <= cache.capacity
    assert 0 < len(cache.items) < len(blocks)


def test_block_result_does_not_depend_on_the_chunk_size(setup):
    """A GPU backend resamples and accumulates a whole block at once (chunk_pixels = 4 Mpx):
    every formula is per pixel, so the block is bit-identical to the CPU's cache-sized chunks."""
    import dataclasses

    from zemosaic_ooc.backend import GPU_CHUNK_PIXELS

    backend, store, tiles, grid, blocks = setup
    whole = dataclasses.replace(backend, chunk_pixels=GPU_CHUNK_PIXELS)
    small = dataclasses.replace(backend, chunk_pixels=257)
    for block in blocks[:6]:
        reference = coadd_block(backend, store, tiles, grid, block)
        for other in (whole, small):
            result = coadd_block(other, store, tiles, grid, block)
            assert np.array_equal(reference.mosaic, result.mosaic, equal_nan=True)
            assert np.array_equal(reference.coverage, result.coverage)
            assert np.array_equal(reference.union, result.union)


def test_samples_of_another_array_module_are_resampled_not_reused(setup):
    """Samples kept by a device background walk are not used by a CPU replay of the block."""
    backend, store, tiles, grid, blocks = setup
    block = blocks[0]
    kept = coadd_block(backend, store, tiles, grid, block)
    from zemosaic_ooc.phase5.coadd import sample_block

    foreign = sample_block(backend, store, tiles, grid, block)
    for item in foreign.tiles:
        item.data[...] = 1e9                     # poisoned: must not reach the result
    foreign.xp = object()                        # "another array module"
    again = coadd_block(backend, store, tiles, grid, block, samples=foreign)
    assert np.array_equal(kept.mosaic, again.mosaic, equal_nan=True)


def test_pass2_offsets_by_blocks_match_pair_by_pair_and_keep_the_pass2_samples(setup):
    """The pass-2 background offsets (tiles at their two-pass gains, binary weights) by a walk
    over pass 2's blocks: the pair-by-pair values (up to the float32 rounding of the mapping
    over another rectangle), and pass 2 on the kept samples equals pass 2 resampling."""
    backend, store, tiles, grid, blocks = setup
    for tile, gain in zip(tiles, (0.93, 1.04, 0.97, 1.08, 0.9, 1.02)):
        tile.two_pass_gain = gain
    try:
        by_pairs, m_pairs = background_offsets(backend, store, tiles, grid, two_pass=True)
        cache = MemoryShelf(1 << 30)
        by_blocks, m_blocks = background_offsets(backend, store, tiles, grid, two_pass=True, blocks=blocks,
                                                 cache=cache, diff_bytes=1 << 30, workers=2)
        assert np.array_equal(np.isnan(m_pairs), np.isnan(m_blocks))
        assert np.nanmax(np.abs(m_pairs - m_blocks)) < 1e-4
        assert np.max(np.abs(by_pairs - by_blocks)) < 1e-4
        # the gains reach the differences: the first pass's offsets are other values
        first, _ = background_offsets(backend, store, tiles, grid)
        assert np.max(np.abs(first - by_blocks)) > 1e-2
        assert len(cache.items) == len(blocks)
        for tile, row in zip(tiles, by_blocks):
            tile.bg_offsets_pass2 = [float(v) for v in row]
        for block in blocks:
            kwargs = dict(offsets_attr="bg_offsets_pass2", with_union=False, two_pass=True)
            fresh = coadd_block(backend, store, tiles, grid, block, **kwargs)
            kept = coadd_block(backend, store, tiles, grid, block, samples=cache.pop(block), **kwargs)
            assert np.array_equal(fresh.mosaic, kept.mosaic, equal_nan=True)
            assert np.array_equal(fresh.coverage, kept.coverage)
            assert kept.union is None
        assert cache.used == 0
    finally:
        for tile in tiles:
            tile.two_pass_gain = 1.0


def test_a_run_samples_each_pass2_block_once(tmp_path, monkeypatch):
    """The pass-2 walk's samples feed pass 2: each block is resampled for pass 2 once, not
    twice (walk, then pass 2), and the mosaic is the one of a run that resamples."""
    from zemosaic_ooc.demo import make_demo_tiles
    from zemosaic_ooc.options import Phase5Options
    from zemosaic_ooc.phase5 import background, coadd
    from zemosaic_ooc.phase5.pipeline import run_pipeline
    from zemosaic_ooc.store.export import read_window

    tiles = make_demo_tiles(tmp_path / "tiles", nx=2, ny=2, tile_hw=(160, 176), overlap=0.25, seed=6)
    opts = Phase5Options(gpu="off", block_size=96, patchwork_suppressor_enabled=False)
    original = coadd.sample_block
    calls = {"pass2": 0}

    def counting(*args, **kwargs):
        if kwargs.get("two_pass"):
            calls["pass2"] += 1
        return original(*args, **kwargs)

    monkeypatch.setattr(coadd, "sample_block", counting)
    monkeypatch.setattr(background, "sample_block", counting)
    summary = run_pipeline(tiles, tmp_path / "kept.zarr", opts, workers=2)
    assert summary.two_pass.get("ran")
    blocks = len(list(iter_blocks(summary.shape_hw, 96)))
    assert calls["pass2"] == blocks
    # the same run without the kept samples (no room for them) resamples in pass 2
    calls["pass2"] = 0
    monkeypatch.setattr(MemoryShelf, "put", lambda self, *a, **k: False)
    run_pipeline(tiles, tmp_path / "resampled.zarr", opts, workers=2)
    assert calls["pass2"] == 2 * blocks
    kept, resampled = read_window(tmp_path / "kept.zarr")[0], read_window(tmp_path / "resampled.zarr")[0]
    assert np.array_equal(kept, resampled, equal_nan=True)


def test_overlap_differences_are_the_usable_differences_of_each_channel_in_row_order():
    from zemosaic_ooc.backend import numpy_backend
    from zemosaic_ooc.phase5.background import overlap_differences

    rng = np.random.default_rng(4)
    d_s, d_t = (rng.normal(100.0, 5.0, (7, 9, 3)).astype(np.float32) for _ in range(2))
    use_s, use_t = (rng.random((7, 9, 3)) > 0.3 for _ in range(2))
    use_s[:, :, 2] = False                                     # a channel with nothing usable
    values = overlap_differences(numpy_backend(), (d_s, use_s), (d_t, use_t))
    for c in range(3):
        both = use_s[..., c] & use_t[..., c]
        np.testing.assert_array_equal(values[c], (d_s - d_t)[..., c][both])
        assert values[c].dtype == np.float32
    assert values[2].size == 0


def test_region_bounds_cover_the_inside_positions_in_one_pass():
    from zemosaic_ooc.phase5.resample import region_bounds

    u = np.array([[-3.0, 0.2, 5.7], [np.nan, 8.9, 12.0]])
    v = np.array([[1.0, 2.6, 3.1], [4.0, np.nan, 0.0]])
    # inside a 10×10 region (−0.5 … 9.5): (0.2, 2.6), (5.7, 3.1), (8.9, nan → out)
    assert region_bounds(u, v, (10, 10), np) == (1, 6, 0, 8)
    assert region_bounds(u + 100.0, v, (10, 10), np) is None   # nothing inside
    assert region_bounds(np.empty((0, 3)), np.empty((0, 3)), (10, 10), np) is None
