"""VRAM budgeting without a GPU (numpy standing in for the device): block size and the
number of block tasks that hold the device at once follow the device budget, and the
mosaic is the CPU's."""
from __future__ import annotations

import threading
import time

from zemosaic_ooc import device_budget as db
from zemosaic_ooc.backend import numpy_as_device_backend
from zemosaic_ooc.options import Phase5Options
from zemosaic_ooc.phase5.pipeline import choose_block_size, run_pipeline


class _Concurrency:
    """Counts the threads inside ``with probe:`` at once; ``peak`` is the most seen."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.now = self.peak = 0

    def __enter__(self) -> "_Concurrency":
        with self._lock:
            self.now += 1
            self.peak = max(self.peak, self.now)
        return self

    def __exit__(self, *exc) -> None:
        with self._lock:
            self.now -= 1


def test_task_estimate_grows_with_block_area_and_tiles():
    assert db.task_bytes(100, 2) == 100 * (db.BYTES_PER_PIXEL + 2 * db.BYTES_PER_PIXEL_PER_TILE)
    assert db.task_bytes(200, 2) == 2 * db.task_bytes(100, 2)
    assert db.task_bytes(100, 4) > db.task_bytes(100, 2)


def test_slots_fill_the_budget_but_never_exceed_the_workers_or_drop_below_one():
    one_task = db.task_bytes(512 * 512, 4)
    assert db.device_slots(int(3.5 * one_task / db.USABLE_SHARE), 512 * 512, 4, workers=8) == 3
    assert db.device_slots(100 * one_task, 512 * 512, 4, workers=8) == 8
    assert db.device_slots(one_task // 10, 512 * 512, 4, workers=8) == 1


def test_max_block_side_fits_one_task_in_the_budget():
    for budget in (64 << 20, 512 << 20, 8 << 30):
        side = db.max_block_side(budget)
        assert side % 16 == 0 and side >= 128
        if side > 128:
            assert db.task_bytes(side * side, db.ASSUMED_TILES_PER_BLOCK) <= db.USABLE_SHARE * budget
            bigger = side + 16
            assert db.task_bytes(bigger * bigger, db.ASSUMED_TILES_PER_BLOCK) > db.USABLE_SHARE * budget


def test_tiles_per_block_counts_the_boxes_reaching_a_block():
    boxes = [(0, 100, 0, 100), (50, 150, 50, 150), (90, 200, 0, 60), None]
    assert db.tiles_per_block(boxes, [(0, 64, 0, 64)]) == 2
    assert db.tiles_per_block(boxes, [(64, 128, 0, 64), (150, 200, 150, 200)]) == 3
    assert db.tiles_per_block([None], [(0, 8, 0, 8)]) == 1


def test_a_small_device_budget_gives_smaller_blocks_than_the_host_alone():
    opts = Phase5Options(memory_budget=8 << 30)
    host_only = choose_block_size(opts, 2, (6000, 6000))
    with_device = choose_block_size(opts, 2, (6000, 6000), device_budget=256 << 20)
    assert with_device < host_only
    assert with_device <= db.max_block_side(256 << 20)


def test_device_tasks_at_once_follow_the_slots_and_the_mosaic_is_the_cpus(tmp_path):
    from golden import assert_same_mosaic, read_store_window
    from zemosaic_ooc.demo import make_demo_tiles

    tiles = make_demo_tiles(tmp_path / "tiles", nx=3, ny=2, tile_hw=(256, 288), seed=8)
    opts = Phase5Options(block_size=128, two_pass_coverage_renorm=False,
                         patchwork_suppressor_enabled=False)
    run_pipeline(tiles, tmp_path / "cpu.zarr", opts, workers=4)
    summary = run_pipeline(tiles, tmp_path / "probe.zarr", opts, workers=4, device=numpy_as_device_backend())
    assert summary.device["device_slots"] == 4           # the default 2 GiB holds every worker's task
    # a budget whose task share holds 2.5 block tasks of the plan's estimate: two at once
    budget = int(2.5 * summary.device["task_bytes"] / (db.USABLE_SHARE * db.TASK_SHARE))
    probe = _Concurrency()

    def inject(stage, box, backend):
        with probe:
            time.sleep(0.01)

    summary = run_pipeline(tiles, tmp_path / "dev.zarr", opts, workers=4,
                           device=numpy_as_device_backend(budget_bytes=budget), fault_injector=inject)
    assert summary.device["device_slots"] == 2
    assert probe.peak == 2                                 # the workers did contend for the slots
    assert summary.device["replays"] == 0
    assert_same_mosaic(read_store_window(tmp_path / "dev.zarr"), read_store_window(tmp_path / "cpu.zarr"))


def test_device_blocks_are_larger_when_the_device_holds_the_samples():
    """The host's share of a device block (results, writes, finish) is smaller than the CPU's
    working set, so with ample VRAM a device run gets larger blocks for the same budget."""
    from zemosaic_ooc.phase5.pipeline import (BYTES_PER_BLOCK_PIXEL, DEVICE_HOST_BYTES_PER_BLOCK_PIXEL,
                                              host_replay_slots)

    opts = Phase5Options()                                   # the 2 GiB default
    cpu_side = choose_block_size(opts, 16, (7338, 7327))
    device_side = choose_block_size(opts, 16, (7338, 7327), device_budget=db.task_budget(48 << 30))
    assert device_side > cpu_side
    # every worker's host share of a device block fits half the budget
    assert 16 * DEVICE_HOST_BYTES_PER_BLOCK_PIXEL * device_side ** 2 <= opts.memory_budget // 2
    # CPU replays of device blocks run fewer at once, within the same half of the budget
    slots = host_replay_slots(opts, device_side, 16)
    assert 1 <= slots < 16
    assert slots * BYTES_PER_BLOCK_PIXEL * device_side ** 2 <= opts.memory_budget // 2
    assert host_replay_slots(opts, cpu_side, 16) == 16


def test_tasks_on_the_host_in_a_device_run_honour_the_host_slots():
    """Once the device is off, every block runs on the CPU: at most the host slots at once."""
    from concurrent.futures import ThreadPoolExecutor

    from zemosaic_ooc.backend import DeviceError, numpy_backend
    from zemosaic_ooc.fallback.guard import OomGuard

    def inject(stage, box, backend):
        raise DeviceError("injected: the device is gone")

    guard = OomGuard(numpy_as_device_backend(), numpy_backend(), inject=inject)
    guard.limit_host_tasks(2)
    probe = _Concurrency()

    def task(box, backend):
        with probe:
            time.sleep(0.02)
        return backend.name

    with ThreadPoolExecutor(6) as pool:
        names = list(pool.map(lambda k: guard.run("pass1", k, task)[0], range(12)))
    assert names == ["cpu"] * 12 and guard.disabled_reason
    assert probe.peak == 2
    assert guard.summary()["host_slots"] == 2


def test_device_block_workers_default_to_four_capped_by_the_workers_and_overridable(monkeypatch):
    monkeypatch.delenv("ZEMOSAIC_OOC_DEVICE_BLOCK_WORKERS", raising=False)
    assert db.device_block_workers(16) == db.DEVICE_BLOCK_WORKERS == 4
    assert db.device_block_workers(2) == 2
    monkeypatch.setenv("ZEMOSAIC_OOC_DEVICE_BLOCK_WORKERS", "8")
    assert db.device_block_workers(16) == 8
    monkeypatch.setenv("ZEMOSAIC_OOC_DEVICE_BLOCK_WORKERS", "0")
    assert db.device_block_workers(16) == 1


def test_a_device_run_holds_its_block_tasks_to_the_device_threads_and_matches_the_cpu(tmp_path, monkeypatch):
    """Block tasks of a device run run on DEVICE_BLOCK_WORKERS threads however many workers the
    run has (its blocks are sized for them), and the mosaic is the CPU's."""
    from golden import assert_same_mosaic, read_store_window
    from zemosaic_ooc.demo import make_demo_tiles

    monkeypatch.delenv("ZEMOSAIC_OOC_DEVICE_BLOCK_WORKERS", raising=False)
    tiles = make_demo_tiles(tmp_path / "tiles", nx=3, ny=2, tile_hw=(256, 288), seed=8)
    opts = Phase5Options(block_size=128)
    run_pipeline(tiles, tmp_path / "cpu.zarr", opts, workers=8)
    probe = _Concurrency()

    def inject(stage, box, backend):
        with probe:
            time.sleep(0.005)

    summary = run_pipeline(tiles, tmp_path / "dev.zarr", opts, workers=8, device=numpy_as_device_backend(),
                           fault_injector=inject)
    assert summary.workers == 8 and summary.device["device_slots"] == db.DEVICE_BLOCK_WORKERS
    assert 2 <= probe.peak <= db.DEVICE_BLOCK_WORKERS
    assert_same_mosaic(read_store_window(tmp_path / "dev.zarr"), read_store_window(tmp_path / "cpu.zarr"))
    # the blocks a device run plans are sized for its block threads, not for every worker
    shape = (7338, 7327)
    device_side = choose_block_size(Phase5Options(), db.device_block_workers(16), shape,
                                    device_budget=db.task_budget(48 << 30))
    assert device_side > choose_block_size(Phase5Options(), 16, shape, device_budget=db.task_budget(48 << 30))
