"""The chunk checksum codec (store/codecs.py): zarr's crc32c bytes and metadata, run off zarr's
event-loop thread; a damaged chunk still fails to read."""
from __future__ import annotations

import json

import numpy as np
import pytest
import zarr
from zarr.codecs import Crc32cCodec

from zemosaic_ooc.store.codecs import ThreadedCrc32cCodec, threaded_checksums
from zemosaic_ooc.store.mosaic import MosaicStore


def _checksum_codec(array: zarr.Array):
    return [c for c in array.metadata.codecs if isinstance(c, Crc32cCodec)][0]


def test_stores_write_standard_crc32c_chunks_any_zarr_reads(tmp_path):
    store = MosaicStore.create(tmp_path / "s.zarr", (40, 30), 16)
    values = np.random.default_rng(1).random((40, 30, 3), dtype=np.float32)
    array = store.require("mosaic", (40, 30, 3), "float32", (16, 16, 3))
    assert type(_checksum_codec(array)) is ThreadedCrc32cCodec
    array[...] = values
    meta = json.loads((tmp_path / "s.zarr" / "mosaic" / "zarr.json").read_text())
    assert {"name": "crc32c"} in [{"name": c["name"]} for c in meta["codecs"]]
    plain = zarr.open_group(str(tmp_path / "s.zarr"), mode="r")["mosaic"]
    assert type(_checksum_codec(plain)) is Crc32cCodec           # outside a run: zarr's own class
    assert np.array_equal(plain[...], values)


def test_inside_a_run_opened_arrays_check_their_chunks_on_the_thread_pool(tmp_path):
    store = MosaicStore.create(tmp_path / "s.zarr", (20, 20), 10)
    store.require("coverage", (20, 20), "float32", (10, 10))[...] = np.arange(400, dtype=np.float32).reshape(20, 20)
    with threaded_checksums():
        opened = MosaicStore.open(tmp_path / "s.zarr").array("coverage")
        assert type(_checksum_codec(opened)) is ThreadedCrc32cCodec
        assert float(opened[...].sum()) == float(np.arange(400).sum())
    again = MosaicStore.open(tmp_path / "s.zarr").array("coverage")
    assert type(_checksum_codec(again)) is Crc32cCodec            # the configuration is restored


def test_a_flipped_byte_still_fails_to_read_with_the_threaded_codec(tmp_path):
    store = MosaicStore.create(tmp_path / "s.zarr", (10, 10), 10)
    store.require("coverage", (10, 10), "float32", (10, 10))[...] = np.ones((10, 10), np.float32)
    chunk = next(p for p in (tmp_path / "s.zarr" / "coverage").rglob("*") if p.is_file() and p.name != "zarr.json")
    raw = bytearray(chunk.read_bytes())
    raw[17] ^= 0xFF
    chunk.write_bytes(bytes(raw))
    with threaded_checksums():
        with pytest.raises(ValueError, match="checksum"):
            MosaicStore.open(tmp_path / "s.zarr").array("coverage")[...]


@pytest.mark.parametrize("nbytes", [1, 3, 4096, 33 * 1024 + 7, 1 << 20])
def test_threaded_codec_writes_and_checks_exactly_zarrs_crc32c_bytes(nbytes):
    from zarr.core.array_spec import ArrayConfig, ArraySpec
    from zarr.core.buffer import default_buffer_prototype
    from zarr.core.dtype import parse_data_type

    payload = np.random.default_rng(nbytes).integers(0, 256, nbytes, dtype=np.uint8)
    spec = ArraySpec(shape=(nbytes,), dtype=parse_data_type("uint8", zarr_format=3), fill_value=0,
                     config=ArrayConfig(order="C", write_empty_chunks=True),
                     prototype=default_buffer_prototype())
    chunk = default_buffer_prototype().buffer.from_array_like(payload)
    ours = ThreadedCrc32cCodec()._encode_sync(chunk, spec).as_numpy_array()
    zarrs = Crc32cCodec()._encode_sync(chunk, spec).as_numpy_array()
    assert ours.tobytes() == zarrs.tobytes()                      # byte for byte the same chunk
    decoded = ThreadedCrc32cCodec()._decode_sync(default_buffer_prototype().buffer.from_array_like(zarrs), spec)
    assert decoded.as_numpy_array().tobytes() == payload.tobytes()
    damaged = zarrs.copy()
    damaged[nbytes // 2] ^= 0x01
    with pytest.raises(ValueError, match="checksum"):
        ThreadedCrc32cCodec()._decode_sync(default_buffer_prototype().buffer.from_array_like(damaged), spec)
