"""The zemosaic-ooc command line: help, options, exit codes, progress, the demo."""
from __future__ import annotations

import io
import logging
import os
import re
import stat
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from astropy.io import fits
from astropy.wcs import WCS

from zemosaic_ooc import cli
from zemosaic_ooc.cli import build_options, build_parser, main
from zemosaic_ooc.errors import OptionError, ZeMosaicOocError

REPO_ROOT = Path(__file__).resolve().parents[1]
ERROR_PREFIX = "zemosaic-ooc: error:"


def _error_lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.startswith(ERROR_PREFIX)]


def _options(*argv: str):
    args = build_parser().parse_args(["run", "t.fits", "-o", "o.zarr", *argv])
    return build_options(args)


def _small_tile(path: Path, index: int, shape_hw=(96, 128)) -> Path:
    h, w = shape_hw
    wcs = WCS(naxis=2)
    wcs.wcs.ctype = ["RA---TAN", "DEC--TAN"]
    dra = index * (w / 2.0) / 3600.0 / np.cos(np.radians(20.0))
    wcs.wcs.crval = [10.0 + dra, 20.0]
    wcs.wcs.crpix = [(w + 1) / 2.0, (h + 1) / 2.0]
    wcs.wcs.cdelt = [-1.0 / 3600, 1.0 / 3600]
    rng = np.random.default_rng(index)
    data = (100.0 + rng.normal(0, 2.0, (3, h, w))).astype(np.float32)
    header = wcs.to_header()
    header["NRAWPROC"] = 10
    fits.PrimaryHDU(data=data, header=header).writeto(path)
    return path


# --------------------------------------------------------------------------- help, usage

def test_help_lists_every_command(capsys):
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    for command in ("run", "demo", "resume", "report"):
        assert command in out


@pytest.mark.parametrize("command", ["run", "demo", "resume", "report"])
def test_subcommand_help(command, capsys):
    assert main([command, "--help"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: zemosaic-ooc " + command)


def test_run_help_names_every_flag(capsys):
    assert main(["run", "--help"]) == 0
    out = capsys.readouterr().out
    for flag in ("-o", "--fits", "--preview", "--memory-budget", "--block-size", "--gpu",
                 "--gpu-memory-budget", "--scheduler", "--photometry", "--grid",
                 "--skip-bad-tiles", "--overwrite", "--durable", "--option", "--progress",
                 "-v", "-q"):
        assert re.search(rf"(^|[\s\[,]){re.escape(flag)}\b", out), flag


def test_version(capsys):
    assert main(["--version"]) == 0
    assert "zemosaic-ooc" in capsys.readouterr().out


@pytest.mark.parametrize("argv", [
    [],                                             # no command
    ["frobnicate"],                                 # unknown command
    ["run", "a.fits"],                              # -o missing
    ["run", "a.fits", "-o", "o.zarr", "--gpu", "maybe"],
    ["run", "a.fits", "-o", "o.zarr", "--block-size", "-3"],
    ["run", "a.fits", "-o", "o.zarr", "--memory-budget", "lots"],
    ["run", "a.fits", "-o", "o.zarr", "--no-such-flag"],
    ["demo", "--tiles", "2by2"],
])
def test_usage_errors_exit_2(argv, capsys):
    assert main(argv) == 2
    assert "usage:" in capsys.readouterr().err


def test_resume_without_a_store_is_a_clear_error(tmp_path, capsys):
    assert main(["resume", str(tmp_path / "x.zarr")]) == 2
    lines = _error_lines(capsys.readouterr().err)
    assert len(lines) == 1 and "no output store to resume" in lines[0]


def test_module_entry_point_subprocess():
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
    proc = subprocess.run([sys.executable, "-m", "zemosaic_ooc", "--help"],
                          capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "usage: zemosaic-ooc" in proc.stdout


# --------------------------------------------------------------------------- --option

def test_option_values_are_json_with_string_fallback():
    opts = _options("--option", "two_pass_cov_sigma_px=12.5",
                    "--option", "two_pass_coverage_renorm=false",
                    "--option", "tile_weight_v4_curve=log",
                    "--option", 'tile_weight_mode="n_frames"',
                    "--option", "intertile_prune_k=5",
                    "--option", "intertile_sky_percentile=[25, 75]")
    assert opts.two_pass_cov_sigma_px == 12.5
    assert opts.two_pass_coverage_renorm is False
    assert opts.tile_weight_v4_curve == "log"
    assert opts.tile_weight_mode == "n_frames"
    assert opts.intertile_prune_k == 5 and isinstance(opts.intertile_prune_k, int)
    assert list(opts.intertile_sky_percentile) == [25, 75]


def test_flags_win_over_option_and_sizes_are_parsed():
    opts = _options("--option", "block_size=256", "--block-size", "128",
                    "--memory-budget", "512MiB", "--gpu", "off", "--skip-bad-tiles")
    assert opts.block_size == 128
    assert opts.memory_budget == 512 * 1024**2
    assert opts.gpu == "off"
    assert opts.skip_bad_tiles is True


def test_unknown_option_key_says_did_you_mean(tmp_path, capsys):
    out = tmp_path / "o.zarr"
    rc = main(["run", str(tmp_path / "a.fits"), "-o", str(out),
               "--option", "two_pass_cov_sigma=3"])
    err = capsys.readouterr().err
    assert rc == 2
    lines = _error_lines(err)
    assert len(lines) == 1, err
    assert "two_pass_cov_sigma" in lines[0]
    assert "did you mean 'two_pass_cov_sigma_px'" in lines[0]
    assert not out.exists()


@pytest.mark.parametrize("item", ["novalue", "=3", ""])
def test_malformed_option_item(item, tmp_path, capsys):
    rc = main(["run", str(tmp_path / "a.fits"), "-o", str(tmp_path / "o.zarr"), "--option", item])
    lines = _error_lines(capsys.readouterr().err)
    assert rc == 2
    assert len(lines) == 1 and "KEY=VALUE" in lines[0]


def test_unknown_option_raises_option_error_directly():
    with pytest.raises(OptionError, match="did you mean"):
        _options("--option", "intertile_prune_kk=3")


def test_size_parser():
    parse = cli.parse_size
    assert parse("2GiB") == 2 * 1024**3
    assert parse("1.5GiB") == int(1.5 * 1024**3)
    assert parse("512M") == 512 * 1024**2
    assert parse("100") == 100
    assert parse("2GB") == 2 * 1000**3
    for bad in ("", "lots", "2XB", "-1G", "0"):
        with pytest.raises(OptionError):
            parse(bad)


def test_size_parser_in_use():
    assert cli.parse_size("2GiB") == 2 * 1024**3
    with pytest.raises(OptionError):
        cli.parse_size("lots")


# --------------------------------------------------------------------------- errors

def test_zemosaic_error_is_one_line_exit_2(monkeypatch, capsys):
    def boom(args):
        raise ZeMosaicOocError("first line\nsecond line")
    monkeypatch.setattr(cli, "cmd_run", boom)
    assert main(["run", "a.fits", "-o", "o.zarr"]) == 2
    err = capsys.readouterr().err
    assert err.strip() == "zemosaic-ooc: error: first line second line"


def test_unexpected_exception_exits_1_with_hint(monkeypatch, capsys):
    def boom(args):
        raise RuntimeError("kaboom")
    monkeypatch.setattr(cli, "cmd_run", boom)
    assert main(["run", "a.fits", "-o", "o.zarr"]) == 1
    err = capsys.readouterr().err
    assert "internal error: RuntimeError: kaboom" in err
    assert "-v" in err
    assert "Traceback" not in err
    assert main(["run", "a.fits", "-o", "o.zarr", "-v"]) == 1
    assert "Traceback" in capsys.readouterr().err


def test_gpu_unavailable_error_exits_2(monkeypatch, capsys):
    from zemosaic_ooc.backend import GpuUnavailableError

    def boom(args):
        raise GpuUnavailableError("--gpu on was requested but no CUDA device is usable")
    monkeypatch.setattr(cli, "cmd_run", boom)
    assert main(["run", "a.fits", "-o", "o.zarr", "--gpu", "on"]) == 2
    assert len(_error_lines(capsys.readouterr().err)) == 1


def test_gpu_on_without_gpu_exits_2(tmp_path, capsys):
    pytest.importorskip("zemosaic_ooc.phase5.pipeline")
    from zemosaic_ooc.backend import cupy_available
    if cupy_available():
        pytest.skip("a CUDA device is usable here")
    tiles = [_small_tile(tmp_path / f"t{i}.fits", i) for i in range(2)]
    out = tmp_path / "o.zarr"
    rc = main(["run", *map(str, tiles), "-o", str(out), "--gpu", "on", "--no-progress"])
    err = capsys.readouterr().err
    assert rc == 2, err
    lines = _error_lines(err)
    assert len(lines) == 1, err
    assert "gpu" in lines[0].lower() and ("cuda" in lines[0].lower() or "device" in lines[0].lower())
    assert not out.exists()


# --------------------------------------------------------------------------- progress

class _Tty(io.StringIO):
    def isatty(self):
        return True


def test_progress_bar_per_stage_when_forced():
    stream = io.StringIO()
    sink = cli.TqdmProgress(force=True, stream=stream)
    sink.start("pass 1", 4, "block")
    for _ in range(4):
        sink.advance("pass 1")
    sink.finish("pass 1")
    sink.start("export", 2, "slab")
    sink.advance("export", 2)
    sink.finish("export")
    text = stream.getvalue()
    assert "pass 1" in text and "4/4" in text
    assert "export" in text and "2/2" in text


def test_progress_bar_off_when_not_a_tty_or_disabled():
    stream = io.StringIO()
    sink = cli.TqdmProgress(stream=stream)
    sink.start("pass 1", 3)
    sink.advance("pass 1", 3)
    sink.finish("pass 1")
    assert stream.getvalue() == ""
    tty = _Tty()
    assert cli.TqdmProgress(stream=tty).show
    assert not cli.TqdmProgress(stream=tty, enabled=False).show


def test_progress_messages_reach_the_log(caplog):
    sink = cli.TqdmProgress(stream=io.StringIO())
    with caplog.at_level(logging.INFO, logger="zemosaic_ooc"):
        sink.message("first pass only", "warning")
    assert "first pass only" in caplog.text


# --------------------------------------------------------------------------- demo and a full run

def test_demo_no_run_writes_tiles(tmp_path, capsys):
    demo = pytest.importorskip("zemosaic_ooc.demo")
    assert hasattr(demo, "make_demo_tiles")
    rc = main(["demo", str(tmp_path / "d"), "--tiles", "2x1", "--tile-size", "96x128", "--no-run"])
    out = capsys.readouterr().out
    assert rc == 0
    tiles = sorted((tmp_path / "d" / "tiles").glob("*.fits"))
    assert len(tiles) == 2
    assert "zemosaic-ooc run" in out
    assert not (tmp_path / "d" / "demo.zarr").exists()


def test_demo_runs_end_to_end_and_twice(tmp_path, capsys):
    pytest.importorskip("zemosaic_ooc.demo")
    pytest.importorskip("zemosaic_ooc.phase5.pipeline")
    target = tmp_path / "demo_out"
    argv = ["demo", str(target), "--tiles", "2x1", "--tile-size", "128x160", "--block-size", "64",
            "--no-progress"]
    for _ in range(2):  # a second demo into the same folder replaces its outputs
        rc = main(argv)
        captured = capsys.readouterr()
        assert rc == 0, captured.err
        assert (target / "demo.zarr").is_dir()
        assert (target / "demo.fits").is_file()
        assert (target / "demo.png").is_file()
        assert captured.out.strip(), "no summary printed"
    with fits.open(target / "demo.fits") as hdul:
        assert hdul[0].data.ndim == 3 and hdul[0].data.shape[0] == 3
        names = {h.name for h in hdul}
        assert {"COVERAGE", "ALPHA"} <= names


def test_run_prints_summary(tmp_path, capsys):
    pytest.importorskip("zemosaic_ooc.phase5.pipeline")
    tiles = [_small_tile(tmp_path / f"t{i}.fits", i) for i in range(2)]
    out = tmp_path / "o.zarr"
    rc = main(["run", *map(str, tiles), "-o", str(out), "--block-size", "64", "--no-progress"])
    captured = capsys.readouterr()
    assert rc == 0, captured.err
    assert out.is_dir()
    assert str(out.name) in captured.out
    # the summary never claims stages it skipped (ACCEPTANCE §2): what it lists as run and not
    # run is what the store records
    import zarr

    attrs = zarr.open_group(str(out), mode="r").attrs
    lines = captured.out.splitlines()
    steps_run = next(line for line in lines if line.strip().startswith("steps run"))
    not_run = next((line for line in lines if line.strip().startswith("not run")), "")
    assert "first pass" in steps_run
    for name, ran in (("two-pass", attrs["two_pass"]["ran"]), ("patchwork", attrs["patchwork"]["ran"])):
        assert (name in steps_run) == bool(ran), (name, steps_run)
        assert (name in not_run) == (not ran), (name, not_run)
    # -q: no summary at all
    rc = main(["run", *map(str, tiles), "-o", str(out), "--block-size", "64", "-q", "--overwrite"])
    captured = capsys.readouterr()
    assert rc == 0, captured.err
    assert captured.out == ""


def test_existing_output_without_overwrite_exits_2(tmp_path, capsys):
    pytest.importorskip("zemosaic_ooc.phase5.pipeline")
    tiles = [_small_tile(tmp_path / f"t{i}.fits", i) for i in range(2)]
    out = tmp_path / "o.zarr"
    out.mkdir()
    (out / "keep.txt").write_text("user data")
    rc = main(["run", *map(str, tiles), "-o", str(out), "--no-progress"])
    lines = _error_lines(capsys.readouterr().err)
    assert rc == 2
    assert len(lines) == 1 and "o.zarr" in lines[0]
    assert (out / "keep.txt").read_text() == "user data"


# --------------------------------------------------------------------------- README and CI

def test_readme_quick_start_and_ci_use_the_same_commands():
    readme = (REPO_ROOT / "README.md").read_text(encoding="utf-8")
    assert 'pip install -e ".[test]"' in readme
    assert "zemosaic-ooc demo demo_out" in readme
    assert "python -m pytest -q" in readme
    ci = REPO_ROOT / ".ci" / "run"
    text = ci.read_text(encoding="utf-8")
    assert text.startswith("#!")
    assert "set -euo pipefail" in text
    assert "ZEMOSAIC_OOC_REQUIRE_FIXTURES=1" in text
    assert re.search(r"^\s*python -m pytest -q\s*$", text, re.M)
    assert ci.stat().st_mode & stat.S_IXUSR
