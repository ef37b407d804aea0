"""The OOM guard on the device code path, with numpy standing in for the device module.

Injected out-of-memory errors at chosen blocks make the guard replay those blocks on
the CPU with the same plan: the mosaic equals the fault-free run.  After three OOMs,
or at once on any other device error, the device is disabled for the rest of the run.
"""
from __future__ import annotations

import sqlite3

import pytest

from zemosaic_ooc.backend import DeviceError, DeviceOutOfMemory, numpy_as_device_backend
from zemosaic_ooc.options import Phase5Options
from zemosaic_ooc.phase5.pipeline import run_pipeline

from conftest import require_fixtures
from golden import assert_same_mosaic, read_store_window


@pytest.fixture(scope="module")
def tiles():
    dirs = require_fixtures()
    chosen = [d for d in dirs if d.name == "zemosaic_ref_2x2_rich"] or dirs
    return sorted(chosen[0].glob("master_tile_*.fits"))


@pytest.fixture(scope="module")
def reference_run(tiles, tmp_path_factory):
    out = tmp_path_factory.mktemp("cpu") / "cpu.zarr"
    run_pipeline(tiles, out, Phase5Options(block_size=128))
    return read_store_window(out)


def _journal(out):
    with sqlite3.connect(str(out / "journal.sqlite")) as conn:
        return conn.execute("SELECT stage, block, backend, replay FROM blocks").fetchall()


def test_device_path_without_faults_equals_the_cpu_run(tiles, reference_run, tmp_path):
    out = tmp_path / "device.zarr"
    summary = run_pipeline(tiles, out, Phase5Options(block_size=128), device=numpy_as_device_backend())
    assert_same_mosaic(read_store_window(out), reference_run)
    rows = _journal(out)
    assert {r[2] for r in rows if r[0] == "pass1"} == {"cpu-as-device"}
    assert summary.device["replays"] == 0 and summary.device["disabled_reason"] is None


def test_injected_ooms_replay_blocks_on_cpu_with_identical_result(tiles, reference_run, tmp_path):
    targets = {("pass1", (0, 128, 128, 256)), ("pass2", (256, 384, 0, 128))}
    hits = []

    def inject(stage, box, device):
        if (stage, box) in targets:
            hits.append((stage, tuple(box)))
            raise DeviceOutOfMemory("out of memory allocating 512 MiB (injected)")

    out = tmp_path / "oom.zarr"
    summary = run_pipeline(tiles, out, Phase5Options(block_size=128), device=numpy_as_device_backend(),
                           fault_injector=inject)
    assert sorted(hits) == sorted(targets)
    assert_same_mosaic(read_store_window(out), reference_run)
    replays = {(r[0], r[1]) for r in _journal(out) if r[3]}
    assert replays == {("pass1", "0:128,128:256"), ("pass2", "256:384,0:128")}
    assert summary.device["oom_strikes"] == 2 and summary.device["disabled_reason"] is None


def test_finish_merge_and_the_statistics_run_on_the_device_and_replay_on_cpu_alike(tiles, reference_run,
                                                                                  tmp_path):
    # the host work of the later stages (finish §5.5, the two-pass P5 and merge §6.6, the
    # patchwork's statistics §7) runs on the device too; an OOM in any of them replays that
    # block on the CPU and the mosaic is the same
    stages = ("finish", "two-pass P5", "merge", "patchwork statistics")
    seen: dict[str, int] = {}
    struck: list[str] = []

    def inject(stage, box, device):
        seen[stage] = seen.get(stage, 0) + 1
        if stage in stages and seen[stage] == 2:
            struck.append(stage)
            raise DeviceOutOfMemory("out of memory (injected)")

    out = tmp_path / "later.zarr"
    summary = run_pipeline(tiles, out, Phase5Options(block_size=128), device=numpy_as_device_backend(),
                           fault_injector=inject, max_oom=10)
    assert sorted(struck) == sorted(stages)
    assert summary.device["replays_by_stage"] == {stage: 1 for stage in stages}
    assert summary.device["disabled_reason"] is None
    assert_same_mosaic(read_store_window(out), reference_run)
    rows = _journal(out)
    for stage in ("finish", "merge"):
        assert {(r[2], r[3]) for r in rows if r[0] == stage} == {("cpu-as-device", 0), ("cpu", 1)}


def test_gpu_is_disabled_after_three_ooms(tiles, reference_run, tmp_path):
    def inject(stage, box, device):
        raise DeviceOutOfMemory("out of memory (injected)")

    out = tmp_path / "three.zarr"
    summary = run_pipeline(tiles, out, Phase5Options(block_size=128), device=numpy_as_device_backend(),
                           fault_injector=inject, workers=1)
    assert summary.device["oom_strikes"] == 3
    assert "3 out-of-memory" in summary.device["disabled_reason"]
    # the first device work is the background walk (not journaled per block): its first
    # three blocks strike out, are replayed on the CPU, and everything after runs on the CPU
    assert summary.device["replays"] == 3 and summary.device["replays_by_stage"] == {"background": 3}
    rows = _journal(out)
    assert sum(r[3] for r in rows) == 0
    assert all(r[2] == "cpu" for r in rows)
    assert_same_mosaic(read_store_window(out), reference_run)


def test_a_non_oom_device_error_disables_the_gpu_at_once(tiles, reference_run, tmp_path):
    calls = []

    def inject(stage, box, device):
        calls.append(stage)
        if len(calls) == 2:
            raise DeviceError("cudaErrorIllegalAddress (injected)")

    out = tmp_path / "error.zarr"
    summary = run_pipeline(tiles, out, Phase5Options(block_size=128), device=numpy_as_device_backend(),
                           fault_injector=inject, workers=1)
    assert len(calls) == 2                       # nothing tried on the device after the error
    assert "device error" in summary.device["disabled_reason"]
    assert summary.device["oom_strikes"] == 0 and summary.device["replays"] == 1
    assert_same_mosaic(read_store_window(out), reference_run)


def test_the_first_device_task_of_a_stage_runs_alone_then_tasks_overlap():
    """Kernels compile on a stage's first device task; the guard lets it finish alone."""
    import threading
    import time
    from concurrent.futures import ThreadPoolExecutor

    from zemosaic_ooc.backend import numpy_backend
    from zemosaic_ooc.fallback.guard import OomGuard

    guard = OomGuard(numpy_as_device_backend(), numpy_backend())
    lock = threading.Lock()
    running, peak, log = [0], [0], []

    def task(box, backend):
        with lock:
            running[0] += 1
            peak[0] = max(peak[0], running[0])
            log.append(("start", box, running[0]))
        time.sleep(0.05)
        with lock:
            running[0] -= 1
        return box

    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(lambda k: guard.run("pass1", k, task)[0], range(12)))
    assert results == list(range(12))
    assert log[0][2] == 1 and log[1][2] == 1      # the second task began after the first ended
    assert peak[0] > 1                            # later tasks ran side by side


def test_the_first_task_gate_can_be_turned_off(monkeypatch):
    """ZEMOSAIC_OOC_GPU_FIRST_TASK_ALONE=0: a stage's first tasks overlap as well."""
    import threading
    import time
    from concurrent.futures import ThreadPoolExecutor

    from zemosaic_ooc.backend import numpy_backend
    from zemosaic_ooc.fallback.guard import OomGuard

    monkeypatch.setenv("ZEMOSAIC_OOC_GPU_FIRST_TASK_ALONE", "0")
    guard = OomGuard(numpy_as_device_backend(), numpy_backend())
    both = threading.Barrier(2, timeout=5)

    def task(box, backend):
        both.wait()                               # raises BrokenBarrierError if tasks ran alone
        time.sleep(0.01)
        return box

    with ThreadPoolExecutor(2) as pool:
        assert list(pool.map(lambda k: guard.run("pass1", k, task)[0], range(2))) == [0, 1]


def test_a_block_commit_runs_after_the_task_outside_the_device_slot():
    """The host part of a block (its writes) does not hold a device slot; a replayed block is
    committed too, with the host's result."""
    from zemosaic_ooc.backend import numpy_backend
    from zemosaic_ooc.fallback.guard import OomGuard
    from zemosaic_ooc.phase5.pipeline import BlockRunner, _PeakRss
    from zemosaic_ooc.progress import NullProgress

    def inject(stage, box, backend):
        if box == (2, 3, 0, 1):
            raise DeviceOutOfMemory("injected")

    guard = OomGuard(numpy_as_device_backend(), numpy_backend(), inject=inject)
    guard.limit_device_tasks(1)
    runner = BlockRunner(1, NullProgress(), _PeakRss(), None, guard)
    slot_free_in_commit = []

    def task(box, backend):
        return backend.name

    def commit(box, name):
        free = guard._slots.acquire(blocking=False)
        if free:
            guard._slots.release()
        slot_free_in_commit.append(free)
        return (box[0], name)

    boxes = [(k, k + 1, 0, 1) for k in range(4)]
    results = runner.run("pass1", boxes, task, commit=commit)
    assert slot_free_in_commit == [True] * 4
    assert results == [(0, "cpu-as-device"), (1, "cpu-as-device"), (2, "cpu"), (3, "cpu-as-device")]


def test_a_stage_warmed_by_an_earlier_run_in_the_process_is_not_gated(monkeypatch):
    """Its kernels are loaded: a later guard (the next run in a worker, a timed run after a
    warm-up) lets that stage's first tasks overlap at once; other stages stay gated."""
    import threading
    import time
    from concurrent.futures import ThreadPoolExecutor

    from zemosaic_ooc.backend import numpy_backend
    from zemosaic_ooc.fallback import guard as guard_module
    from zemosaic_ooc.fallback.guard import OomGuard

    # numpy compiles nothing (no key); stand in for a device that does
    monkeypatch.setattr(guard_module, "_kernel_cache_key", lambda device, stage: ("test device", stage))
    monkeypatch.setattr(guard_module, "_WARM_IN_PROCESS", set())
    first = OomGuard(numpy_as_device_backend(), numpy_backend())
    first.run("pass1", 0, lambda box, backend: box)

    later = OomGuard(numpy_as_device_backend(), numpy_backend())
    both = threading.Barrier(2, timeout=5)

    def task(box, backend):
        both.wait()                               # raises BrokenBarrierError if tasks ran alone
        return box

    with ThreadPoolExecutor(2) as pool:
        assert list(pool.map(lambda k: later.run("pass1", k, task)[0], range(2))) == [0, 1]

    lock, running, log = threading.Lock(), [0], []

    def slow(box, backend):
        with lock:
            running[0] += 1
            log.append(running[0])
        time.sleep(0.05)
        with lock:
            running[0] -= 1
        return box

    with ThreadPoolExecutor(4) as pool:
        list(pool.map(lambda k: later.run("pass2", k, slow)[0], range(8)))
    assert log[0] == 1 and log[1] == 1            # pass2 not warmed: its first task ran alone
