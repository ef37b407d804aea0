"""zemosaic_ooc.api.run_phase5: the ZeMosaic worker's entry point (issue 7).

On the golden fixture ``zemosaic_ref_2x2``: the API with FITS paths, with in-memory records and
with a mix of both gives exactly the CLI's output (max |diff| = 0, same NaN mask, same coverage
and alpha); options, progress, explicit grids, Zarr-backed results and bad tiles.
"""
from __future__ import annotations

import copy
import math
from pathlib import Path

import numpy as np
import pytest
import zarr
from astropy.io import fits
from astropy.wcs import WCS

from conftest import require_fixtures

from zemosaic_ooc import run_phase5 as run_phase5_reexport
from zemosaic_ooc.api import (CallbackProgress, Phase5Result, TileRecordInput, ZarrWindow,
                              run_phase5, wcs_cards)
from zemosaic_ooc.cli import main as cli_main
from zemosaic_ooc.errors import InputError, OptionError, StoreError
from zemosaic_ooc.options import Phase5Options
from zemosaic_ooc.phase5.pipeline import run_pipeline
from zemosaic_ooc.store.tiles import header_wcs

FIXTURE = "zemosaic_ref_2x2"
# fast: first pass only, small blocks (several blocks per stage on the 397 x 424 grid)
FAST = {"block_size": 128, "two_pass_coverage_renorm": False, "patchwork_suppressor_enabled": False}
ZEMOSAIC_LEVELS = {"INFO", "WARN", "ERROR", "SUCCESS", "DEBUG", "DEBUG_DETAIL", "INFO_DETAIL",
                   "ETA_LEVEL", "CHRONO_LEVEL"}


# --------------------------------------------------------------------------- helpers

@pytest.fixture(scope="module")
def tile_paths() -> list[Path]:
    dirs = [d for d in require_fixtures() if d.name == FIXTURE]
    if not dirs:
        pytest.skip(f"fixture {FIXTURE} not found")
    paths = sorted(dirs[0].glob("master_tile_*.fits"))
    assert len(paths) == 4
    return paths


def read_record(path: Path) -> tuple[np.ndarray, WCS, np.ndarray | None, float]:
    """A fixture tile as the worker holds it: HWC float32, WCS, ALPHA uint8, MT_NFRAMES."""
    with fits.open(path) as hdul:
        header = hdul[0].header
        data = np.moveaxis(np.asarray(hdul[0].data, dtype=np.float32), 0, -1).copy()
        alpha = np.array(hdul["ALPHA"].data) if "ALPHA" in hdul else None
        return data, header_wcs(header), alpha, float(header["MT_NFRAMES"])


@pytest.fixture(scope="module")
def records(tile_paths):
    return [read_record(p) for p in tile_paths]


def store_window(store: Path):
    group = zarr.open_group(str(store), mode="r")
    y0, y1, x0, x1 = (int(v) for v in group.attrs["window"])
    return (group["mosaic"][y0:y1, x0:x1, :], group["coverage"][y0:y1, x0:x1],
            group["alpha"][y0:y1, x0:x1], dict(group.attrs))


def assert_exact(result: Phase5Result, ref) -> None:
    """max |diff| = 0, same NaN mask, same coverage and alpha."""
    mosaic, coverage, alpha = (np.asarray(result.mosaic), np.asarray(result.coverage),
                               np.asarray(result.alpha))
    ref_mosaic, ref_coverage, ref_alpha = ref[0], ref[1], ref[2]
    assert mosaic.dtype == np.float32 and coverage.dtype == np.float32 and alpha.dtype == np.uint8
    assert mosaic.shape == ref_mosaic.shape and mosaic.shape[-1] == 3
    assert coverage.shape == alpha.shape == ref_coverage.shape == mosaic.shape[:2]
    finite = np.isfinite(mosaic)
    assert np.array_equal(finite, np.isfinite(ref_mosaic)), "NaN masks differ"
    assert finite.any()
    assert float(np.max(np.abs(mosaic[finite] - ref_mosaic[finite]))) == 0.0
    assert np.array_equal(coverage, ref_coverage, equal_nan=True)
    assert np.array_equal(alpha, ref_alpha)


def run_cli(tile_paths, out: Path, options: dict) -> None:
    argv = ["run", *map(str, tile_paths), "-o", str(out), "--no-progress", "-q"]
    for key, value in options.items():
        argv += ["--option", f"{key}={str(value).lower() if isinstance(value, bool) else value}"]
    assert cli_main(argv) == 0


@pytest.fixture(scope="module")
def cli_fast(tile_paths, tmp_path_factory):
    out = tmp_path_factory.mktemp("cli") / "cli.zarr"
    run_cli(tile_paths, out, FAST)
    return store_window(out) + (out,)


def progress_values(calls):
    return [c[1] for c in calls if c[1] is not None]


# --------------------------------------------------------------------------- exactness

def test_paths_equal_cli_exactly(tile_paths, cli_fast, tmp_path):
    calls = []
    result = run_phase5([str(p) for p in tile_paths], options=FAST,
                        progress_callback=lambda *a: calls.append(a))
    assert_exact(result, cli_fast)
    assert result.in_memory and result.store_path is None
    assert result.summary.n_tiles == 4
    # the result's WCS is the grid WCS shifted to the window, as the exported FITS header says
    attrs = cli_fast[3]
    y0, y1, x0, x1 = attrs["window"]
    assert result.window == (y0, y1, x0, x1)
    assert result.wcs.pixel_shape == (x1 - x0, y1 - y0)
    grid_wcs = WCS(fits.Header.fromstring(attrs["output_wcs_header"]))
    assert np.allclose(result.wcs.pixel_to_world_values(5.0, 7.0),
                       grid_wcs.pixel_to_world_values(5.0 + x0, 7.0 + y0), rtol=0, atol=1e-12)
    # progress: monotonic, 1.0 exactly once and last
    values = progress_values(calls)
    assert values and all(b >= a for a, b in zip(values, values[1:]))
    assert values[-1] == 1.0 and values.count(1.0) == 1


def test_records_equal_cli_and_paths_exactly(tile_paths, records, cli_fast):
    result = run_phase5(records, options=FAST)
    assert_exact(result, cli_fast)
    # the same via the TileRecordInput and mapping forms, mixed with FITS paths
    mixed = [TileRecordInput(*records[0]), str(tile_paths[1]),
             dict(zip(("data", "wcs", "alpha", "nframes"), records[2])), tile_paths[3]]
    result_mixed = run_phase5(mixed, options=FAST)
    assert_exact(result_mixed, cli_fast)
    assert_exact(result_mixed, (result.mosaic, result.coverage, result.alpha))
    assert not any("record_" in w for w in result.summary.warnings)


def test_default_options_records_equal_run_pipeline(tile_paths, records, tmp_path):
    """ZeMosaic's default Phase 5 (two-pass and patchwork on) through the API, with records."""
    options = {"block_size": 128}
    out = tmp_path / "pipe.zarr"
    run_pipeline(tile_paths, out, Phase5Options.from_mapping(options))
    calls = []
    result = run_phase5(records, options=options, progress_callback=lambda *a: calls.append(a))
    assert_exact(result, store_window(out))
    assert result.summary.two_pass.get("ran")
    assert "patchwork suppressor" in result.summary.steps_run
    values = progress_values(calls)
    assert all(b >= a for a, b in zip(values, values[1:])) and values[-1] == 1.0
    stages = {c[0].split(":")[1] for c in calls if c[0].endswith(":start")}
    assert {"write tiles", "ingest", "pass1", "pass2", "merge", "patchwork"} <= stages


def test_wcs_cards_rebuild_the_tile_wcs_bit_for_bit(tile_paths):
    for path in tile_paths:
        wcs = header_wcs(fits.getheader(path))
        again = header_wcs(fits.Header.fromstring(wcs_cards(wcs).tostring()))
        assert np.array_equal(again.wcs.cd, wcs.wcs.cd)
        assert np.array_equal(again.wcs.crval, wcs.wcs.crval)
        assert np.array_equal(again.wcs.crpix, wcs.wcs.crpix)
        for name in ("a", "b"):
            assert np.array_equal(getattr(again.sip, name), getattr(wcs.sip, name))
        x = np.linspace(-5, 300, 17)
        assert np.array_equal(np.array(again.all_pix2world(x, x[::-1], 0)),
                              np.array(wcs.all_pix2world(x, x[::-1], 0)))
    # a PC + CDELT WCS (and a value astropy would cut to 20 columns) keeps every digit too
    pc = WCS(naxis=2)
    pc.wcs.ctype = ["RA---TAN", "DEC--TAN"]
    pc.wcs.crval = [150.06762064180998, 34.946559923485481]
    pc.wcs.crpix = [124.50000000000001, 116.5]
    pc.wcs.cdelt = [-1.2345678901234567e-05, 1.2345678901234567e-05]
    pc.wcs.pc = [[0.99999723324492123, -0.0023523397927952123], [0.0023523397927952123, 0.99999723324492123]]
    again = WCS(fits.Header.fromstring(wcs_cards(pc).tostring()))
    assert np.array_equal(again.wcs.get_pc(), pc.wcs.get_pc())
    assert np.array_equal(again.wcs.get_cdelt(), pc.wcs.get_cdelt())
    assert np.array_equal(again.wcs.crval, pc.wcs.crval)
    assert np.array_equal(again.wcs.crpix, pc.wcs.crpix)


# --------------------------------------------------------------------------- options

def test_unknown_option_key_fails_with_suggestion(tile_paths, tmp_path):
    store = tmp_path / "never.zarr"
    with pytest.raises(OptionError, match=r"did you mean 'intertile_photometric_match'"):
        run_phase5(tile_paths, options={"intertile_photometric_matc": True}, store=store)
    assert not store.exists()
    with pytest.raises(OptionError, match="not supported"):
        run_phase5(tile_paths, options={"final_assembly_method": "incremental"}, store=store)
    with pytest.raises(OptionError, match="on_bad_tile"):
        run_phase5(tile_paths, on_bad_tile="ignore")
    with pytest.raises(OptionError, match="contradicts"):
        run_phase5(tile_paths, options={"skip_bad_tiles": False})
    assert not store.exists()


def test_whole_zemosaic_config_is_accepted_and_on_bad_tile_maps_to_skip(tile_paths, records):
    from zemosaic_ooc.api import _build_options
    opts = _build_options({"sds_mode_default": False, "quality_gate_enabled": True,
                           "parallel_autotune_enabled": True, **FAST}, "skip")
    assert opts.skip_bad_tiles is True and opts.block_size == 128
    assert _build_options(None, "raise").skip_bad_tiles is False
    assert run_phase5_reexport is run_phase5


# --------------------------------------------------------------------------- progress

def test_progress_adapter_is_monotonic_with_unknown_and_skipped_stages():
    calls = []
    sink = CallbackProgress(lambda *a: calls.append(a), planned=["ingest", "pass1", "never runs", "merge"])
    sink.start("ingest", 4, unit="tile")
    for _ in range(4):
        sink.advance("ingest")
    sink.finish("ingest")
    sink.start("a stage nobody planned", 3)
    sink.advance("a stage nobody planned", 0)      # heartbeat: nothing to report
    sink.advance("a stage nobody planned", 5)      # more than total
    sink.finish("a stage nobody planned")
    sink.start("pass1", 1000)
    for _ in range(1000):
        sink.advance("pass1")
    sink.advance("started nowhere")                 # advance without start
    sink.message("something odd", "warning")
    sink.finish("pass1")
    sink.start("empty", 0)
    sink.finish("empty")
    values = progress_values(calls)
    assert all(b >= a for a, b in zip(values, values[1:]))
    assert all(0.0 <= v < 1.0 for v in values)
    ticks = [c for c in calls if c[0].startswith("phase5_ooc:pass1:") and "/" in c[0]]
    assert 100 <= len(ticks) <= 201                 # block granularity, throttled
    assert ("something odd", None, "WARN") in calls
    sink.close()
    sink.close()
    assert calls[-1] == ("phase5_ooc:done", 1.0, "SUCCESS")
    assert progress_values(calls).count(1.0) == 1
    assert all(isinstance(c[0], str) and c[2] in ZEMOSAIC_LEVELS for c in calls)
    # a callback that raises does not stop the run's bookkeeping
    def broken(*args):
        raise RuntimeError("GUI gone")
    sink = CallbackProgress(broken, planned=["x"])
    sink.start("x", 2)
    sink.advance("x", 2)
    sink.finish("x")
    sink.close()
    assert sink.value == 1.0


def test_progress_reports_every_block_of_pass1(tile_paths):
    calls = []
    result = run_phase5(tile_paths, options=FAST, progress_callback=lambda *a: calls.append(a))
    h, w = result.grid_shape_hw
    n_blocks = math.ceil(h / 128) * math.ceil(w / 128)
    ticks = [c for c in calls if c[0].startswith("phase5_ooc:pass1:") and "/" in c[0]]
    assert len(ticks) == n_blocks
    assert ticks[-1][0] == f"phase5_ooc:pass1:{n_blocks}/{n_blocks}"
    values = progress_values(calls)
    assert all(b >= a for a, b in zip(values, values[1:]))
    assert values[-1] == 1.0 and values.count(1.0) == 1 and calls[-1][1] == 1.0
    assert all(c[2] in ZEMOSAIC_LEVELS for c in calls)


# --------------------------------------------------------------------------- output grid

def test_explicit_output_grid_is_honoured(tile_paths, records, cli_fast):
    attrs = cli_fast[3]
    header = fits.Header.fromstring(attrs["output_wcs_header"])
    grid_wcs = WCS(header)
    grid_hw = tuple(int(v) for v in attrs["shape_hw"])
    # the grid ZeMosaic's Phase 4 would compute, given explicitly: the same numbers
    same = run_phase5(records, output_wcs=grid_wcs, output_shape_hw=grid_hw, options=FAST)
    assert same.grid_shape_hw == grid_hw
    assert_exact(same, cli_fast)
    # a larger grid (the tiles' footprint shifted by (30, 40) px): its shape is used, the autocrop
    # trims it, and the result's WCS is the given one shifted to the window
    padded = copy.deepcopy(grid_wcs)
    padded.wcs.crpix = padded.wcs.crpix + np.array([40.0, 30.0])
    padded.wcs.set()
    big_hw = (grid_hw[0] + 70, grid_hw[1] + 90)
    result = run_phase5(tile_paths, output_wcs=padded, output_shape_hw=big_hw, options=FAST)
    assert result.grid_shape_hw == big_hw == tuple(result.summary.shape_hw)
    y0, y1, x0, x1 = result.window
    assert result.summary.autocrop_fired and (y1 - y0, x1 - x0) != big_hw
    assert result.mosaic.shape == (y1 - y0, x1 - x0, 3)
    assert result.wcs.pixel_shape == (x1 - x0, y1 - y0)
    for x, y in ((0.0, 0.0), (100.5, 37.25)):
        assert np.allclose(result.wcs.pixel_to_world_values(x, y),
                           padded.pixel_to_world_values(x + x0, y + y0), rtol=0, atol=1e-10)
    # same sky, same numbers up to float rounding of the shifted grid
    oy, ox = y0 - 30, x0 - 40
    a = np.asarray(result.mosaic)
    b = cli_fast[0]
    i0, i1 = max(0, -oy), min(a.shape[0], b.shape[0] - oy)
    j0, j1 = max(0, -ox), min(a.shape[1], b.shape[1] - ox)
    a, b = a[i0:i1, j0:j1], b[i0 + oy:i1 + oy, j0 + ox:j1 + ox]
    both = np.isfinite(a).all(-1) & np.isfinite(b).all(-1)
    assert np.mean(np.isfinite(a).all(-1) == np.isfinite(b).all(-1)) > 0.99
    assert np.max(np.abs(a[both] - b[both])) <= 1e-5 * np.max(np.abs(b[both]))
    # a header with NAXIS1/2 works as the grid too
    header_grid = grid_wcs.to_header(relax=True)
    header_grid["NAXIS1"], header_grid["NAXIS2"] = grid_hw[1], grid_hw[0]
    from zemosaic_ooc.api import _resolve_grid
    wcs_h, hw = _resolve_grid(header_grid, None)
    assert hw == grid_hw and wcs_h.pixel_shape == (grid_hw[1], grid_hw[0])
    with pytest.raises(OptionError, match="output_wcs"):
        _resolve_grid(None, grid_hw)


# --------------------------------------------------------------------------- large results

def test_large_result_threshold_gives_zarr_backed_arrays(tile_paths, cli_fast, tmp_path):
    result = run_phase5(tile_paths, options=FAST, in_memory_limit=1024)
    try:
        assert not result.in_memory
        for arr in (result.mosaic, result.coverage, result.alpha):
            assert isinstance(arr, ZarrWindow)
        assert result.store_path is not None and result.store_path.is_dir()
        assert not (result.store_path.parent / "records").exists()
        assert result.mosaic.shape == cli_fast[0].shape and result.mosaic.dtype == np.float32
        assert result.alpha.dtype == np.uint8
        assert_exact(result, cli_fast)
        # window views index like numpy arrays
        ref = cli_fast[0]
        for key in [(slice(10, 50), slice(3, 90, 7)), (5,), (-1, slice(None, None, -3)),
                    (Ellipsis, 1), (slice(None, None, -5), 2, slice(0, 2)), (slice(5, 5),),
                    (slice(-20, None), Ellipsis)]:
            np.testing.assert_array_equal(result.mosaic[key], ref[key])
        np.testing.assert_array_equal(result.coverage[7, -3], cli_fast[1][7, -3])
        with pytest.raises(IndexError):
            result.alpha[10_000, 0]
        out = result.export_fits(tmp_path / "big.fits")
        with fits.open(out) as hdul:
            assert hdul[0].data.shape == (3,) + ref.shape[:2]
    finally:
        store = result.store_path
        result.cleanup()
    assert result.store_path is None and not store.exists()


def test_store_path_is_kept_and_records_folder_removed(records, cli_fast, tmp_path):
    store = tmp_path / "kept" / "mosaic.zarr"
    result = run_phase5(records, options=FAST, store=store)
    assert result.in_memory and result.store_path == store and store.is_dir()
    assert_exact(result, cli_fast)
    assert_exact(result, store_window(store))
    assert sorted(p.name for p in store.parent.iterdir()) == ["mosaic.zarr"]
    with pytest.raises(StoreError, match="already exists"):
        run_phase5(records, options=FAST, store=store)
    again = run_phase5(records, options={**FAST, "overwrite": True}, store=store)
    assert_exact(again, cli_fast)


# --------------------------------------------------------------------------- bad tiles

def test_bad_tiles_are_skipped_by_default_and_raise_on_request(records, tile_paths):
    data, wcs, alpha, nframes = records[0]
    no_sky = WCS(naxis=2)                       # no celestial axes
    bad = (data, no_sky, alpha, nframes)
    with pytest.raises(InputError, match=r"tiles\[1\].*celestial"):
        run_phase5([records[0], bad, records[2]], options=FAST, on_bad_tile="raise")
    empty = (np.full_like(data, np.nan), wcs, alpha, nframes)
    with pytest.raises(InputError, match=r"tiles\[2\]") as info:
        run_phase5([records[0], tile_paths[1], empty], options=FAST, on_bad_tile="raise")
    assert "record_" not in str(info.value)
    calls = []
    result = run_phase5([records[0], bad, tile_paths[2], empty, records[3]], options=FAST,
                        progress_callback=lambda *a: calls.append(a))
    assert result.summary.n_tiles == 3
    text = " ".join(result.summary.warnings)
    assert "tiles[1]" in text and "tiles[3]" in text and "record_" not in text
    assert any(c[2] == "WARN" and "tiles[1]" in c[0] for c in calls)
    assert progress_values(calls)[-1] == 1.0
    with pytest.raises(InputError, match="no usable input tile"):
        run_phase5([bad], options=FAST)
    with pytest.raises(InputError, match=r"tiles\[0\]"):
        run_phase5([("not", "a", "tile", "record", "at all")], options=FAST)


def test_integration_doc_lists_every_option():
    from zemosaic_ooc.options import describe_options
    text = (Path(__file__).resolve().parents[1] / "docs" / "zemosaic_integration.md").read_text()
    missing = [r["key"] for r in describe_options() if f"`{r['key']}`" not in text]
    assert not missing, f"docs/zemosaic_integration.md lacks {missing} (regenerate its option tables)"
    for needle in ("assemble_final_mosaic_reproject_coadd", "_apply_phase5_post_stack_pipeline",
                   "run_phase5(", "progress_callback", "on_bad_tile"):
        assert needle in text
