"""tools/gil_report.py: GIL-held seconds of a py-spy raw profile, by place and by step."""
from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest


@pytest.fixture(scope="module")
def gil_report():
    path = Path(__file__).resolve().parents[1] / "tools" / "gil_report.py"
    spec = importlib.util.spec_from_file_location("zemosaic_gil_report_tool", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_gil_report_adds_samples_by_place_and_by_pipeline_step(tmp_path, gil_report):
    root = "/work/x/zemosaic_ooc"
    site = "/usr/lib/python3.11/site-packages"
    raw = tmp_path / "gil.txt"
    raw.write_text("\n".join([
        f"Thread._bootstrap (threading.py:1002);BlockRunner.run.<locals>.call ({root}/phase5/pipeline.py:325);"
        f"_run_pipeline.<locals>.pass1_task ({root}/phase5/pipeline.py:668);"
        f"_bilinear ({root}/phase5/resample.py:140) 30",
        "Thread._bootstrap (threading.py:1002);BaseEventLoop.run_forever (asyncio/base_events.py:607);"
        "Handle._run (asyncio/events.py:80) 20",
        f"Thread._bootstrap (threading.py:1002);_WorkItem.run (concurrent/futures/thread.py:58);"
        f"_put ({site}/zarr/storage/_local.py:84) 10",
        # a nested function names its step through its enclosing function's qualified name
        f"Thread._bootstrap (threading.py:1002);block_pair_offsets.<locals>.walk ({root}/phase5/background.py:168);"
        f"_gather ({root}/phase5/resample.py:110) 5",
        "",
    ]))
    total, places, steps = gil_report.summarize(raw, rate=100.0)
    assert total == pytest.approx(0.65)
    assert places["_bilinear (zemosaic_ooc/phase5/resample.py:140)"] == pytest.approx(0.3)
    assert places["zarr's event loop (asyncio)"] == pytest.approx(0.2)
    assert places["thread pool: _put (zarr/storage/_local.py:84)"] == pytest.approx(0.1)
    assert steps["pass 1"] == pytest.approx(0.3) and steps["other"] == pytest.approx(0.3)
    assert steps["background"] == pytest.approx(0.05)
