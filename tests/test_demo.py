"""Synthetic master tiles (zemosaic_ooc.demo): ZeMosaic's on-disk format and the injected truth."""
from __future__ import annotations

import time
import warnings

import numpy as np
import pytest
from astropy.io import fits
from astropy.wcs import WCS, FITSFixedWarning

from zemosaic_ooc.demo import DemoSky, demo_summary, load_truth, make_alpha, make_demo_tiles


def _wcs(header) -> WCS:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FITSFixedWarning)
        return WCS(header, naxis=2)


@pytest.fixture(scope="module")
def small_set(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo")
    paths = make_demo_tiles(out, nx=3, ny=2, tile_hw=(160, 176), seed=7, noise=False)
    return out, paths


def test_default_set_is_fast_and_zemosaic_shaped(tmp_path):
    t0 = time.perf_counter()
    paths = make_demo_tiles(tmp_path)
    elapsed = time.perf_counter() - t0
    assert elapsed < 5.0, f"2x2 demo took {elapsed:.1f} s"
    assert [p.name for p in paths] == [f"master_tile_{i:03d}.fits" for i in range(4)]
    assert (tmp_path / "truth.json").is_file()
    frames = []
    for i, p in enumerate(paths):
        with fits.open(p) as hl:
            assert [h.name for h in hl] == ["PRIMARY", "ALPHA"]
            hdr = hl[0].header
            data = hl[0].data
            alpha = hl["ALPHA"].data
            assert data.dtype.kind == "f" and data.dtype.itemsize == 4
            assert data.shape == (3, 512, 544)
            assert alpha.dtype == np.uint8 and alpha.shape == (512, 544)
            assert hdr["WCSAXES"] == 2 and hdr["NAXIS"] == 3 and hdr["NAXIS3"] == 3
            assert "CD1_1" in hdr and "PC1_1" not in hdr
            assert hdr["ZMT_ID"] == i
            assert hdr["MT_NFRAMES"] == hdr["ZMT_NALGN"] <= hdr["ZMT_NRAW"]
            frames.append(hdr["MT_NFRAMES"])
            assert np.all(data[:, alpha == 0] == 0)
            assert np.all(np.isfinite(data))
            assert data[:, alpha > 0].min() > 200           # sky level + nebula
            w = _wcs(hdr)
            assert w.celestial.naxis == 2 and w.wcs.ctype[0].startswith("RA---TAN")
    assert len(set(frames)) > 1


def test_truth_and_headers_agree(small_set):
    out, paths = small_set
    truth = load_truth(out)
    assert truth["files"] == [p.name for p in paths]
    assert len(truth["gains"]) == len(paths) == 6
    assert any(truth["sip"]) and not all(truth["sip"])        # a mixed set by default
    for p, t in zip(paths, truth["tiles"]):
        hdr = fits.getheader(p)
        assert hdr["MT_NFRAMES"] == t["mt_nframes"]
        assert hdr["CTYPE1"].endswith("-SIP") == t["sip"] == ("A_2_0" in hdr)
        assert hdr["CTYPE2"].endswith("-SIP") == t["sip"]
        gains = np.array(t["injected"]["gain_rgb"])
        offsets = np.array(t["injected"]["offset_rgb_adu"])
        assert np.all(np.abs(gains - 1) <= 0.1) and np.all(np.abs(offsets) <= 30)
        assert abs(t["rotation_deg"]) < 1.0
        rot = np.degrees(np.arctan2(hdr["CD1_2"], -hdr["CD1_1"]))
        assert rot == pytest.approx(t["rotation_deg"], abs=1e-9)
        assert np.hypot(hdr["CD1_1"], hdr["CD1_2"]) * 3600 == pytest.approx(2.4)


def test_sip_correction_about_one_pixel(small_set):
    out, paths = small_set
    truth = load_truth(out)
    for p, t in zip(paths, truth["tiles"]):
        w = _wcs(fits.getheader(p))
        if not t["sip"]:
            assert w.sip is None
            continue
        ys, xs = np.mgrid[0:160:4, 0:176:4]
        pix = np.c_[xs.ravel(), ys.ravel()].astype(float)
        linear = w.wcs_world2pix(w.all_pix2world(pix, 0), 0)      # SIP removed
        disp = np.hypot(*(linear - pix).T).max()
        assert 0.5 < disp < 1.2
        assert disp == pytest.approx(t["sip_max_displacement_px"], abs=0.05)


def test_tiles_see_one_sky_through_their_wcs(small_set):
    """Noise-free tiles: (data - offset) / gain is the one sky at each pixel's sky position."""
    out, paths = small_set
    truth = load_truth(out)
    sky = DemoSky.from_truth(truth)
    for p, t in zip(paths, truth["tiles"]):
        with fits.open(p) as hl:
            data = hl[0].data.astype(np.float64)
            alpha = hl["ALPHA"].data
            w = _wcs(hl[0].header)
        g = np.array(t["injected"]["gain_rgb"])[:, None]
        o = np.array(t["injected"]["offset_rgb_adu"])[:, None]
        ys, xs = np.nonzero(alpha > 0)
        pick = slice(None, None, 7)
        ys, xs = ys[pick], xs[pick]
        ra, dec = w.all_pix2world(xs, ys, 0)
        u, v = sky.ref_wcs.wcs_world2pix(ra, dec, 0)
        expect = sky.evaluate(u, v)
        got = (data[:, ys, xs] - o) / g
        np.testing.assert_allclose(got, expect, rtol=2e-6, atol=2e-3)
    # neighbours really overlap (about 30 % of the side), and show the same stars
    w0 = _wcs(fits.getheader(paths[0]))
    w1 = _wcs(fits.getheader(paths[1]))
    ys, xs = np.mgrid[0:160:4, 0:176:4]
    x1, y1 = w1.all_world2pix(*w0.all_pix2world(xs.ravel(), ys.ravel(), 0), 0)
    inside = (x1 >= 0) & (x1 <= 175) & (y1 >= 0) & (y1 <= 159)
    assert 0.2 < inside.mean() < 0.4


def test_alpha_soft_edges():
    a = make_alpha((60, 70), (1, 5, 2, 3), 8)
    assert a.dtype == np.uint8
    assert (a[0] == 0).all() and (a[-5:] == 0).all() and (a[:, :2] == 0).all()
    assert (a[:, -3:] == 0).all()
    # the fixture's ramp over 8 px: smoothstep, rounded
    np.testing.assert_array_equal(a[30, 2:11], [11, 40, 81, 128, 174, 215, 244, 255, 255])
    assert a[30, 35] == 255


def test_alpha_band_and_ramp_in_tiles(small_set):
    out, paths = small_set
    truth = load_truth(out)
    for p, t in zip(paths, truth["tiles"]):
        a = fits.getdata(p, "ALPHA")
        bt, bb, bl, br = t["alpha_zero_band_px_top_bottom_left_right"]
        ramp = t["alpha_ramp_px"]
        assert 1 <= min(bt, bb, bl, br) and max(bt, bb, bl, br) <= 5 and 8 <= ramp <= 16
        mid = a.shape[0] // 2
        row = a[mid]
        assert (row[:bl] == 0).all() and row[bl] > 0
        assert row[bl + ramp - 1] == 255 and row[bl + ramp - 2] < 255
        assert np.all(np.diff(row[: bl + ramp].astype(int)) >= 0)


def test_noise_and_determinism(tmp_path):
    kw = dict(nx=2, ny=1, tile_hw=(96, 112), seed=11)
    a = make_demo_tiles(tmp_path / "a", **kw)
    b = make_demo_tiles(tmp_path / "b", **kw)
    c = make_demo_tiles(tmp_path / "c", **{**kw, "noise": False})
    for pa, pb in zip(a, b):
        np.testing.assert_array_equal(fits.getdata(pa), fits.getdata(pb))
    assert load_truth(tmp_path / "a") == load_truth(tmp_path / "b")
    truth = load_truth(tmp_path / "a")
    for pa, pc, t in zip(a, c, truth["tiles"]):
        alpha = fits.getdata(pa, "ALPHA")
        diff = (fits.getdata(pa).astype(float) - fits.getdata(pc).astype(float))[:, alpha > 0]
        assert diff.std() == pytest.approx(t["injected"]["noise_sigma_adu"], rel=0.1)
    other = make_demo_tiles(tmp_path / "d", **{**kw, "seed": 12})
    assert not np.array_equal(fits.getdata(a[0]), fits.getdata(other[0]))


def test_sip_switch(tmp_path):
    make_demo_tiles(tmp_path / "plain", nx=2, ny=1, tile_hw=(64, 64), sip=False)
    assert not any(load_truth(tmp_path / "plain")["sip"])
    assert fits.getheader(tmp_path / "plain" / "master_tile_000.fits")["CTYPE1"] == "RA---TAN"
    make_demo_tiles(tmp_path / "all", nx=2, ny=1, tile_hw=(64, 64), sip=[True, True])
    assert load_truth(tmp_path / "all")["sip"] == [True, True]
    with pytest.raises(ValueError):
        make_demo_tiles(tmp_path / "bad", nx=2, ny=1, tile_hw=(64, 64), sip=[True])


def test_demo_summary(small_set):
    out, paths = small_set
    text = demo_summary(paths)
    assert "6 master tiles" in text
    for p in paths:
        assert p.name in text
    assert "truth.json" in text
