"""`zemosaic-ooc report`: sections and images, the seam check, bounded memory, the CLI."""
from __future__ import annotations

import base64
import io
import json
import math
import os
import re
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from child_rss import VMHWM_FUNCTION

from conftest import require_fixtures

MiB = 2 ** 20
EXPECTED_IMAGES = {"preview_linked", "preview_unlinked", "coverage", "alpha", "tile_maps",
                   "block_map", "seam_map", "seam_chart", "stages"}


def _fixture(name: str) -> Path:
    for d in require_fixtures():
        if d.name == name:
            return d
    pytest.skip(f"fixture {name} not found")


@pytest.fixture(scope="module")
def fixture_store(tmp_path_factory) -> Path:
    """The default (normalized) run of the 2x2 fixture."""
    from zemosaic_ooc.options import Phase5Options
    from zemosaic_ooc.phase5.pipeline import run_pipeline
    tiles = sorted(_fixture("zemosaic_ref_2x2").glob("master_tile_*.fits"))
    out = tmp_path_factory.mktemp("report_run") / "out.zarr"
    run_pipeline(tiles, out, Phase5Options(block_size=128, gpu="off"))
    return out


@pytest.fixture(scope="module")
def fixture_report(fixture_store, tmp_path_factory):
    from zemosaic_ooc.report import build_report
    html = tmp_path_factory.mktemp("report_html") / "report.html"
    return build_report(fixture_store, html)


def _embedded_images(text: str) -> dict[str, tuple[tuple[int, int], bytes]]:
    out = {}
    for m in re.finditer(r'<img id="img-([\w-]+)"[^>]*width="(\d+)" height="(\d+)" '
                         r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', text):
        out[m.group(1)] = ((int(m.group(2)), int(m.group(3))), base64.b64decode(m.group(4)))
    return out


# ----------------------------------------------------------------------------- the report

def test_report_has_every_section(fixture_report):
    from zemosaic_ooc.report.build import SECTIONS
    text = fixture_report.html_path.read_text(encoding="utf-8")
    assert text.startswith("<!DOCTYPE html>") and text.rstrip().endswith("</html>")
    for key in ("preview", "coverage", "tiles", "blocks", "seams", "run"):
        assert key in SECTIONS
        assert f'<section id="{key}">' in text, key
    for needle in ("linked channels", "unlinked channels", "coverage", "alpha",
                   "inter-tile gain", "bg offset R", "two-pass gain",      # per-tile table
                   "backends", "replays after OOM",                         # block map
                   "boundary (a | b)", "0 of",                               # seam table
                   "options that differ from the defaults", "wall time per stage",
                   "peak RSS of the run", "versions"):
        assert needle in text, needle
    # self-contained: no external image or script references
    assert not re.search(r'src="(?!data:)', text)
    assert "block_size" in text            # a non-default option of this run is listed


def test_report_images_decode_with_expected_sizes(fixture_report):
    from PIL import Image
    res = fixture_report
    text = res.html_path.read_text(encoding="utf-8")
    embedded = _embedded_images(text)
    assert EXPECTED_IMAGES <= set(embedded), set(embedded)
    assert set(embedded) == set(res.images) == set(res.image_sizes)
    for name, ((w, h), data) in embedded.items():
        with Image.open(io.BytesIO(data)) as im:
            im.load()
            assert im.format == "PNG" and im.size == (w, h) == res.image_sizes[name], name
        beside = res.images[name]
        assert beside.parent == res.html_path.parent and beside.name == f"report_{name}.png"
        assert beside.read_bytes() == data
    # previews are the mosaic window at stride 1 (the fixture mosaic is 397 x 424 px)
    assert res.stride == 1 and res.preview_hw == (397, 424)
    assert res.image_sizes["preview_linked"] == (424, 397)
    assert res.image_sizes["preview_unlinked"] == (424, 397)


def test_seam_check_flags_none_on_the_normalized_fixture_run(fixture_report):
    res = fixture_report
    # 2x2 tiles: every tile's outline crosses its neighbours (>= 8 boundaries with samples)
    assert len(res.seams) >= 8
    long = [s for s in res.seams if s.n_points >= 100]
    assert len(long) >= 8
    assert res.flagged == [], [(s.name, s.rel_step) for s in res.flagged]
    for s in res.seams:
        assert all(abs(v) < res.rel_threshold for v in s.rel_step if math.isfinite(v)), s


def _offset_tile(store: Path, tile: int, fraction: float) -> list[float]:
    """Add ``fraction`` x (P99 - P1) per channel to the mosaic inside one tile's footprint."""
    import zarr
    from zemosaic_ooc.report.footprints import tile_footprints
    group = zarr.open_group(str(store), mode="r+")
    mosaic = group["mosaic"]
    y0, y1, x0, x1 = group.attrs["window"]
    window = mosaic[y0:y1, x0:x1]           # small fixture: direct numpy is fine here
    valid = window[np.isfinite(window).all(-1)]
    rng = np.percentile(valid, 99, axis=0) - np.percentile(valid, 1, axis=0)
    fp = [f for f in tile_footprints(dict(group.attrs)) if f.index == tile][0]
    by0, by1, bx0, bx1 = fp.box
    yy, xx = np.mgrid[by0:by1, bx0:bx1]
    inside = fp.contains(xx, yy).reshape(yy.shape)
    sub = mosaic[by0:by1, bx0:bx1]
    sub[inside] += (fraction * rng).astype(np.float32)
    mosaic[by0:by1, bx0:bx1] = sub
    return [float(v) for v in rng]


def test_seam_check_flags_a_tile_offset_by_5_percent(fixture_store, tmp_path):
    tile = 3
    from zemosaic_ooc.report import build_report
    store = tmp_path / "offset.zarr"
    shutil.copytree(fixture_store, store)
    _offset_tile(store, tile, 0.05)
    res = build_report(store, tmp_path / "offset.html")
    assert res.flagged, [(s.name, s.rel_step) for s in res.seams]
    # the flagged boundaries are the offset tile's own outline, with a step of about +5 %
    assert all(s.a == tile for s in res.flagged), [s.name for s in res.flagged]
    assert len(res.flagged) >= 2
    for s in res.flagged:
        assert all(0.035 < v < 0.065 for v in s.rel_step), (s.name, s.rel_step)
    text = res.html_path.read_text(encoding="utf-8")
    assert "FLAGGED" in text and f"{len(res.flagged)}</b> of {len(res.seams)}" in text


# ----------------------------------------------------------------------------- the CLI

def test_cli_report_default_path_max_side_and_errors(fixture_store, tmp_path, capsys):
    from PIL import Image
    from zemosaic_ooc.cli import main
    store = tmp_path / "copy.zarr"
    shutil.copytree(fixture_store, store)
    assert main(["report", str(store), "--max-side", "200"]) == 0
    out = capsys.readouterr().out
    assert "report written" in out and "0 flagged" in out
    html = tmp_path / "copy_report.html"                    # default: beside the store
    assert html.is_file()
    stride = math.ceil(424 / 200)                            # the fixture mosaic is 397 x 424
    expected = (len(range(0, 424, stride)), len(range(0, 397, stride)))
    for name in ("preview_linked", "preview_unlinked"):
        with Image.open(tmp_path / f"copy_report_{name}.png") as im:
            assert im.size == expected
    embedded = _embedded_images(html.read_text(encoding="utf-8"))
    assert embedded["preview_linked"][0] == expected
    # errors: one line, exit code 2
    assert main(["report", str(tmp_path / "missing.zarr"), "-o", str(tmp_path / "x.html")]) == 2
    err = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
    assert len(err) == 1 and err[0].startswith("zemosaic-ooc: error:") and "missing.zarr" in err[0]
    not_a_store = tmp_path / "empty.zarr"
    not_a_store.mkdir()
    assert main(["report", str(not_a_store)]) == 2
    assert main(["report", str(store), "--seam-threshold", "0"]) == 2


# ----------------------------------------------------------------------------- memory

def make_synthetic_store(path: Path, height: int, width: int, block: int, *, nx: int = 2,
                         ny: int = 2, overlap: float = 0.1, seed: int = 0) -> None:
    """A finished-looking store (arrays, plan with tile WCS, journal) without running Phase 5."""
    import zarr
    from astropy.wcs import WCS
    from zemosaic_ooc.store.journal import Journal

    def tan(crpix_x, crpix_y, nax1, nax2):
        w = WCS(naxis=2)
        w.wcs.ctype = ["RA---TAN", "DEC--TAN"]
        w.wcs.crval = [150.0, 35.0]
        w.wcs.cdelt = [-1.0 / 3600, 1.0 / 3600]
        w.wcs.crpix = [crpix_x, crpix_y]
        hdr = w.to_header()
        hdr["NAXIS"] = 2
        hdr["NAXIS1"] = nax1
        hdr["NAXIS2"] = nax2
        return hdr.tostring()

    out_hdr = tan(width / 2.0, height / 2.0, width, height)
    th = int(height / (ny - (ny - 1) * overlap))
    tw = int(width / (nx - (nx - 1) * overlap))
    tiles = []
    for j in range(ny):
        for i in range(nx):
            y0 = min(height - th, int(round(j * th * (1 - overlap))))
            x0 = min(width - tw, int(round(i * tw * (1 - overlap))))
            # tile pixel (u, v) = grid pixel (x0 + u, y0 + v)
            hdr = tan(width / 2.0 - x0, height / 2.0 - y0, tw, th)
            k = len(tiles)
            tiles.append({"index": k, "tile_id": f"tile:{k}", "header_text": hdr,
                          "shape_hw": [th, tw], "crop_hw": [0, 0], "box": [y0, y0 + th, x0, x0 + tw],
                          "union_bbox": [y0, y0 + th, x0, x0 + tw], "tau": 1.0, "gain": 1.0,
                          "offset": 0.0, "bg_offsets": [1.0 * k, -1.0 * k, 0.5 * k],
                          "two_pass_gain": 1.0, "bg_offsets_pass2": [0.0, 0.0, 0.0],
                          "empty_flag": False})
    group = zarr.open_group(str(path), mode="w")
    mosaic = group.create_array("mosaic", shape=(height, width, 3), dtype="float32",
                                chunks=(block, block, 3), fill_value=float("nan"))
    coverage = group.create_array("coverage", shape=(height, width), dtype="float32",
                                  chunks=(block, block), fill_value=0.0)
    alpha = group.create_array("alpha", shape=(height, width), dtype="uint8",
                               chunks=(block, block), fill_value=0)
    rng = np.random.default_rng(seed)
    xs = np.arange(width, dtype=np.float32)
    for r0 in range(0, height, block):
        r1 = min(height, r0 + block)
        ys = np.arange(r0, r1, dtype=np.float32)[:, None]
        cov = np.zeros((r1 - r0, width), dtype=np.float32)
        for t in tiles:
            y0, y1, x0, x1 = t["box"]
            cov[max(0, y0 - r0):max(0, y1 - r0), x0:x1] += 1.0
        sky = 400.0 + 0.01 * xs[None, :] + 0.02 * ys + 30.0 * np.sin(xs[None, :] / 150.0) * np.cos(ys / 170.0)
        slab = np.stack([sky * f for f in (1.0, 0.9, 0.8)], axis=-1).astype(np.float32)
        slab += rng.normal(0, 2.0, slab.shape).astype(np.float32)
        slab[cov == 0] = np.nan
        mosaic[r0:r1] = slab
        coverage[r0:r1] = cov
        alpha[r0:r1] = np.where(cov > 0, 255, 0).astype(np.uint8)
    group.attrs.update({
        "shape_hw": [height, width], "block": block, "window": [0, height, 0, width],
        "output_wcs_header": out_hdr, "autocrop_fired": False,
        "options": {"memory_budget": 32 * MiB, "block_size": block},
        "plan": {"tiles": tiles, "calibration": {"status": "applied", "gains": [1.0] * len(tiles),
                                                 "offsets": [0.0] * len(tiles)}},
        "two_pass": {"enabled": True, "ran": True, "gains": [1.0] * len(tiles), "fraction_pass2": 1.0},
        "patchwork": {"enabled": False, "ran": False},
        "summary": {"stages": [["ingest", 1.0], ["pass1", 2.0]], "peak_rss_bytes": 200 * MiB,
                    "valid_fraction": 1.0},
        "steps_run": ["coadd"], "steps_skipped": [],
    })
    journal = Journal(path / "journal.sqlite")
    for r0 in range(0, height, block):
        for c0 in range(0, width, block):
            box = f"{r0}:{min(height, r0 + block)},{c0}:{min(width, c0 + block)}"
            replay = (r0 // block + c0 // block) % 17 == 0
            journal.block_done("pass1", box, "cpu" if replay else "cupy", 0.01, replay)
    journal.stage_done("run", 3.0)
    journal.close()


CHILD = VMHWM_FUNCTION + textwrap.dedent("""
    import json, sys
    import numpy, zarr, astropy.wcs, matplotlib, PIL.Image
    from zemosaic_ooc.report import build_report
    import zemosaic_ooc.report.build, zemosaic_ooc.report.figures
    import matplotlib.pyplot
    baseline = vmhwm()
    res = build_report(sys.argv[1], sys.argv[2])
    print("@@RESULT " + json.dumps({"peak": vmhwm(), "baseline": baseline,
                                    "seams": len(res.seams), "flagged": len(res.flagged),
                                    "stride": res.stride, "images": len(res.images)}))
""")


@pytest.mark.skipif(not Path("/proc/self/status").is_file(), reason="needs /proc (VmHWM)")
def test_report_peak_rss_within_budget_plus_300mib(tmp_path):
    """Child VmHWM while reporting on a mosaic whose arrays are >= 4x a 32 MiB budget."""
    import zarr
    budget, slack = 32 * MiB, 300 * MiB
    store = tmp_path / "big.zarr"
    make_synthetic_store(store, 3000, 3000, 128)
    group = zarr.open_group(str(store), mode="r")
    array_bytes = sum(int(group[n].nbytes) for n in ("mosaic", "coverage", "alpha"))
    assert array_bytes >= 4 * budget
    import zemosaic_ooc
    env = dict(os.environ)
    root = str(Path(zemosaic_ooc.__file__).resolve().parents[1])
    env["PYTHONPATH"] = os.pathsep.join([root] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
    env["MPLBACKEND"] = "Agg"
    proc = subprocess.run([sys.executable, "-c", CHILD, str(store), str(tmp_path / "big.html")],
                          capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    line = [ln for ln in proc.stdout.splitlines() if ln.startswith("@@RESULT ")][-1]
    res = json.loads(line[len("@@RESULT "):])
    report = (f"arrays {array_bytes / MiB:.0f} MiB = {array_bytes / budget:.1f}x budget; child peak "
              f"{res['peak'] / MiB:.0f} MiB (after imports {res['baseline'] / MiB:.0f} MiB), limit "
              f"{(budget + slack) / MiB:.0f} MiB; {res}")
    print(report)
    assert res["stride"] == 3 and res["images"] >= len(EXPECTED_IMAGES)
    assert res["seams"] >= 8 and res["flagged"] == 0, report
    assert res["peak"] <= budget + slack, report
