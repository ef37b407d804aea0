"""Ingest (store/tiles.py): one read per tile, staged writes, nothing left behind on bad input."""
from __future__ import annotations

import shutil

import numpy as np
import pytest

from zemosaic_ooc.demo import make_demo_tiles
from zemosaic_ooc.errors import InputError
from zemosaic_ooc.store import tiles as tiles_module
from zemosaic_ooc.store.tiles import TileCache, _file_checksum, ingest_tiles


@pytest.fixture(scope="module")
def demo_tiles(tmp_path_factory):
    return make_demo_tiles(tmp_path_factory.mktemp("ingest"), nx=3, ny=1, tile_hw=(96, 112), seed=4)


@pytest.mark.parametrize("cache_bytes", [None, 0, 1 << 30])
def test_each_tile_is_read_once_whether_or_not_the_cache_holds_it(demo_tiles, tmp_path, monkeypatch,
                                                                   cache_bytes):
    reads = []
    original = tiles_module.read_tile_fits

    def counted(path, *args, **kwargs):
        reads.append(str(path))
        return original(path, *args, **kwargs)

    monkeypatch.setattr(tiles_module, "read_tile_fits", counted)
    cache = None if cache_bytes is None else TileCache(cache_bytes)
    store = ingest_tiles(demo_tiles, tmp_path / "tiles", cache=cache, workers=2, memory_budget=1 << 30)
    assert sorted(reads) == sorted(str(p) for p in demo_tiles)
    # the checksum taken on the way equals a separate hash of the whole file
    assert [r.checksum for r in store.records] == [_file_checksum(p) for p in demo_tiles]
    assert [r.index for r in store.records] == [0, 1, 2]
    assert not (tmp_path / "tiles.partial").exists() and not (tmp_path / "tiles" / "staging").exists()


def test_staged_store_matches_the_fits_data(demo_tiles, tmp_path):
    from astropy.io import fits

    store = ingest_tiles(demo_tiles, tmp_path / "tiles", workers=3, memory_budget=1 << 30)
    for index, path in enumerate(demo_tiles):
        expected = fits.getdata(path, 0).astype(np.float32)
        assert np.array_equal(store.data(index)[...], expected)


def test_duplicate_tile_skipped_keeps_the_indices_dense(demo_tiles, tmp_path):
    copy = tmp_path / "copy.fits"
    shutil.copy(demo_tiles[0], copy)
    store = ingest_tiles([demo_tiles[0], copy, demo_tiles[1], demo_tiles[2]], tmp_path / "tiles",
                         skip_bad=True, workers=2, memory_budget=1 << 30)
    assert [r.source for r in store.records] == [str(p.resolve()) for p in demo_tiles]
    assert sorted(p.name for p in (tmp_path / "tiles" / "tiles").iterdir() if p.is_dir()) == ["0", "1", "2"]
    assert "duplicate tile" in store.group.attrs["skipped"][0]


def test_bad_tile_leaves_an_existing_store_untouched_and_no_partial(demo_tiles, tmp_path):
    first = ingest_tiles(demo_tiles[:2], tmp_path / "tiles")
    before = sorted(str(p.relative_to(tmp_path)) for p in (tmp_path / "tiles").rglob("*"))
    bad = tmp_path / "bad.fits"
    bad.write_bytes(b"not a fits file at all" * 200)
    with pytest.raises(InputError, match="bad.fits"):
        ingest_tiles([demo_tiles[2], bad], tmp_path / "tiles", workers=2, memory_budget=1 << 30)
    assert sorted(str(p.relative_to(tmp_path)) for p in (tmp_path / "tiles").rglob("*")) == before
    assert not (tmp_path / "tiles.partial").exists()
    assert len(first.records) == 2


def test_a_cache_miss_reads_the_region_and_never_evicts_a_cached_tile(demo_tiles, tmp_path):
    """Room for one tile: the first stays cached, the others are read region by region."""
    one_tile = 3 * 96 * 112 * 4
    cache = TileCache(one_tile + 96 * 112 * 4 + 100)      # the data and the alpha of one tile
    store = ingest_tiles(demo_tiles, tmp_path / "tiles", cache=cache)
    assert cache.get((0, "data")) is not None and cache.get((1, "data")) is None
    rows, cols = slice(10, 30), slice(5, 50)
    for index in (1, 2, 1, 0, 2):
        region = store.read_data(index, rows, cols)
        assert np.array_equal(region, store.data(index)[:, rows, cols])
    assert cache.get((0, "data")) is not None
    assert cache.get((1, "data")) is None and cache.get((2, "data")) is None


@pytest.mark.parametrize("side", [1024, 2048])
def test_a_tile_in_flight_holds_no_more_than_the_prefetch_estimate(tmp_path, side):
    """tracemalloc peak of reading, checking and writing one tile against ``_held_bytes``, the
    estimate that sizes how many tiles ingest reads at once."""
    import tracemalloc

    import zarr

    from zemosaic_ooc.store.tiles import _held_bytes, _stage_tile

    tile = make_demo_tiles(tmp_path / "big", nx=1, ny=1, tile_hw=(side, side), seed=5)[0]
    group = zarr.open_group(str(tmp_path / "probe.zarr"), mode="w")
    _stage_tile(group, 0, tile, 512)                 # imports and first-use allocations
    tracemalloc.start()
    try:
        _stage_tile(group, 1, tile, 512)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    estimate = _held_bytes(tile)
    assert peak <= estimate, (peak, estimate, tile.stat().st_size)
    assert estimate <= 2.1 * tile.stat().st_size        # the band-wise write keeps it low


def test_the_empty_tile_check_finds_a_single_finite_value_anywhere():
    from zemosaic_ooc.store.tiles import _any_finite

    chw = np.full((3, 200, 30), np.nan, np.float32)
    chw[1, 150:, :] = np.inf
    assert not _any_finite(chw, rows=64)
    chw[2, 199, 29] = 1.0                          # in the last band only
    assert _any_finite(chw, rows=64)
