"""Pixel mapping through control grids against astropy's full transform (SIP included)."""
from __future__ import annotations

import numpy as np
import pytest
from astropy.io import fits

from zemosaic_ooc.phase5.grid import compute_output_grid, reproject_box
from zemosaic_ooc.phase5.mapping import TileGeometry, crop_margins, map_region

from conftest import require_fixtures


def _geometries(fixture_dir):
    geoms = []
    for index, path in enumerate(sorted(fixture_dir.glob("master_tile_*.fits"))):
        header = fits.getheader(path)
        shape = (header["NAXIS2"], header["NAXIS1"])
        geoms.append(TileGeometry(index, header.tostring(), shape, crop_margins(shape, True, 3.0)))
    return geoms


@pytest.mark.parametrize("step", [16, 32])
def test_control_grid_mapping_matches_all_world2pix_below_1e_4_px(step):
    fixture_dir = require_fixtures()[0]
    for fx in require_fixtures():
        geoms = _geometries(fx)
        out_wcs, shape = compute_output_grid(geoms)
        for geom in geoms:
            box = reproject_box(geom, out_wcs, shape)
            uu, vv = map_region(geom, out_wcs, box, step=step)
            ys, xs = np.mgrid[box[0]:box[1], box[2]:box[3]].astype(np.float64)
            sky = out_wcs.all_pix2world(xs.ravel(), ys.ravel(), 0)
            tile_wcs = geom.new_uncropped_wcs()
            assert tile_wcs.sip is not None or "SIP" not in geom.header_text
            eu, ev = tile_wcs.all_world2pix(sky[0], sky[1], 0, tolerance=1e-10, maxiter=200)
            eu = eu.reshape(uu.shape) - geom.crop_hw[1]
            ev = ev.reshape(vv.shape) - geom.crop_hw[0]
            inside = (eu > -2) & (eu < geom.cropped_hw[1] + 1) & (ev > -2) & (ev < geom.cropped_hw[0] + 1)
            error = np.maximum(np.abs(uu - eu), np.abs(vv - ev))[inside]
            assert error.max() < 1e-4, (fx.name, geom.index, error.max())
    assert fixture_dir is not None


def test_lagrange_control_grid_reproduces_cubic_polynomials_exactly():
    from zemosaic_ooc.phase5.mapping import lagrange_matrix

    weights, n_nodes = lagrange_matrix(100, 16)
    nodes = (np.arange(n_nodes) - 1.0) * 16
    cubic = lambda x: 0.3 + 0.01 * x - 2e-4 * x**2 + 3e-6 * x**3  # noqa: E731
    assert np.allclose(weights @ cubic(nodes), cubic(np.arange(100.0)), atol=1e-9)
    assert np.allclose(weights.sum(axis=1), 1.0)


def _wcs(crval, *, frame="ICRS", sip=False, ctype=("RA---TAN", "DEC--TAN"), equinox=None):
    from astropy.wcs import WCS

    w = WCS(naxis=2)
    w.wcs.ctype = [c + ("-SIP" if sip else "") for c in ctype]
    w.wcs.crval = crval
    w.wcs.crpix = [500.5, 400.5]
    w.wcs.cd = [[-2.5e-4, 3e-6], [2e-6, 2.5e-4]]
    if frame:
        w.wcs.radesys = frame
    if equinox:
        w.wcs.equinox = equinox
    if sip:
        from astropy.wcs import Sip

        a = np.zeros((4, 4)); b = np.zeros((4, 4))
        a[2, 0], a[0, 2], a[1, 1], a[3, 0] = 2e-6, -1e-6, 3e-6, 1e-9
        b[0, 2], b[2, 0], b[1, 1], b[0, 3] = 1.5e-6, 1e-6, -2e-6, -1e-9
        w.sip = Sip(a, b, None, None, w.wcs.crpix)
    w.wcs.set()
    return w


def _same_as_astropy(w_from, w_to, a, b):
    import warnings

    from astropy.wcs.utils import pixel_to_pixel

    from zemosaic_ooc.phase5.mapping import _pixel_to_pixel

    with warnings.catch_warnings(), np.errstate(all="ignore"):
        warnings.simplefilter("ignore")
        want = [np.asarray(v, dtype=np.float64) for v in pixel_to_pixel(w_from, w_to, a, b)]
        got = [np.asarray(v, dtype=np.float64) for v in _pixel_to_pixel(w_from, w_to, a, b)]
    for g, w in zip(got, want):
        assert g.shape == w.shape
        assert np.array_equal(np.isnan(g), np.isnan(w))
        assert np.array_equal(g[~np.isnan(g)], w[~np.isnan(w)])   # the same numbers, bit for bit


@pytest.mark.parametrize("case", ["tan", "sip", "ra_wraps_at_zero", "near_pole", "far_outside"])
def test_direct_pixel_to_pixel_gives_astropys_numbers_bit_for_bit(case):
    rng = np.random.default_rng(7)
    crval = {"ra_wraps_at_zero": [0.05, 20.0], "near_pole": [120.0, 89.9]}.get(case, [150.0, 2.2])
    w_from = _wcs(crval, sip=case == "sip")
    w_to = _wcs([crval[0] + 0.08, crval[1] - 0.05], sip=case != "tan")
    spread = 40000.0 if case == "far_outside" else 1200.0
    a = rng.uniform(-spread, spread, (37, 41))
    b = rng.uniform(-spread, spread, (37, 41))
    a[0, :3] = np.nan
    _same_as_astropy(w_from, w_to, a, b)
    _same_as_astropy(w_to, w_from, a.ravel(), b.ravel())


def test_pixel_to_pixel_between_frames_or_axis_orders_goes_through_astropy():
    from zemosaic_ooc.phase5.mapping import _frame_key

    icrs, fk5 = _wcs([150.0, 2.2]), _wcs([150.05, 2.25], frame="FK5", equinox=2000.0)
    galactic = _wcs([236.0, 42.0], frame=None, ctype=("GLON-TAN", "GLAT-TAN"))
    lat_first = _wcs([2.2, 150.0], ctype=("DEC--TAN", "RA---TAN"))
    assert _frame_key(icrs) != _frame_key(fk5) and _frame_key(icrs) != _frame_key(galactic)
    assert _frame_key(lat_first) is None
    a, b = np.meshgrid(np.linspace(-50, 1050, 23), np.linspace(-50, 850, 19))
    for other in (fk5, galactic, lat_first):
        _same_as_astropy(icrs, other, a, b)       # astropy's own path: a frame transformation


def test_direct_pixel_to_pixel_matches_astropy_on_the_fixture_tiles():
    from zemosaic_ooc.phase5.mapping import _frame_key

    for fx in require_fixtures():
        geoms = _geometries(fx)
        out_wcs, shape = compute_output_grid(geoms)
        ys, xs = np.mgrid[-20:shape[0] + 20:37, -20:shape[1] + 20:41].astype(np.float64)
        for geom in geoms:
            tile_wcs = geom.new_uncropped_wcs()
            assert _frame_key(tile_wcs) is not None and _frame_key(tile_wcs) == _frame_key(out_wcs)
            _same_as_astropy(out_wcs, tile_wcs, xs, ys)
            _same_as_astropy(tile_wcs, out_wcs, xs, ys)


def test_a_threads_wcs_goes_to_later_threads_never_to_two_at_once():
    import threading

    from zemosaic_ooc.phase5 import mapping

    header_text = _wcs([150.0, 2.2]).to_header().tostring()
    key = f"test-pool-{id(header_text)}"
    built = []
    original = mapping._wcs_from_header_text

    def counting(text):
        built.append(text)
        return original(text)

    mapping._wcs_from_header_text = counting
    try:
        def run_threads(n):
            held, start = [], threading.Barrier(n)

            def use():
                wcs = mapping.thread_wcs(key, header_text)
                assert mapping.thread_wcs(key, header_text) is wcs      # one per thread, kept
                start.wait()                                           # all alive at once
                held.append(id(wcs))

            threads = [threading.Thread(target=use) for _ in range(n)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            assert len(set(held)) == n                                  # never shared
            return set(held)

        first = run_threads(3)
        assert len(built) == 3
        second = run_threads(3)                   # the ended threads' objects are reused
        assert len(built) == 3 and second == first
        run_threads(5)                            # more threads than objects: 2 more built
        assert len(built) == 5
    finally:
        mapping._wcs_from_header_text = original


def test_cell_taps_are_the_lagrange_taps_kept_once_per_module_and_read_only():
    from zemosaic_ooc.phase5.mapping import cell_taps, lagrange_taps

    taps = cell_taps(16, np)
    np.testing.assert_array_equal(taps, lagrange_taps(np.arange(16), 16))
    assert cell_taps(16, np) is taps and not taps.flags.writeable
    assert cell_taps(8, np).shape == (4, 8)
