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
