"""The chunk codec of the project's Zarr arrays: a CRC32C checksum per chunk.

Every array the project writes (tile store, stage arrays, final mosaic) is uncompressed with a
CRC32C checksum after each chunk (zarr's ``crc32c`` codec), so a damaged chunk fails to read
instead of giving wrong pixels.  zarr-python runs that codec's encode and decode inline on its
one event-loop thread (its compressors go to a thread pool): every worker thread's checksums,
and the copy that appends each checksum, then queue on that single thread, a serial floor under
every block stage on a many-core machine (measured here: half of that thread's CPU time for
whole-chunk writes and reads).  :class:`ThreadedCrc32cCodec` is the same codec (same bytes,
same metadata ``{"name": "crc32c"}``, readable by any zarr) whose encode and decode run on
zarr's I/O thread pool.  Its checksum is computed by the ``crc32c`` package (the same
CRC-32C, hardware-accelerated, about 20 GB/s here against google-crc32c's 6, and it releases
the GIL for buffers over 32 KiB, where google-crc32c holds it): the workers' checksums then
run side by side instead of queueing on the GIL, which bounds a many-core run (§9 of
tools/BENCHMARKS.md).

Arrays made with :func:`create_checked_array` use it for their writes; inside
:func:`threaded_checksums` (the pipeline's run) arrays opened from their metadata use it too.
"""
from __future__ import annotations

import asyncio
import contextlib
import struct
import threading
from typing import Any, Iterator

import crc32c
import numpy as np
import zarr
from zarr.codecs import Crc32cCodec
from zarr.registry import register_codec


def chunk_checksum(data: np.ndarray) -> bytes:
    """CRC-32C of a chunk's bytes, as the 4 little-endian bytes zarr stores after them
    (computed without holding the GIL)."""
    return struct.pack("<I", crc32c.crc32c(data))


def check_chunk(data: np.ndarray, stored: bytes) -> None:
    """Raise zarr's error when ``stored`` is not the checksum of ``data``."""
    computed = chunk_checksum(data)
    if computed != stored:
        raise ValueError(f"Stored and computed checksum do not match. Stored: {stored!r}. "
                         f"Computed: {computed!r}.")


class ThreadedCrc32cCodec(Crc32cCodec):
    """zarr's ``crc32c`` codec with its encode and decode on zarr's I/O thread pool, and its
    checksum computed without holding the GIL (same bytes as zarr's)."""

    def _decode_sync(self, chunk_bytes: Any, chunk_spec: Any) -> Any:
        data = chunk_bytes.as_numpy_array()
        inner = data[:-4]
        check_chunk(inner, bytes(data[-4:]))
        return chunk_spec.prototype.buffer.from_array_like(inner)

    def _encode_sync(self, chunk_bytes: Any, chunk_spec: Any) -> Any:
        data = chunk_bytes.as_numpy_array()
        out = np.empty(data.size + 4, dtype=np.uint8)     # one copy, made without the GIL
        out[:-4] = data.reshape(-1).view(np.uint8)
        out[-4:] = np.frombuffer(chunk_checksum(data), dtype=np.uint8)
        return chunk_spec.prototype.buffer.from_array_like(out)

    async def _decode_single(self, chunk_bytes: Any, chunk_spec: Any) -> Any:
        return await asyncio.to_thread(self._decode_sync, chunk_bytes, chunk_spec)

    async def _encode_single(self, chunk_bytes: Any, chunk_spec: Any) -> Any:
        return await asyncio.to_thread(self._encode_sync, chunk_bytes, chunk_spec)


CODEC_NAME = "crc32c"
_registered = False
_register_lock = threading.Lock()


def _register() -> str:
    global _registered
    with _register_lock:
        if not _registered:
            register_codec(CODEC_NAME, ThreadedCrc32cCodec)
            _registered = True
    return f"{ThreadedCrc32cCodec.__module__}.{ThreadedCrc32cCodec.__qualname__}"


#: every chunk is written as it is, even when it equals the fill value: zarr's test for that
#: compares the whole chunk with the fill value on every write, which made writes about 4x
#: slower (measured: 64 chunks of 736x736x3 float32, 1.44 s against 0.33 s); an all-fill chunk
#: then takes its bytes on disk instead of none
CHUNK_WRITE_CONFIG = {"write_empty_chunks": True}


def create_checked_array(group: zarr.Group, name: str, *, shape: tuple[int, ...], dtype: Any,
                         chunks: tuple[int, ...], fill_value: Any = 0) -> zarr.Array:
    """Every array the project creates: uncompressed (float mosaics and tiles barely compress,
    and they are read block by block many times), a CRC32C checksum per chunk
    (:class:`ThreadedCrc32cCodec`), every chunk written as it is."""
    return group.create_array(name, shape=shape, dtype=dtype, chunks=chunks, fill_value=fill_value,
                              compressors=[ThreadedCrc32cCodec()], config=CHUNK_WRITE_CONFIG)


@contextlib.contextmanager
def threaded_checksums() -> Iterator[None]:
    """Within: arrays opened from metadata naming ``crc32c`` decode on the thread pool too.

    zarr's configuration is process-wide; it is restored on the way out.  Both codecs read
    and write the same bytes, so other code reading zarr meanwhile sees no difference.
    """
    with zarr.config.set({f"codecs.{CODEC_NAME}": _register()}):
        yield
