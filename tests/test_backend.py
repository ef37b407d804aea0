"""Backend plumbing that needs no GPU: selection, transfer counters, per-task streams on the
host, and the serialization of CuPy kernel compiles (on a stand-in compiler module)."""
from __future__ import annotations

import threading
import time
import types
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from zemosaic_ooc import backend as backend_module
from zemosaic_ooc.backend import (CPU_CHUNK_PIXELS, GpuUnavailableError, cupy_available,
                                  numpy_as_device_backend, numpy_backend, select_backend)


def test_gpu_off_and_auto_without_a_device_give_the_cpu_backend():
    assert select_backend("off").name == "cpu"
    if not cupy_available():
        assert select_backend("auto").name == "cpu"


@pytest.mark.skipif(cupy_available(), reason="a CUDA device is present")
def test_gpu_on_without_a_device_is_a_clear_error():
    with pytest.raises(GpuUnavailableError, match="no CUDA device"):
        select_backend("on")


def test_an_unknown_gpu_mode_is_rejected():
    with pytest.raises(ValueError, match="auto, on or off"):
        select_backend("sometimes")


def test_host_backends_count_no_transfers_and_use_cache_sized_chunks():
    for be in (numpy_backend(), numpy_as_device_backend()):
        data = np.ones((64, 64), np.float32)
        with be.task_stream():
            out = be.to_host(be.asarray(data) * 2)
        assert np.array_equal(out, data * 2)
        assert be.transfer_summary() == {"bytes_to_device": 0, "bytes_to_host": 0}
        assert be.chunk_pixels == CPU_CHUNK_PIXELS


def test_kernel_compiles_run_one_at_a_time_across_threads():
    active, peak, lock = [0], [0], threading.Lock()

    def compile_kernel(source):
        with lock:
            active[0] += 1
            peak[0] = max(peak[0], active[0])
        time.sleep(0.01)
        with lock:
            active[0] -= 1
        return f"module:{source}"

    compiler = types.SimpleNamespace(_compile_module_with_cache=compile_kernel,
                                     compile_with_cache=compile_kernel)
    fake_cupy = types.SimpleNamespace(cuda=types.SimpleNamespace(compiler=compiler))
    backend_module._serialize_kernel_compiles(fake_cupy)
    backend_module._serialize_kernel_compiles(fake_cupy)     # idempotent: wrapped once
    with ThreadPoolExecutor(8) as pool:
        modules = list(pool.map(compiler._compile_module_with_cache, range(16)))
    assert modules == [f"module:{k}" for k in range(16)]
    assert peak[0] == 1
