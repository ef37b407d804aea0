"""The bad-input corpus (issue 5 item 4, ACCEPTANCE §5), generated into ``tmp_path``.

Every case runs the CLI in-process (``main(["run", ...])``) and asserts its exit
code, one clear message naming the file and the problem (stderr), and that the
output store is not created -- or, for the existing-store case, not modified.

Decisions the corpus pins down:

* **Bad tile -> exit 2** (ACCEPTANCE §5): no / non-celestial / singular / non-finite
  WCS, corrupt header, truncated file, not a FITS file, a directory, 4-D data, a
  channel count other than 1 or 3, channel counts that differ between tiles,
  all-NaN data, a duplicate tile (same content as an earlier one).
* **ALPHA all zero -> a bad tile (exit 2)**: the tile contributes nothing (§2.8
  makes its data NaN wherever alpha <= 0.5 and §5.3 gives it an empty alpha
  union), i.e. it is an empty tile.  ``--skip-bad-tiles`` skips it with a
  warning naming the file, and the run goes on (exit 0).
* **A tile that overlaps no other tile -> a bad tile (exit 2)**, checked at
  ingest on the sky footprints (corners and edge midpoints through the full WCS)
  when there are >= 2 tiles: the output grid would have to span the gap.
  ``--skip-bad-tiles`` skips it with a warning (exit 0).
* **Warnings, the run goes on (exit 0)**: an ALPHA whose shape differs from the
  data is ignored, as ZeMosaic does (§0.3), with a warning naming the file; a
  negative or non-numeric frame-count key is ignored, as ZeMosaic does (it falls
  back to the next key, else 1 frame), with a warning naming the file and the key.
* **Output**: a path whose parent is a regular file is refused before anything is
  written (tests run as root, so a read-only folder does not stop them; that
  variant runs only as non-root); an existing store without ``--overwrite`` is
  refused, saying so and how to proceed, and is left byte-for-byte unchanged.
"""
from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np
import pytest
from astropy.io import fits
from astropy.wcs import WCS

from zemosaic_ooc.cli import main

from synthetic_tiles import smooth_tile_data, tan_wcs

ERROR_PREFIX = "zemosaic-ooc: error:"
WARNING_PREFIX = "zemosaic-ooc: warning:"
TILE_HW = (64, 72)
SCALE_DEG = 1.0 / 3600.0
FAST = ["--option", "two_pass_coverage_renorm=false",
        "--option", "patchwork_suppressor_enabled=false", "--block-size", "128"]

pytestmark = pytest.mark.filterwarnings("ignore::astropy.wcs.FITSFixedWarning")


# --------------------------------------------------------------------------- tile makers

def tile_wcs(index: int = 0, shape_hw=TILE_HW, *, dra_deg: float | None = None) -> WCS:
    """Tile ``index`` sits half a tile east of tile ``index - 1`` (50 % overlap)."""
    h, w = shape_hw
    if dra_deg is None:
        dra_deg = index * (w / 2.0) * SCALE_DEG / np.cos(np.radians(20.0))
    return tan_wcs(shape_hw, crval=(10.0 + dra_deg, 20.0), scale_deg=SCALE_DEG)


def tile_data(seed: int = 0, shape_hw=TILE_HW, channels: int = 3) -> np.ndarray:
    return smooth_tile_data(shape_hw, seed=seed, channels=channels)


def write_tile(path: Path, index: int = 0, data: np.ndarray | None = None, *,
               header: fits.Header | None = None, wcs: WCS | None = None, with_wcs: bool = True,
               alpha: np.ndarray | None = None, nframes=10) -> Path:
    data = tile_data(seed=index) if data is None else data
    hdr = fits.Header()
    if with_wcs:
        hdr.update((wcs or tile_wcs(index)).to_header())
    if nframes is not None:
        hdr["NRAWPROC"] = nframes
    if header is not None:
        hdr.update(header)
    hdus = [fits.PrimaryHDU(data=data, header=hdr)]
    if alpha is not None:
        hdus.append(fits.ImageHDU(data=alpha, name="ALPHA"))
    fits.HDUList(hdus).writeto(path, overwrite=True)
    return path


def uint8_alpha(shape_hw=TILE_HW, value: int = 255) -> np.ndarray:
    return np.full(shape_hw, value, np.uint8)


def good_tiles(tmp_path: Path, n: int = 2) -> list[Path]:
    return [write_tile(tmp_path / f"good_{i}.fits", i, alpha=uint8_alpha()) for i in range(n)]


# --------------------------------------------------------------------------- checks

def checksum_tree(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def lines_with(stderr: str, prefix: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith(prefix)]


def assert_one_error(stderr: str, names: tuple[str, ...], keywords: tuple[str, ...]) -> str:
    """One ``zemosaic-ooc: error:`` line naming every name in ``names`` and one of ``keywords``."""
    assert "Traceback" not in stderr, stderr
    errors = lines_with(stderr, ERROR_PREFIX)
    assert len(errors) == 1, f"expected one error line, got:\n{stderr}"
    line = errors[0]
    for name in names:
        assert name in line, f"the message does not name {name}: {line}"
    lowered = line.lower()
    assert any(k in lowered for k in keywords), f"the message does not say {keywords}: {line}"
    return line


def assert_warning(stderr: str, name: str, keywords: tuple[str, ...]) -> str:
    """A ``zemosaic-ooc: warning:`` line naming ``name`` and saying all of ``keywords``."""
    assert not lines_with(stderr, ERROR_PREFIX), stderr
    for line in lines_with(stderr, WARNING_PREFIX):
        lowered = line.lower()
        if name in line and all(k.lower() in lowered for k in keywords):
            return line
    raise AssertionError(f"no warning naming {name} and saying {keywords}:\n{stderr}")


def out_dir(tmp_path: Path) -> Path:
    d = tmp_path / "out"
    d.mkdir(exist_ok=True)
    return d


def assert_nothing_written(tmp_path: Path) -> None:
    d = tmp_path / "out"
    left = sorted(p.name for p in d.iterdir()) if d.exists() else []
    assert left == [], f"left behind in the output folder: {left}"


def run_cli(capsys, tiles, output: Path, *extra: str) -> tuple[int, str, str]:
    rc = main(["run", *map(str, tiles), "-o", str(output), "--no-progress", *extra])
    captured = capsys.readouterr()
    return rc, captured.out, captured.err


# --------------------------------------------------------------------------- bad tiles: exit 2
# each case returns (tiles, the bad file, keywords of which the message must say one)

def case_no_wcs(tmp_path):
    bad = write_tile(tmp_path / "no_wcs.fits", 2, with_wcs=False)
    return good_tiles(tmp_path) + [bad], bad, ("wcs",)


def case_non_celestial_wcs(tmp_path):
    wcs = WCS(naxis=2)
    wcs.wcs.ctype = ["LINEAR", "LINEAR"]
    wcs.wcs.crval = [0.0, 0.0]
    wcs.wcs.crpix = [1.0, 1.0]
    wcs.wcs.cdelt = [1.0, 1.0]
    bad = write_tile(tmp_path / "linear_wcs.fits", 2, wcs=wcs)
    return good_tiles(tmp_path) + [bad], bad, ("celestial",)


def case_singular_cd(tmp_path):
    header = fits.Header()
    for key, value in {"CD1_1": 1e-4, "CD1_2": 2e-4, "CD2_1": 1e-4, "CD2_2": 2e-4}.items():
        header[key] = value
    wcs = tile_wcs(2)
    hdr = wcs.to_header()
    for key in ("CDELT1", "CDELT2", "PC1_1", "PC1_2", "PC2_1", "PC2_2"):
        hdr.remove(key, ignore_missing=True)
    hdr.update(header)
    bad = write_tile(tmp_path / "singular_cd.fits", 2, header=hdr, with_wcs=False)
    return good_tiles(tmp_path) + [bad], bad, ("singular",)


def case_nan_crval(tmp_path):
    """``CRVAL1 = NAN`` (astropy will not write it: patch the card; WCS() would quietly read 0)."""
    bad = write_tile(tmp_path / "nan_crval.fits", 2)
    raw = bad.read_bytes()
    i = raw.index(b"CRVAL1  =")
    bad.write_bytes(raw[:i] + b"CRVAL1  =                  NAN".ljust(80) + raw[i + 80:])
    return good_tiles(tmp_path) + [bad], bad, ("crval1",)


def case_corrupt_header(tmp_path):
    bad = write_tile(tmp_path / "corrupt_header.fits", 2)
    raw = bytearray(bad.read_bytes())
    raw[80 * 3:80 * 8] = np.random.default_rng(7).integers(0, 256, 80 * 5, dtype=np.uint8).tobytes()
    bad.write_bytes(bytes(raw))
    return good_tiles(tmp_path) + [bad], bad, ("header",)


def case_header_without_end(tmp_path):
    bad = write_tile(tmp_path / "no_end_card.fits", 2)
    raw = bad.read_bytes()
    i = raw.index(b"END" + b" " * 77)
    bad.write_bytes(raw[:i] + b" " * 80 + raw[i + 80:])
    return good_tiles(tmp_path) + [bad], bad, ("header",)


def case_truncated(tmp_path):
    full = write_tile(tmp_path / "full.fits", 2)
    raw = full.read_bytes()
    full.unlink()
    bad = tmp_path / "truncated.fits"
    bad.write_bytes(raw[: len(raw) // 2])
    return good_tiles(tmp_path) + [bad], bad, ("truncated",)


def case_not_fits(tmp_path):
    bad = tmp_path / "notes.fits"
    bad.write_text("this is not a FITS file\n" * 200)
    return good_tiles(tmp_path) + [bad], bad, ("not a fits file",)


def case_directory(tmp_path):
    bad = tmp_path / "a_folder.fits"
    bad.mkdir()
    return good_tiles(tmp_path) + [bad], bad, ("directory",)


def case_4d(tmp_path):
    bad = write_tile(tmp_path / "four_d.fits", 2, np.ones((2, 3) + TILE_HW, np.float32))
    return good_tiles(tmp_path) + [bad], bad, ("dimensions",)


def case_two_channels(tmp_path):
    bad = write_tile(tmp_path / "two_channels.fits", 2, tile_data(2)[:2])
    return good_tiles(tmp_path) + [bad], bad, ("neither 3 (rgb) nor 1 (mono) channels",)


def case_mixed_channels(tmp_path):
    rgb = write_tile(tmp_path / "rgb.fits", 0)
    mono = write_tile(tmp_path / "mono.fits", 1, tile_data(1, channels=1))
    return [rgb, mono], mono, ("channel",)


def case_all_nan(tmp_path):
    bad = write_tile(tmp_path / "all_nan.fits", 2, np.full((3,) + TILE_HW, np.nan, np.float32))
    return good_tiles(tmp_path) + [bad], bad, ("nan",)


def case_alpha_all_zero(tmp_path):
    bad = write_tile(tmp_path / "alpha_zero.fits", 2, alpha=uint8_alpha(value=0))
    return good_tiles(tmp_path) + [bad], bad, ("alpha",)


def case_no_overlap(tmp_path):
    bad = write_tile(tmp_path / "far_away.fits", 2, wcs=tile_wcs(dra_deg=3.0))
    return good_tiles(tmp_path) + [bad], bad, ("overlap",)


def case_no_overlap_first(tmp_path):
    """The isolated tile is named even when it comes first."""
    bad = write_tile(tmp_path / "far_first.fits", 2, wcs=tile_wcs(dra_deg=-2.0))
    return [bad] + good_tiles(tmp_path), bad, ("overlap",)


def case_duplicate(tmp_path):
    tiles = good_tiles(tmp_path)
    bad = tmp_path / "copy_of_good_0.fits"
    bad.write_bytes(tiles[0].read_bytes())
    return tiles + [bad], bad, ("duplicate",)


BAD_TILE_CASES = {
    "no_wcs": case_no_wcs,
    "non_celestial_wcs": case_non_celestial_wcs,
    "singular_cd": case_singular_cd,
    "nan_crval": case_nan_crval,
    "corrupt_header": case_corrupt_header,
    "header_without_end": case_header_without_end,
    "truncated": case_truncated,
    "not_fits": case_not_fits,
    "directory": case_directory,
    "four_d": case_4d,
    "two_channels": case_two_channels,
    "mixed_channels": case_mixed_channels,
    "all_nan": case_all_nan,
    "alpha_all_zero": case_alpha_all_zero,
    "no_overlap": case_no_overlap,
    "no_overlap_first": case_no_overlap_first,
    "duplicate": case_duplicate,
}


@pytest.mark.parametrize("case", list(BAD_TILE_CASES))
def test_bad_tile_exit_2(case, tmp_path, capsys):
    tiles, bad, keywords = BAD_TILE_CASES[case](tmp_path)
    rc, out, err = run_cli(capsys, tiles, out_dir(tmp_path) / "out.zarr",
                           "--fits", str(tmp_path / "out" / "out.fits"))
    assert rc == 2, err
    if case == "duplicate":   # names the copy and the tile it copies
        assert_one_error(err, (bad.name, "good_0.fits"), keywords)
    else:                     # names the bad file, not a good one around it
        line = assert_one_error(err, (bad.name,), keywords)
        assert "good_" not in line, line
    assert out.strip() == "", out
    assert_nothing_written(tmp_path)


# --------------------------------------------------------------------------- skipped with a warning

@pytest.mark.parametrize("case", ["alpha_all_zero", "no_overlap", "duplicate"])
def test_skip_bad_tiles_goes_on(case, tmp_path, capsys):
    tiles, bad, keywords = BAD_TILE_CASES[case](tmp_path)
    output = out_dir(tmp_path) / "out.zarr"
    rc, out, err = run_cli(capsys, tiles, output, "--skip-bad-tiles", *FAST)
    assert rc == 0, err
    assert_warning(err, bad.name, ("skip",) + keywords[:1])
    assert output.is_dir()
    assert "from 2 tiles" in out, out


# --------------------------------------------------------------------------- warnings, exit 0

def case_alpha_other_shape(tmp_path):
    tiles = good_tiles(tmp_path, 1)
    odd = write_tile(tmp_path / "odd_alpha.fits", 1, alpha=uint8_alpha((TILE_HW[0] // 2, TILE_HW[1])))
    return tiles + [odd], odd, ("alpha", "ignored")


def case_negative_frames(tmp_path):
    tiles = good_tiles(tmp_path, 1)
    neg = write_tile(tmp_path / "neg_frames.fits", 1, alpha=uint8_alpha(), nframes=-3)
    return tiles + [neg], neg, ("NRAWPROC", "-3", "1 frame")


def case_text_frames(tmp_path):
    tiles = good_tiles(tmp_path, 1)
    txt = write_tile(tmp_path / "text_frames.fits", 1, alpha=uint8_alpha(), nframes="many")
    return tiles + [txt], txt, ("NRAWPROC", "many", "1 frame")


def case_bad_first_frame_key(tmp_path):
    """An invalid key before a valid one: ZeMosaic takes the next key (here NRAWPROC = 10)."""
    tiles = good_tiles(tmp_path, 1)
    hdr = fits.Header()
    hdr["HIERARCH MT_NFRAMES"] = -1    # ZeMosaic's key is longer than 8 characters
    two = write_tile(tmp_path / "bad_first_key.fits", 1, alpha=uint8_alpha(), header=hdr)
    return tiles + [two], two, ("MT_NFRAMES", "NRAWPROC")


WARNING_CASES = {
    "alpha_other_shape": case_alpha_other_shape,
    "negative_frame_count": case_negative_frames,
    "non_numeric_frame_count": case_text_frames,
    "invalid_first_frame_key": case_bad_first_frame_key,
}


@pytest.mark.parametrize("case", list(WARNING_CASES))
def test_warning_run_goes_on(case, tmp_path, capsys):
    tiles, tile, keywords = WARNING_CASES[case](tmp_path)
    output = out_dir(tmp_path) / "out.zarr"
    rc, out, err = run_cli(capsys, tiles, output, *FAST)
    assert rc == 0, err
    assert_warning(err, tile.name, keywords)
    assert output.is_dir()
    assert "from 2 tiles" in out, out


def test_frame_count_fallback_values(tmp_path):
    """What the warnings promise: the next valid key, else 1 frame (spec §0.3)."""
    from zemosaic_ooc.store.tiles import frame_count
    hdr = fits.Header()
    hdr["HIERARCH MT_NFRAMES"] = -1
    hdr["NRAWPROC"] = 10
    assert frame_count(hdr) == 10.0
    hdr["NRAWPROC"] = "many"
    assert frame_count(hdr) == 1.0


# --------------------------------------------------------------------------- input list and output

def test_empty_input_list(tmp_path, capsys):
    rc, out, err = run_cli(capsys, [], out_dir(tmp_path) / "out.zarr", *FAST)
    assert rc == 2
    assert_one_error(err, (), ("no input",))
    assert_nothing_written(tmp_path)


@pytest.mark.parametrize("below", ["out.zarr", "sub/out.zarr"])
def test_output_parent_is_a_file(below, tmp_path, capsys):
    """Not writable, as root too: a regular file where the output's folder should be."""
    blocker = tmp_path / "blocker.txt"
    blocker.write_text("a regular file where the output folder should be\n")
    rc, out, err = run_cli(capsys, good_tiles(tmp_path), blocker / below, *FAST)
    assert rc == 2, err
    assert_one_error(err, (blocker.name,), ("not a folder", "not a directory"))
    assert blocker.read_text().startswith("a regular file")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["blocker.txt", "good_0.fits", "good_1.fits"]


def test_output_is_an_existing_file(tmp_path, capsys):
    """``-o`` naming an existing regular file: refused, the file left as it was."""
    output = out_dir(tmp_path) / "out.zarr"
    output.write_text("not a store\n")
    rc, out, err = run_cli(capsys, good_tiles(tmp_path), output, *FAST)
    assert rc == 2, err
    assert_one_error(err, (output.name,), ("not a folder", "not a directory", "exists"))
    assert output.read_text() == "not a store\n"
    assert sorted(p.name for p in output.parent.iterdir()) == ["out.zarr"]


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() == 0,
                    reason="root writes into read-only folders")
def test_output_folder_read_only(tmp_path, capsys):
    folder = out_dir(tmp_path)
    folder.chmod(0o500)
    try:
        rc, out, err = run_cli(capsys, good_tiles(tmp_path), folder / "out.zarr", *FAST)
    finally:
        folder.chmod(0o700)
    assert rc == 2, err
    assert_one_error(err, ("out.zarr",), ("not writable",))
    assert_nothing_written(tmp_path)


def test_existing_store_with_other_options_is_refused_and_unchanged(tmp_path, capsys):
    tiles = good_tiles(tmp_path)
    output = out_dir(tmp_path) / "out.zarr"
    rc, out, err = run_cli(capsys, tiles, output, *FAST)
    assert rc == 0, err
    before = checksum_tree(tmp_path / "out")
    assert before, "the first run wrote nothing"
    rc, out, err = run_cli(capsys, tiles, output, *FAST, "--option", "intertile_photometric_match=false",
                           "--block-size", "64")
    assert rc == 2, err
    line = assert_one_error(err, ("out.zarr",), ("exists",))
    assert "--overwrite" in line, f"the message does not say how to proceed: {line}"
    assert checksum_tree(tmp_path / "out") == before, "the existing store was modified"


def test_bad_grid_header_file(tmp_path, capsys):
    bad = tmp_path / "grid.txt"
    bad.write_text("not a FITS header\n" * 100)
    rc, out, err = run_cli(capsys, good_tiles(tmp_path), out_dir(tmp_path) / "out.zarr",
                           "--grid", str(bad), *FAST)
    assert rc == 2, err
    assert_one_error(err, (bad.name,), ("grid",))
    assert_nothing_written(tmp_path)


# --------------------------------------------------------------------------- the overlap rule itself

def _footprints(wcss, shape_hw=TILE_HW):
    from zemosaic_ooc.store.tiles import sky_footprint
    return [sky_footprint(w, shape_hw) for w in wcss]


def _wcs_at(ra: float, dec: float, rot_deg: float = 0.0, shape_hw=TILE_HW) -> WCS:
    h, w = shape_hw
    wcs = WCS(naxis=2)
    wcs.wcs.ctype = ["RA---TAN", "DEC--TAN"]
    wcs.wcs.crval = [ra, dec]
    wcs.wcs.crpix = [(w + 1) / 2.0, (h + 1) / 2.0]
    c, s = np.cos(np.radians(rot_deg)), np.sin(np.radians(rot_deg))
    wcs.wcs.cd = np.array([[-c, s], [s, c]]) * SCALE_DEG
    return wcs


def test_isolated_tiles_rule():
    from zemosaic_ooc.store.tiles import isolated_tiles
    cosd = np.cos(np.radians(20.0))
    px = SCALE_DEG
    step_ra, step_dec = 36 * px / cosd, 32 * px
    grid = [_wcs_at(10 + i * step_ra, 20 + j * step_dec) for j in range(2) for i in range(2)]
    assert isolated_tiles(_footprints(grid)) == []
    # rotated diagonal neighbours: sharing a 2 x 2 px corner overlaps, a 3 px gap does not
    first = _wcs_at(10, 20, 30)
    cx, cy = (TILE_HW[1] - 1) / 2.0, (TILE_HW[0] - 1) / 2.0
    for (dx, dy), expected in (((70, 62), []), ((75, 67), [1])):
        ra, dec = first.all_pix2world([[cx + dx, cy + dy]], 0)[0]
        pair = [first, _wcs_at(ra, dec, 30)]
        assert [k for k, _ in isolated_tiles(_footprints(pair))] == expected, (dx, dy)
    # a 10 px gap: both are isolated, the first is kept and the second named
    gap = [_wcs_at(10, 20), _wcs_at(10 + 82 * px / cosd, 20)]
    flagged = isolated_tiles(_footprints(gap))
    assert [k for k, _ in flagged] == [1] and "overlaps no other" in flagged[0][1]
    # across RA = 0 and near the pole
    wrap = [_wcs_at(359.995, 0.0), _wcs_at(0.004, 0.0)]
    assert isolated_tiles(_footprints(wrap)) == []
    pole = [_wcs_at(0.0, 89.99), _wcs_at(180.0, 89.995)]
    assert isolated_tiles(_footprints(pole)) == []
    # one far tile among three is named, the others are not
    three = grid[:2] + [_wcs_at(40.0, -10.0)]
    assert [k for k, _ in isolated_tiles(_footprints(three))] == [2]
    # a single tile is never isolated
    assert isolated_tiles(_footprints(grid[:1])) == []
