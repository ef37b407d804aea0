"""Real-GPU parity (``gpu`` marker): skipped cleanly where cupy or a CUDA device is missing.

CPU vs GPU with the full default pipeline on every golden fixture and on a synthetic set:
the valid masks and alpha agree exactly and every channel within 1e-4 × (P99 − P1); the
GPU run must really run on the GPU (no replay, never disabled).  A tiny memory-pool limit
forces real out-of-memory errors: the guard replays those blocks on the CPU and the
result still agrees.  The per-pixel kernels are also compared one by one.
"""
from __future__ import annotations

import numpy as np
import pytest

from zemosaic_ooc.backend import cupy_available, numpy_backend

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not cupy_available(), reason="needs cupy and a CUDA device")]

TOLERANCE = 1e-4


def _assert_parity(cpu_store, gpu_store, tol=TOLERANCE):
    from golden import read_store_window

    cpu, cov_cpu, alpha_cpu, _ = read_store_window(cpu_store)
    gpu, cov_gpu, alpha_gpu, _ = read_store_window(gpu_store)
    assert cpu.shape == gpu.shape
    assert np.array_equal(np.isfinite(cpu), np.isfinite(gpu))
    assert np.array_equal(alpha_cpu, alpha_gpu)
    both = np.isfinite(cpu).all(-1)
    worst = []
    for c in range(3):
        p1, p99 = np.percentile(cpu[..., c][both], [1, 99])
        worst.append(float(np.max(np.abs(cpu[..., c][both] - gpu[..., c][both]))) / (p99 - p1))
    assert max(worst) <= tol, worst
    return worst


def _fixture_tiles():
    from conftest import fixture_dirs

    return {d.name: sorted(d.glob("master_tile_*.fits")) for d in fixture_dirs()}


@pytest.mark.parametrize("name", sorted(_fixture_tiles()) or ["(no fixtures)"])
def test_gpu_matches_cpu_on_every_fixture_with_the_full_pipeline(name, tmp_path):
    from conftest import require_fixtures
    from zemosaic_ooc.backend import cupy_backend
    from zemosaic_ooc.options import Phase5Options
    from zemosaic_ooc.phase5.pipeline import run_pipeline

    require_fixtures()
    tiles = _fixture_tiles()[name]
    run_pipeline(tiles, tmp_path / "cpu.zarr", Phase5Options(block_size=128, gpu="off"))
    summary = run_pipeline(tiles, tmp_path / "gpu.zarr", Phase5Options(block_size=128, gpu="off"),
                           device=cupy_backend())
    assert summary.device["replays"] == 0 and summary.device["disabled_reason"] is None
    assert summary.device["bytes_to_device"] > 0
    _assert_parity(tmp_path / "cpu.zarr", tmp_path / "gpu.zarr")


def test_gpu_option_on_selects_the_gpu_and_matches_the_cpu(tmp_path):
    from zemosaic_ooc.demo import make_demo_tiles
    from zemosaic_ooc.options import Phase5Options
    from zemosaic_ooc.phase5.pipeline import run_pipeline

    tiles = make_demo_tiles(tmp_path / "tiles", nx=3, ny=3, tile_hw=(384, 416), seed=4)
    run_pipeline(tiles, tmp_path / "cpu.zarr", Phase5Options(gpu="off"))
    summary = run_pipeline(tiles, tmp_path / "gpu.zarr", Phase5Options(gpu="on"))
    assert summary.backend.startswith("gpu")
    assert summary.device["replays"] == 0 and summary.device["disabled_reason"] is None
    _assert_parity(tmp_path / "cpu.zarr", tmp_path / "gpu.zarr")


def test_a_tiny_pool_forces_real_ooms_replayed_on_cpu_with_the_same_result(tmp_path):
    from zemosaic_ooc.backend import cupy_backend
    from zemosaic_ooc.demo import make_demo_tiles
    from zemosaic_ooc.options import Phase5Options
    from zemosaic_ooc.phase5.pipeline import run_pipeline

    tiles = make_demo_tiles(tmp_path / "tiles", nx=2, ny=2, tile_hw=(512, 544), seed=6)
    run_pipeline(tiles, tmp_path / "cpu.zarr", Phase5Options(gpu="off", block_size=256))
    summary = run_pipeline(tiles, tmp_path / "small.zarr", Phase5Options(gpu="off", block_size=256),
                           device=cupy_backend(budget_bytes=1 << 20))
    assert summary.device["oom_strikes"] >= 1 and summary.device["replays"] >= 1
    _assert_parity(tmp_path / "cpu.zarr", tmp_path / "small.zarr")


def test_per_pixel_kernels_agree_between_numpy_and_cupy():
    import cupy

    from zemosaic_ooc.backend import cupy_backend
    from zemosaic_ooc.phase5 import patchwork as pw
    from zemosaic_ooc.phase5.mapping import _interpolate_nodes
    from zemosaic_ooc.phase5.renorm import blurred_coverage_block
    from zemosaic_ooc.phase5.resample import sample_bilinear

    cpu, gpu = numpy_backend(), cupy_backend()
    rng = np.random.default_rng(3)
    planes = rng.normal(100.0, 10.0, (3, 64, 80)).astype(np.float32)
    planes[1, 5, 7] = np.nan
    u = rng.uniform(-1.0, 80.5, (40, 50))
    v = rng.uniform(-1.0, 64.5, (40, 50))
    a = sample_bilinear(cpu, planes, (0, 0), (64, 80), u, v)
    b = cupy.asnumpy(sample_bilinear(gpu, cupy.asarray(planes), (0, 0), (64, 80),
                                     cupy.asarray(u), cupy.asarray(v)))
    assert np.array_equal(np.isnan(a), np.isnan(b))
    np.testing.assert_allclose(a[np.isfinite(a)], b[np.isfinite(b)], rtol=1e-12)

    nodes = rng.normal(0.0, 50.0, (9, 11))
    np.testing.assert_allclose(_interpolate_nodes(nodes, 200, 250, 32),
                               cupy.asnumpy(_interpolate_nodes(cupy.asarray(nodes), 200, 250, 32, cupy)),
                               rtol=0, atol=1e-9)

    # the blurs sum in float64 on both (phase5/filters.py): at most 1 float32 ulp apart (float32
    # sums on the device parted the scale map by tens of ulps, and the 16x2048² mosaic by 1.7e-4)
    def ulps(x, y):
        return int(np.abs(x.view(np.int32).astype(np.int64) - y.view(np.int32).astype(np.int64)).max())

    coverage = np.clip(rng.normal(2.0, 1.0, (300, 330)), 0, None).astype(np.float32)
    for x, y in zip(blurred_coverage_block(cpu, coverage, 50.0),
                    blurred_coverage_block(gpu, cupy.asarray(coverage), 50.0)):
        assert ulps(x, cupy.asnumpy(y)) <= 1

    plane = rng.normal(0.5, 0.1, (100, 90)).astype(np.float32)
    for sigma in (6.0, 70.4):
        assert ulps(pw.blur(cpu, plane, sigma), cupy.asnumpy(pw.blur(gpu, cupy.asarray(plane), sigma))) <= 1
    np.testing.assert_allclose(pw.gradient_magnitude(cpu, plane),
                               cupy.asnumpy(pw.gradient_magnitude(gpu, cupy.asarray(plane))), rtol=1e-6)

    # finish (§5.5), merge (§6.6) and their channel reductions: elementwise, so the same bits
    from zemosaic_ooc.phase5.channels import all_finite, channel_mean
    from zemosaic_ooc.phase5.finish import alpha_u8, finish_values
    from zemosaic_ooc.phase5.renorm import merge_block

    hwc = rng.normal(100.0, 30.0, (50, 60, 3)).astype(np.float32)
    hwc[3, 4, 1], hwc[7, 8, 2] = np.nan, np.inf
    other = rng.normal(90.0, 30.0, (50, 60, 3)).astype(np.float32)
    cov = np.clip(rng.normal(1.0, 1.0, (50, 60)), 0, None).astype(np.float32)
    cov2 = np.clip(rng.normal(1.0, 1.0, (50, 60)), 0, None).astype(np.float32)
    union = rng.uniform(0.0, 1.2, (50, 60)).astype(np.float32)
    pairs = [(channel_mean(np, hwc), channel_mean(cupy, cupy.asarray(hwc))),
             (all_finite(np, hwc), all_finite(cupy, cupy.asarray(hwc)))]
    pairs += zip(finish_values(hwc, cov, alpha_u8(union, np), np),
                 finish_values(cupy.asarray(hwc), cupy.asarray(cov), alpha_u8(cupy.asarray(union), cupy), cupy))
    pairs += zip(merge_block(cpu, hwc, cov, other, cov2, 5.0),
                 merge_block(gpu, *(cupy.asarray(x) for x in (hwc, cov, other, cov2)), 5.0))
    for host, device in pairs:
        assert np.array_equal(host, cupy.asnumpy(device), equal_nan=True)


def test_stage_blocks_handed_over_on_the_device_equal_the_store(tmp_path):
    """phase5/handover.py on cupy: regions assembled from kept blocks (across blocks, from
    float64 values cast to the store's float32) are the store's bits; the full default
    pipeline serves regions from the device and matches the CPU."""
    import cupy

    from zemosaic_ooc.backend import cupy_backend
    from zemosaic_ooc.demo import make_demo_tiles
    from zemosaic_ooc.options import Phase5Options
    from zemosaic_ooc.phase5.grid import iter_blocks
    from zemosaic_ooc.phase5.handover import StageHandover
    from zemosaic_ooc.phase5.pipeline import run_pipeline
    from zemosaic_ooc.store.mosaic import MosaicStore

    gpu = cupy_backend()
    shape, block = (300, 290), 128
    array = MosaicStore.create(tmp_path / "s.zarr", shape, block).require(
        "stages/example", shape + (3,), "float32", (block, block, 3))
    values = np.random.default_rng(5).normal(size=shape + (3,))
    handover = StageHandover(gpu, 1 << 30, shape, block)
    for y0, y1, x0, x1 in iter_blocks(shape, block):
        array[y0:y1, x0:x1, :] = values[y0:y1, x0:x1].astype(np.float32)
        assert handover.keep(array, (y0, y1, x0, x1), cupy.asarray(values[y0:y1, x0:x1]))
    region = handover.region(gpu, array, slice(40, 270), slice(5, 290))
    assert isinstance(region, cupy.ndarray) and region.dtype == cupy.float32
    assert np.array_equal(cupy.asnumpy(region), array[40:270, 5:290])

    tiles = make_demo_tiles(tmp_path / "tiles", nx=3, ny=2, tile_hw=(256, 288), overlap=0.15, seed=5)
    run_pipeline(tiles, tmp_path / "cpu.zarr", Phase5Options(gpu="off", block_size=128))
    summary = run_pipeline(tiles, tmp_path / "gpu.zarr", Phase5Options(gpu="off", block_size=128),
                           device=gpu)
    assert summary.device["replays"] == 0 and summary.device["handover_regions_served"] > 0
    _assert_parity(tmp_path / "cpu.zarr", tmp_path / "gpu.zarr")
