"""The bounded ordered map behind parallel ingest, and ingest on several threads."""
from __future__ import annotations

import threading
import time

import numpy as np

from zemosaic_ooc.concurrency import ordered_map


def test_ordered_map_keeps_order_bounds_work_in_flight_and_returns_errors_in_place():
    lock = threading.Lock()
    active, peak = [0], [0]

    def work(k):
        with lock:
            active[0] += 1
            peak[0] = max(peak[0], active[0])
        time.sleep(0.002 * (7 - k % 7))          # later items often finish first
        with lock:
            active[0] -= 1
        if k == 5:
            raise ValueError("five")
        return k * k

    for workers in (1, 3):
        peak[0] = 0
        out = list(ordered_map(work, range(12), workers))
        assert [item for item, _ in out] == list(range(12))
        assert isinstance(out[5][1], ValueError)
        assert [r for k, r in out if k != 5] == [k * k for k in range(12) if k != 5]
        assert peak[0] <= max(1, workers)


def test_ingest_on_several_threads_writes_the_same_store(tmp_path):
    from zemosaic_ooc.demo import make_demo_tiles
    from zemosaic_ooc.store.tiles import ingest_tiles

    tiles = make_demo_tiles(tmp_path / "tiles", nx=3, ny=2, tile_hw=(128, 144), seed=9)
    serial = ingest_tiles(tiles, tmp_path / "serial")
    parallel = ingest_tiles(tiles, tmp_path / "parallel", workers=4, memory_budget=1 << 30)
    assert [r.to_json() for r in serial.records] == [r.to_json() for r in parallel.records]
    for index in range(len(tiles)):
        for name in ("data", "alpha"):
            a = serial.group[f"tiles/{index}/{name}"][...]
            b = parallel.group[f"tiles/{index}/{name}"][...]
            assert np.array_equal(a, b, equal_nan=True)


def test_parallel_ingest_leaves_the_warning_filters_as_it_found_them(tmp_path, monkeypatch):
    """Two workers leave ``catch_warnings`` out of order (A enters, B enters, A leaves, B leaves):
    B restores the filters it saw, A's "ignore" included.  Ingest restores them after its workers."""
    import threading
    import warnings

    from zemosaic_ooc.demo import make_demo_tiles
    from zemosaic_ooc.store import tiles as tiles_module

    tiles = make_demo_tiles(tmp_path / "tiles", nx=2, ny=1, tile_hw=(96, 112), seed=2)
    original = tiles_module._inspect_tile
    a_in, b_in, a_out = threading.Event(), threading.Event(), threading.Event()

    def interleaved(path):
        if path == tiles[0]:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                a_in.set()
                b_in.wait(5)
            a_out.set()
        else:
            a_in.wait(5)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                b_in.set()
                a_out.wait(5)
        return original(path)

    monkeypatch.setattr(tiles_module, "_inspect_tile", interleaved)
    before = list(warnings.filters)
    tiles_module.ingest_tiles(tiles, tmp_path / "store", workers=2, memory_budget=1 << 30)
    assert a_in.is_set() and b_in.is_set() and a_out.is_set()
    assert list(warnings.filters) == before
