"""tools/compare.py: parity metrics equal a direct numpy computation; inputs and exit codes."""
from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import numpy as np
import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]


def _load_compare():
    spec = importlib.util.spec_from_file_location("zemosaic_compare_tool",
                                                  REPO_ROOT / "tools" / "compare.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


cmp = _load_compare()


def _direct(a: np.ndarray, b: np.ndarray) -> dict:
    """The metrics computed on whole arrays with numpy (as tests/golden.py does)."""
    va, vb = np.isfinite(a).all(-1), np.isfinite(b).all(-1)
    both = va & vb
    out = {"median_ratio": [], "rms": [], "max": [], "p1": [], "p99": [],
           "mask": float(np.mean(va == vb)), "both": int(both.sum())}
    for c in range(3):
        x = a[..., c][both].astype(np.float64)
        y = b[..., c][both].astype(np.float64)
        p1, p99 = np.percentile(y, [1, 99])
        out["median_ratio"].append(float(np.median(x) / np.median(y)))
        out["rms"].append(float(np.sqrt(np.mean((x - y) ** 2)) / (p99 - p1)))
        out["max"].append(float(np.max(np.abs(x - y)) / (p99 - p1)))
        out["p1"].append(float(p1))
        out["p99"].append(float(p99))
    return out


def _pair(seed: int = 1, h: int = 203, w: int = 157):
    rng = np.random.default_rng(seed)
    b = (rng.normal(300.0, 40.0, (h, w, 3)) + np.array([0.0, -20.0, 15.0])).astype(np.float32)
    b[:10, :, :] = np.nan                        # invalid band in B
    b[50:60, 20:40, 1] = np.nan                  # one channel only: the pixel is invalid
    a = (b * np.float32(1.01) + rng.normal(0.0, 2.0, b.shape).astype(np.float32)).astype(np.float32)
    a[:10, :5, :] = 5.0                          # valid in A where B is not
    a[-7:, :, :] = np.nan                        # invalid band in A
    return a, b


def _write_store(path: Path, mosaic: np.ndarray, chunk: int = 32, pad: int = 0) -> Path:
    """A minimal mosaic store; with ``pad`` the grid is larger and ``window`` selects ``mosaic``."""
    import zarr
    h, w = mosaic.shape[:2]
    g = zarr.open_group(str(path), mode="w")
    arr = g.create_array("mosaic", shape=(h + 2 * pad, w + 2 * pad, 3), dtype="float32",
                         chunks=(chunk, chunk, 3), fill_value=float("nan"))
    arr[pad:pad + h, pad:pad + w] = mosaic
    g.attrs["window"] = [pad, pad + h, pad, pad + w]
    return path


def _write_fits(path: Path, mosaic: np.ndarray, layout: str = "chw") -> Path:
    from astropy.io import fits
    data = np.moveaxis(mosaic, -1, 0) if layout == "chw" else mosaic
    fits.PrimaryHDU(data=np.ascontiguousarray(data)).writeto(path, overwrite=True)
    return path


def _assert_equal_metrics(res, ref: dict) -> None:
    assert res.valid_both == ref["both"]
    assert res.mask_agreement == pytest.approx(ref["mask"], rel=0, abs=1e-15)
    # percentiles and medians are exact (the out-of-core helper equals np.percentile)
    assert res.p1_b == pytest.approx(ref["p1"], rel=1e-12)
    assert res.p99_b == pytest.approx(ref["p99"], rel=1e-12)
    assert res.median_ratio == pytest.approx(ref["median_ratio"], rel=1e-12)
    # sums: the same numbers, summed in another order
    assert res.rms_over_range == pytest.approx(ref["rms"], rel=1e-9)
    assert res.max_over_range == pytest.approx(ref["max"], rel=1e-12)


@pytest.mark.parametrize("slab_bytes, cache_bytes", [(32 * 2**20, 256 * 2**20),   # one slab, cached
                                                     (20_000, 0)])                 # many slabs, no cache
def test_metrics_equal_numpy_store_vs_fits(tmp_path, slab_bytes, cache_bytes):
    a, b = _pair()
    sa = _write_store(tmp_path / "a.zarr", a, pad=5)
    fb = _write_fits(tmp_path / "b.fits", b)
    res = cmp.compare(sa, fb, slab_bytes=slab_bytes, cache_bytes=cache_bytes)
    assert res.shape_hw == a.shape[:2]
    _assert_equal_metrics(res, _direct(a, b))
    assert res.valid_a == int(np.isfinite(a).all(-1).sum())
    assert res.valid_b == int(np.isfinite(b).all(-1).sum())


def test_metrics_equal_numpy_between_stores_and_layouts(tmp_path):
    a, b = _pair(seed=5, h=64, w=90)
    ref = _direct(a, b)
    stores = cmp.compare(_write_store(tmp_path / "a.zarr", a, chunk=16),
                         _write_store(tmp_path / "b.zarr", b, chunk=24), slab_bytes=4096,
                         cache_bytes=0)
    _assert_equal_metrics(stores, ref)
    hwc = cmp.compare(_write_fits(tmp_path / "a_hwc.fits", a, layout="hwc"),
                      _write_fits(tmp_path / "b.fits", b))
    _assert_equal_metrics(hwc, ref)


def test_mono_fits_and_identical_inputs(tmp_path):
    from astropy.io import fits
    rng = np.random.default_rng(3)
    plane = rng.normal(100.0, 5.0, (40, 50)).astype(np.float32)
    fits.PrimaryHDU(data=plane).writeto(tmp_path / "mono.fits")
    res = cmp.compare(tmp_path / "mono.fits", tmp_path / "mono.fits")
    assert res.median_ratio == [1.0, 1.0, 1.0]
    assert res.rms_over_range == [0.0, 0.0, 0.0] and res.max_over_range == [0.0, 0.0, 0.0]
    assert res.mask_agreement == 1.0 and res.valid_both == 40 * 50


def test_cli_prints_metrics_and_writes_difference_png(tmp_path, capsys):
    from PIL import Image
    a, b = _pair(seed=7, h=80, w=120)
    sa = _write_store(tmp_path / "a.zarr", a)
    fb = _write_fits(tmp_path / "b.fits", b)
    png = tmp_path / "out" / "diff.png"
    assert cmp.main([str(sa), str(fb), "-o", str(png), "--max-side", "64"]) == 0
    out = capsys.readouterr().out
    for needle in ("median ratio", "RMS/(P99-P1)", "max/(P99-P1)", "mask agreement", str(png)):
        assert needle in out, needle
    with Image.open(png) as im:
        im.load()
        assert im.format == "PNG" and im.size[0] > 0
    assert cmp.main([str(sa), str(fb), "--no-png", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    ref = _direct(a, b)
    assert data["rms_over_range"] == pytest.approx(ref["rms"], rel=1e-9)
    assert data["mask_agreement"] == pytest.approx(ref["mask"])
    # --max-rms: exit 1 above it, 0 below it
    assert cmp.main([str(sa), str(fb), "--no-png", "--max-rms", "1e-9"]) == 1
    assert cmp.main([str(sa), str(fb), "--no-png", "--max-rms", "1.0"]) == 0


def test_cli_bad_input_exits_2(tmp_path, capsys):
    a, _ = _pair(h=30, w=40)
    sa = _write_store(tmp_path / "a.zarr", a)
    other = _write_fits(tmp_path / "other.fits", a[:20])
    assert cmp.main([str(sa), str(other), "--no-png"]) == 2
    assert "differ in size" in capsys.readouterr().err
    assert cmp.main([str(sa), str(tmp_path / "missing.fits"), "--no-png"]) == 2
    assert "missing.fits" in capsys.readouterr().err
