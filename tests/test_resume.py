"""Kill and resume: a run SIGKILLed anywhere, then resumed, gives the uninterrupted result.

The CLI runs in a child process; the test hook ``ZEMOSAIC_OOC_TEST_KILL_AT=stage:n``
makes it SIGKILL itself after the n-th block (or unit) of a stage.  ``zemosaic-ooc
resume`` then continues from the journal.  Output must equal an uninterrupted run
(max |Δ| < 1e-6 of P99 − P1, identical coverage and alpha) and leave no ``*.partial``.
"""
from __future__ import annotations

import os
import random
import subprocess
import sys
from pathlib import Path

import pytest
import zarr

from conftest import REPO_ROOT, require_fixtures
from golden import assert_same_mosaic, read_store_window

KILL_POINTS = [
    "ingest:2",                 # ingest, while tiles are being written
    "after-plan:1",             # plan saved
    "after-calibrate:1",        # inter-tile calibration saved
    "after-background:1",       # background offsets saved
    "pass1:5",                  # coadd, mid-pass
    "finish:3",                 # alpha union / masking
    "coverage blur:1",          # two-pass renorm: blur
    "after-two-pass gains:1",   # two-pass gains and pass-2 offsets saved
    "pass2:4",                  # pass-2 coadd
    "merge:2",                  # merge rule
    "patchwork blur:1",         # suppressor
    "export:1",                 # FITS written, preview not yet
]


def _env(kill_at: str | None = None) -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
    env.pop("ZEMOSAIC_OOC_TEST_KILL_AT", None)
    if kill_at:
        env["ZEMOSAIC_OOC_TEST_KILL_AT"] = kill_at
    return env


def _cli(args: list[str], kill_at: str | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "zemosaic_ooc", *args, "--no-progress", "-q"],
                          capture_output=True, text=True, env=_env(kill_at), timeout=300)


@pytest.fixture(scope="module")
def tiles():
    dirs = require_fixtures()
    chosen = [d for d in dirs if d.name == "zemosaic_ref_2x2"] or dirs
    return [str(p) for p in sorted(chosen[0].glob("master_tile_*.fits"))]


@pytest.fixture(scope="module")
def reference(tiles, tmp_path_factory):
    out = tmp_path_factory.mktemp("ref") / "ref.zarr"
    proc = _cli(["run", *tiles, "-o", str(out), "--block-size", "128"])
    assert proc.returncode == 0, proc.stderr
    return read_store_window(out)


def _assert_same(out: Path, reference) -> None:
    assert_same_mosaic(read_store_window(out), reference)
    assert not list(out.parent.rglob("*.partial"))


def _kill_and_resume(tiles, out: Path, kill_at: str) -> None:
    fits_path = out.parent / "out.fits"
    killed = _cli(["run", *tiles, "-o", str(out), "--block-size", "128", "--fits", str(fits_path),
                   "--preview", str(out.parent / "out.png")], kill_at)
    assert killed.returncode == -9, (kill_at, killed.returncode, killed.stderr[-2000:])
    resumed = _cli(["resume", str(out), "--fits", str(fits_path)])
    assert resumed.returncode == 0, (kill_at, resumed.stderr[-3000:])
    assert fits_path.exists()


@pytest.mark.parametrize("kill_at", KILL_POINTS)
def test_killed_run_resumes_to_the_uninterrupted_result(kill_at, tiles, reference, tmp_path):
    out = tmp_path / "out.zarr"
    _kill_and_resume(tiles, out, kill_at)
    _assert_same(out, reference)


def test_resume_detects_and_repairs_a_flipped_byte_in_a_stage_chunk(tiles, reference, tmp_path):
    out = tmp_path / "out.zarr"
    assert _cli(["run", *tiles, "-o", str(out), "--block-size", "128"]).returncode == 0
    chunk = out / "stages" / "pass1_mosaic" / "c" / "1" / "1" / "0"
    final = out / "mosaic" / "c" / "1" / "1" / "0"
    for path in (chunk, final):
        data = bytearray(path.read_bytes())
        data[len(data) // 2] ^= 0xFF
        path.write_bytes(bytes(data))
    with pytest.raises(Exception, match="checksum"):
        zarr.open_group(str(out), mode="r")["mosaic"][128:256, 128:256, :]
    resumed = _cli(["resume", str(out), "-v"])
    assert resumed.returncode == 0, resumed.stderr
    assert "recomputing" in resumed.stderr
    _assert_same(out, reference)


def test_second_run_on_a_locked_store_is_refused(tiles, tmp_path):
    out = tmp_path / "out.zarr"
    lock = out.with_name(out.name + ".lock")
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        lock.write_text('{"pid": %d, "host": "%s"}' % (sleeper.pid, os.uname().nodename))
        proc = _cli(["run", *tiles, "-o", str(out), "--block-size", "128"])
        assert proc.returncode == 2
        assert "another run" in proc.stderr and f"pid {sleeper.pid}" in proc.stderr
        assert not out.exists()
    finally:
        sleeper.kill()
        sleeper.wait()
    # the lock's process is gone now: a new run takes the stale lock over
    proc = _cli(["run", *tiles, "-o", str(out), "--block-size", "128", "-v"])
    assert proc.returncode == 0, proc.stderr
    assert "stale lock" in proc.stderr and not lock.exists()


def test_run_on_an_existing_store_says_how_to_resume(tiles, tmp_path):
    out = tmp_path / "out.zarr"
    assert _cli(["run", *tiles, "-o", str(out), "--block-size", "128"],
                "pass1:2").returncode == -9
    proc = _cli(["run", *tiles, "-o", str(out), "--block-size", "128"])
    assert proc.returncode == 2 and "zemosaic-ooc resume" in proc.stderr


@pytest.mark.slow
def test_soak_fifty_random_kills_then_resume(tiles, reference, tmp_path):
    rng = random.Random(1234)
    stages = [("ingest", 4), ("pass1", 12), ("finish", 12), ("pass2", 12), ("merge", 12),
              ("after-plan", 1), ("after-calibrate", 1), ("after-background", 1),
              ("after-two-pass gains", 1), ("coverage blur", 1), ("patchwork blur", 1),
              ("patchwork", 1), ("export", 1)]
    for k in range(50):
        stage, count = rng.choice(stages)
        out = tmp_path / f"soak{k}" / "out.zarr"
        out.parent.mkdir()
        _kill_and_resume(tiles, out, f"{stage}:{rng.randint(1, count)}")
        _assert_same(out, reference)


def test_existing_store_made_with_other_options_names_the_differing_keys(tiles, tmp_path):
    out = tmp_path / "out.zarr"
    assert _cli(["run", *tiles, "-o", str(out), "--block-size", "128",
                 "--option", "patchwork_suppressor_enabled=false"]).returncode == 0
    before = sorted((p.relative_to(out), p.stat().st_mtime_ns) for p in out.rglob("*") if p.is_file())
    proc = _cli(["run", *tiles, "-o", str(out), "--block-size", "256"])
    assert proc.returncode == 2
    assert "other options: block_size, patchwork_suppressor_enabled" in proc.stderr
    after = sorted((p.relative_to(out), p.stat().st_mtime_ns) for p in out.rglob("*") if p.is_file())
    assert before == after


def test_durable_run_resumes_like_any_other(tiles, reference, tmp_path):
    out = tmp_path / "out.zarr"
    killed = _cli(["run", *tiles, "-o", str(out), "--block-size", "128", "--durable"], "pass2:3")
    assert killed.returncode == -9
    assert _cli(["resume", str(out)]).returncode == 0
    _assert_same(out, reference)


@pytest.mark.parametrize("kill_at", ["calibrate:3", "after-calibrate:1", "pass1:5"])
def test_corrected_photometry_run_resumes_to_the_uninterrupted_result(kill_at, tiles, tmp_path):
    """The per-channel gains of the corrected mode survive a kill (they live in the run state)."""
    ref_out = tmp_path / "ref.zarr"
    proc = _cli(["run", *tiles, "-o", str(ref_out), "--block-size", "128", "--photometry", "corrected"])
    assert proc.returncode == 0, proc.stderr
    out = tmp_path / "out.zarr"
    killed = _cli(["run", *tiles, "-o", str(out), "--block-size", "128", "--photometry", "corrected"],
                  kill_at)
    assert killed.returncode == -9, (kill_at, killed.returncode, killed.stderr[-2000:])
    resumed = _cli(["resume", str(out)])
    assert resumed.returncode == 0, (kill_at, resumed.stderr[-3000:])
    _assert_same(out, read_store_window(ref_out))
    assert zarr.open_group(str(out), mode="r").attrs["run_state"]["calibration"]["mode"] == "corrected"
