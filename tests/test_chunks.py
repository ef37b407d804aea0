"""Direct chunk reads (store/chunks.py): the same values as zarr's reads, on the calling thread,
for every slice of the project's arrays; zarr's own path for anything else."""
from __future__ import annotations

import pickle

import numpy as np
import pytest
import zarr

from zemosaic_ooc.store.chunks import DirectArray, _direct_layout
from zemosaic_ooc.store.codecs import create_checked_array


def _project_array(tmp_path, shape, chunks, dtype, fill_value, name="a"):
    group = zarr.open_group(str(tmp_path / "s.zarr"), mode="a")
    return create_checked_array(group, name, shape=shape, dtype=dtype, chunks=chunks, fill_value=fill_value)


def _random_slices(rng, shape, count):
    for _ in range(count):
        selection = []
        for n in shape:
            a, b = sorted(int(v) for v in rng.integers(0, n + 1, 2))
            selection.append(slice(a, b))
        yield tuple(selection)


@pytest.mark.parametrize("shape, chunks, dtype, fill", [
    ((70, 53, 3), (16, 16, 3), "float32", float("nan")),
    ((70, 53), (32, 20), "float32", 0.0),
    ((41, 29), (16, 16), "uint8", 0),
    ((3, 50, 45), (3, 16, 16), "float32", 0.0),
])
def test_direct_reads_equal_zarrs_for_every_slice(tmp_path, shape, chunks, dtype, fill):
    rng = np.random.default_rng(3)
    array = _project_array(tmp_path, shape, chunks, dtype, fill)
    values = (rng.random(shape) * 200).astype(dtype)
    array[...] = values
    direct = DirectArray(array)
    assert _direct_layout(array) is not None
    selections = list(_random_slices(rng, shape, 60))
    selections += [(slice(None),) * len(shape), (Ellipsis,), (slice(0, chunks[0]),),
                   tuple(slice(0, c) for c in chunks),                          # one whole chunk
                   tuple(slice(n - n % c or n - c, n) for n, c in zip(shape, chunks)),   # the edge chunk
                   (slice(-5, None),), (slice(3, 3),)]
    for selection in selections:
        got, want = direct[selection], array[selection]
        assert got.dtype == want.dtype and got.shape == want.shape, selection
        assert np.array_equal(got, want, equal_nan=True), selection
        assert got.flags.c_contiguous and got.flags.writeable


def test_a_whole_chunk_read_is_a_private_copy(tmp_path):
    array = _project_array(tmp_path, (32, 32), (16, 16), "float32", 0.0)
    array[...] = np.arange(32 * 32, dtype=np.float32).reshape(32, 32)
    direct = DirectArray(array)
    block = direct[0:16, 16:32]
    block[...] = -1.0
    assert float(direct[0:16, 16:32].min()) == 16.0


def test_chunks_never_written_read_as_the_fill_value(tmp_path):
    array = _project_array(tmp_path, (40, 40, 3), (16, 16, 3), "float32", float("nan"))
    array[0:16, 0:16, :] = 1.0
    direct = DirectArray(array)
    region = direct[8:40, 8:40, :]
    assert np.array_equal(region, array[8:40, 8:40, :], equal_nan=True)
    assert np.isnan(region[-1, -1]).all() and (region[0, 0] == 1.0).all()


def test_a_damaged_chunk_fails_to_read_as_with_zarr(tmp_path):
    array = _project_array(tmp_path, (20, 20), (10, 10), "float32", 0.0)
    array[...] = 1.0
    chunk = tmp_path / "s.zarr" / "a" / "c" / "1" / "0"
    raw = bytearray(chunk.read_bytes())
    raw[9] ^= 0x10
    chunk.write_bytes(bytes(raw))
    direct = DirectArray(array)
    with pytest.raises(ValueError, match="checksum"):
        direct[10:20, 0:10]
    with pytest.raises(ValueError, match="checksum"):
        direct[5:15, :]
    assert np.array_equal(direct[0:10, :], np.ones((10, 20), np.float32))   # the others still read
    chunk.write_bytes(bytes(raw[:-3]))
    with pytest.raises(ValueError):
        direct[10:20, 0:10]


def test_other_layouts_and_selections_are_read_by_zarr(tmp_path):
    group = zarr.open_group(str(tmp_path / "o.zarr"), mode="w")
    compressed = group.create_array("z", shape=(30, 30), dtype="float32", chunks=(10, 10))  # zstd by default
    compressed[...] = np.eye(30, dtype=np.float32)
    assert _direct_layout(compressed) is None
    direct = DirectArray(compressed)
    assert np.array_equal(direct[5:25, 3:17], np.eye(30, dtype=np.float32)[5:25, 3:17])
    own = _project_array(tmp_path, (30, 30), (10, 10), "float32", 0.0)
    own[...] = np.arange(900, dtype=np.float32).reshape(30, 30)
    mine = DirectArray(own)
    assert float(mine[4, 5]) == 125.0                                   # an integer index: zarr
    assert np.array_equal(mine[::2, 1:3], own[::2, 1:3])                # a step: zarr
    assert mine.shape == (30, 30) and mine.chunks == (10, 10)           # attributes: zarr's


def test_a_direct_array_pickles_for_dask_workers(tmp_path):
    array = _project_array(tmp_path, (20, 20), (10, 10), "float32", 0.0)
    array[...] = 2.0
    again = pickle.loads(pickle.dumps(DirectArray(array)))
    assert isinstance(again, DirectArray) and float(again[0:20, 0:20].sum()) == 800.0
    again[0:10, 0:10] = 0.0                                             # writes go through zarr
    assert float(DirectArray(array)[0:20, 0:20].sum()) == 600.0


@pytest.mark.parametrize("shape, chunks, dtype, fill", [
    ((70, 53, 3), (16, 16, 3), "float32", float("nan")),
    ((41, 29), (16, 16), "uint8", 0),
    ((3, 50, 45), (3, 16, 16), "float32", 0.0),
])
def test_direct_writes_make_the_chunk_files_zarr_makes(tmp_path, shape, chunks, dtype, fill):
    rng = np.random.default_rng(5)
    by_zarr = _project_array(tmp_path, shape, chunks, dtype, fill, name="by_zarr")
    by_us = DirectArray(_project_array(tmp_path, shape, chunks, dtype, fill, name="by_us"))
    values = (rng.random(shape) * 200).astype(dtype)
    regions = [tuple(slice(0, c) for c in chunks),                                   # one chunk
               tuple(slice(c, min(n, 3 * c)) for n, c in zip(shape, chunks)),        # 2x2 chunks
               tuple(slice((n - 1) // c * c, n) for n, c in zip(shape, chunks))]     # the edge chunk
    for region in regions:
        by_zarr[region] = values[region]
        by_us[region] = values[region]
    files = lambda name: {p.relative_to(tmp_path / "s.zarr" / name): p.read_bytes()  # noqa: E731
                          for p in (tmp_path / "s.zarr" / name).rglob("*") if p.is_file() and p.name != "zarr.json"}
    assert files("by_zarr") == files("by_us")                 # the same files, byte for byte
    assert not list((tmp_path / "s.zarr").rglob("*.partial"))
    assert np.array_equal(by_us[...], by_zarr[...], equal_nan=True)


def test_writes_not_made_of_whole_chunks_and_scalars_go_right(tmp_path):
    array = _project_array(tmp_path, (40, 40), (16, 16), "float32", 0.0)
    direct = DirectArray(array)
    direct[0:32, 0:32] = 3.0                                  # whole chunks, a scalar
    direct[5:20, 7:9] = np.full((15, 2), 7.0, np.float32)     # part of chunks: zarr merges it
    direct[32:40, :] = np.arange(40, dtype=np.float64)        # edge chunks, broadcast and cast
    want = np.zeros((40, 40), np.float32)
    want[0:32, 0:32] = 3.0
    want[5:20, 7:9] = 7.0
    want[32:40, :] = np.arange(40)
    assert np.array_equal(direct[...], want)
    assert np.array_equal(zarr.open_array(str(tmp_path / "s.zarr" / "a"), mode="r")[...], want)


def test_a_store_opened_read_only_refuses_direct_writes_as_zarr_does(tmp_path):
    array = _project_array(tmp_path, (20, 20), (10, 10), "float32", 0.0)
    array[...] = 1.0
    opened = DirectArray(zarr.open_group(str(tmp_path / "s.zarr"), mode="r")["a"])
    with pytest.raises(Exception):
        opened[0:10, 0:10] = 5.0
    assert float(opened[...].sum()) == 400.0


def test_a_copy_of_whole_chunks_links_the_files_and_later_writes_stay_apart(tmp_path):
    shape, chunks = (40, 37, 3), (16, 16, 3)
    source = DirectArray(_project_array(tmp_path, shape, chunks, "float32", float("nan"), name="src"))
    target = DirectArray(_project_array(tmp_path, shape, chunks, "float32", float("nan"), name="dst"))
    values = np.arange(np.prod(shape), dtype=np.float32).reshape(shape)
    source[0:32, :, :] = values[0:32]                      # rows 32.. never written: fill value
    target[...] = np.float32(-1.0)                         # old target chunks, replaced or removed
    target.copy_from(source, (slice(None), slice(None), slice(None)))
    want = np.full(shape, np.nan, np.float32)
    want[0:32] = values[0:32]
    assert np.array_equal(target[...], want, equal_nan=True)
    assert np.array_equal(zarr.open_array(str(tmp_path / "s.zarr" / "dst"), mode="r")[...], want, equal_nan=True)
    src_file = tmp_path / "s.zarr" / "src" / "c" / "0" / "0" / "0"
    dst_file = tmp_path / "s.zarr" / "dst" / "c" / "0" / "0" / "0"
    assert src_file.stat().st_ino == dst_file.stat().st_ino       # linked, not copied
    assert not (tmp_path / "s.zarr" / "dst" / "c" / "2" / "0" / "0").exists()
    assert not list((tmp_path / "s.zarr").rglob("*.partial"))
    source[0:16, 0:16, :] = np.float32(5.0)                # a later write replaces the file: the
    assert np.array_equal(target[0:16, 0:16, :], values[0:16, 0:16])   # copy keeps its values


def test_a_copy_that_cannot_link_copies_the_values(tmp_path, monkeypatch):
    import os

    shape, chunks = (20, 20), (10, 10)
    source = DirectArray(_project_array(tmp_path, shape, chunks, "float32", 0.0, name="src"))
    other = DirectArray(_project_array(tmp_path, shape, (5, 5), "float32", 0.0, name="other"))
    target = DirectArray(_project_array(tmp_path, shape, chunks, "float32", 0.0, name="dst"))
    values = np.arange(400, dtype=np.float32).reshape(shape)
    source[...] = values
    other[...] = values
    target.copy_from(other, (slice(0, 20), slice(0, 20)))          # other chunks: values copied
    assert np.array_equal(target[...], values)
    target[...] = 0.0
    target.copy_from(source, (slice(5, 15), slice(0, 20)))         # not whole chunks
    assert np.array_equal(target[5:15], values[5:15]) and not target[0:5].any()

    def refuse(*args, **kwargs):
        raise PermissionError("no hard links here")

    monkeypatch.setattr(os, "link", refuse)
    target[...] = 0.0
    target.copy_from(source, (slice(0, 20), slice(0, 20)))         # the file system refuses links
    assert np.array_equal(target[...], values)
    assert not list((tmp_path / "s.zarr").rglob("*.partial"))
