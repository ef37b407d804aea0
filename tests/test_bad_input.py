"""Bad input at the CLI edge (issue 2, ACCEPTANCE §5).

Each bad input gives exit code 2, one line ``zemosaic-ooc: error: ...`` naming
the file and the problem, and leaves no output store (nor FITS / PNG, nor a
``*.partial``) behind.
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from astropy.io import fits
from astropy.wcs import WCS

from zemosaic_ooc.cli import main

from synthetic_tiles import smooth_tile_data, tan_wcs

REPO_ROOT = Path(__file__).resolve().parents[1]
ERROR_PREFIX = "zemosaic-ooc: error:"


# --------------------------------------------------------------------------- tile makers

def tile_wcs(shape_hw=(96, 128), crval=(10.0, 20.0)) -> WCS:
    return tan_wcs(shape_hw, crval)


def tile_data(shape_hw=(96, 128), channels=3, seed=0) -> np.ndarray:
    return smooth_tile_data(shape_hw, seed=seed, channels=channels)


def write_tile(path: Path, data: np.ndarray | None = None, *, wcs: WCS | None = None,
               with_wcs: bool = True, index: int = 0) -> Path:
    """A small master tile; tile ``index`` is shifted half a tile east of the previous one."""
    if data is None:
        data = tile_data(seed=index)
    shape_hw = data.shape[-2:] if data.ndim >= 2 else (96, 128)
    header = fits.Header()
    if with_wcs:
        if wcs is None:
            dra = index * (shape_hw[1] / 2.0) / 3600.0 / np.cos(np.radians(20.0))
            wcs = tile_wcs(tuple(shape_hw), crval=(10.0 + dra, 20.0))
        header.update(wcs.to_header())
    header["NRAWPROC"] = 10
    fits.PrimaryHDU(data=data, header=header).writeto(path, overwrite=True)
    return path


def good_tiles(tmp_path: Path, n: int = 2) -> list[Path]:
    return [write_tile(tmp_path / f"good_{i}.fits", index=i) for i in range(n)]


# --------------------------------------------------------------------------- bad-input cases

def case_no_wcs(tmp_path):
    bad = write_tile(tmp_path / "no_wcs.fits", tile_data(seed=5), with_wcs=False)
    return good_tiles(tmp_path) + [bad], bad, ("wcs",)


def case_random_bytes(tmp_path):
    bad = tmp_path / "random_bytes.fits"
    bad.write_bytes(np.random.default_rng(1).bytes(20000))
    return good_tiles(tmp_path) + [bad], bad, ("fits", "corrupt", "read")


def case_truncated(tmp_path):
    full = write_tile(tmp_path / "full.fits", index=2)
    raw = full.read_bytes()
    bad = tmp_path / "truncated.fits"
    bad.write_bytes(raw[: len(raw) // 2])
    full.unlink()
    return good_tiles(tmp_path) + [bad], bad, ("fits", "truncat", "corrupt", "read")


def case_mismatched_channels(tmp_path):
    rgb = write_tile(tmp_path / "rgb.fits", index=0)
    mono = write_tile(tmp_path / "mono.fits", tile_data(channels=1, seed=1), index=1)
    return [rgb, mono], mono, ("channel",)


def case_text_file(tmp_path):
    bad = tmp_path / "notes.fits"
    bad.write_text("this is not a FITS file\n" * 50)
    return good_tiles(tmp_path) + [bad], bad, ("fits",)


def case_4d(tmp_path):
    bad = write_tile(tmp_path / "four_d.fits",
                     np.zeros((2, 3, 96, 128), np.float32) + 1.0, index=2)
    return good_tiles(tmp_path) + [bad], bad, ("dimension", "4-d", "4d", "shape", "ndim")


def case_missing_file(tmp_path):
    bad = tmp_path / "does_not_exist.fits"
    return good_tiles(tmp_path) + [bad], bad, ("not found", "no such", "does not exist", "missing")


def case_no_data(tmp_path):
    bad = tmp_path / "no_data.fits"
    header = fits.Header()
    header.update(tile_wcs().to_header())
    fits.PrimaryHDU(header=header).writeto(bad)
    return good_tiles(tmp_path) + [bad], bad, ("data", "empty")


def case_all_nan(tmp_path):
    bad = write_tile(tmp_path / "all_nan.fits",
                     np.full((3, 96, 128), np.nan, np.float32), index=2)
    return good_tiles(tmp_path) + [bad], bad, ("nan", "empty")


CASES = {
    "no_celestial_wcs": case_no_wcs,
    "corrupt_random_bytes": case_random_bytes,
    "corrupt_truncated": case_truncated,
    "mismatched_channels": case_mismatched_channels,
    "not_a_fits_text": case_text_file,
    "four_d_data": case_4d,
    "missing_file": case_missing_file,
    "no_image_data": case_no_data,
    "all_nan_data": case_all_nan,
}


# --------------------------------------------------------------------------- checks

def error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith(ERROR_PREFIX)]


def assert_one_clear_error(stderr: str, bad: Path | None, keywords: tuple[str, ...]) -> str:
    lines = error_lines(stderr)
    assert len(lines) == 1, f"expected one error line, got:\n{stderr}"
    assert "Traceback" not in stderr, stderr
    line = lines[0]
    if bad is not None:
        assert bad.name in line, f"the message does not name {bad.name}: {line}"
    lowered = line.lower()
    assert any(k in lowered for k in keywords), f"the message does not say {keywords}: {line}"
    return line


def assert_no_output(tmp_path: Path, out_name: str = "out.zarr") -> None:
    out_dir = tmp_path / "out"
    leftovers = sorted(p.name for p in out_dir.iterdir()) if out_dir.exists() else []
    assert not (out_dir / out_name).exists(), f"output store left behind: {leftovers}"
    assert leftovers == [], f"files left behind in the output folder: {leftovers}"


def run_args(tmp_path: Path, tiles: list[Path], *extra: str) -> list[str]:
    out_dir = tmp_path / "out"
    out_dir.mkdir(exist_ok=True)
    return (["run", *map(str, tiles), "-o", str(out_dir / "out.zarr"),
             "--fits", str(out_dir / "out.fits"), "--preview", str(out_dir / "out.png"),
             "--no-progress", *extra])


# --------------------------------------------------------------------------- tests

def test_empty_input_list_in_process(tmp_path, capsys):
    rc = main(run_args(tmp_path, []))
    captured = capsys.readouterr()
    assert rc == 2
    assert_one_clear_error(captured.err, None, ("no input",))
    assert_no_output(tmp_path)


def test_empty_input_list_subprocess(tmp_path):
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
    proc = subprocess.run([sys.executable, "-m", "zemosaic_ooc", *run_args(tmp_path, [])],
                          capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300)
    assert proc.returncode == 2, proc.stderr
    assert_one_clear_error(proc.stderr, None, ("no input",))
    assert_no_output(tmp_path)


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_tile_in_process(case, tmp_path, capsys):
    pytest.importorskip("zemosaic_ooc.phase5.pipeline")
    tiles, bad, keywords = CASES[case](tmp_path)
    rc = main(run_args(tmp_path, tiles))
    captured = capsys.readouterr()
    assert rc == 2, captured.err
    assert_one_clear_error(captured.err, bad, keywords)
    assert_no_output(tmp_path)


@pytest.mark.parametrize("case", ["no_celestial_wcs", "corrupt_truncated", "mismatched_channels"])
def test_bad_tile_subprocess(case, tmp_path):
    pytest.importorskip("zemosaic_ooc.phase5.pipeline")
    tiles, bad, keywords = CASES[case](tmp_path)
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
    proc = subprocess.run([sys.executable, "-m", "zemosaic_ooc", *run_args(tmp_path, tiles)],
                          capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300)
    assert proc.returncode == 2, proc.stderr
    assert_one_clear_error(proc.stderr, bad, keywords)
    assert proc.stdout.strip() == "", proc.stdout
    assert_no_output(tmp_path)


def test_bad_tile_first_in_list_is_named(tmp_path, capsys):
    """The message names the bad file, not a good one around it."""
    pytest.importorskip("zemosaic_ooc.phase5.pipeline")
    bad = write_tile(tmp_path / "first_bad.fits", tile_data(seed=3), with_wcs=False)
    tiles = [bad] + good_tiles(tmp_path)
    rc = main(run_args(tmp_path, tiles))
    captured = capsys.readouterr()
    assert rc == 2
    line = assert_one_clear_error(captured.err, bad, ("wcs",))
    assert "good_" not in line
    assert_no_output(tmp_path)


def test_only_bad_tiles_with_skip_is_still_an_error(tmp_path, capsys):
    pytest.importorskip("zemosaic_ooc.phase5.pipeline")
    bad = write_tile(tmp_path / "no_wcs.fits", tile_data(seed=5), with_wcs=False)
    rc = main(run_args(tmp_path, [bad], "--skip-bad-tiles"))
    captured = capsys.readouterr()
    assert rc == 2
    assert len(error_lines(captured.err)) == 1, captured.err
    assert_no_output(tmp_path)


def test_skip_bad_tiles_skips_with_a_warning(tmp_path, capsys):
    pytest.importorskip("zemosaic_ooc.phase5.pipeline")
    tiles, bad, _ = case_no_wcs(tmp_path)
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    rc = main(["run", *map(str, tiles), "-o", str(out_dir / "out.zarr"), "--no-progress",
               "--skip-bad-tiles", "--block-size", "64"])
    captured = capsys.readouterr()
    assert rc == 0, captured.err
    assert (out_dir / "out.zarr").is_dir()
    assert bad.name in captured.err + captured.out, "the skipped tile is not reported"
