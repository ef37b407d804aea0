"""Independent oracle: with inter-tile calibration and crop off, the first pass is
reproject_and_coadd(..., match_background=True) with the same weights (spec §5.7)."""
from __future__ import annotations

import numpy as np
from astropy.io import fits
from astropy.wcs import WCS

from zemosaic_ooc.options import Phase5Options
from zemosaic_ooc.phase5.pipeline import run_pipeline

from conftest import require_fixtures
from golden import read_store_window


def _tiles_without_alpha(fixture_dir, tmp_path):
    """The fixture tiles with ALPHA folded into the data as NaN (so the finite mask is the weight)."""
    paths = []
    for path in sorted(fixture_dir.glob("master_tile_*.fits")):
        with fits.open(path) as hdul:
            data = hdul[0].data.astype(np.float32)
            header = hdul[0].header.copy()
            if "ALPHA" in hdul:
                alpha = hdul["ALPHA"].data
                data[:, alpha <= 127] = np.nan
        out = tmp_path / path.name
        fits.PrimaryHDU(data=data, header=header).writeto(out)
        paths.append(out)
    return paths


def test_first_pass_without_calibration_equals_reproject_and_coadd(tmp_path):
    from reproject import reproject_interp
    from reproject.mosaicking import reproject_and_coadd

    fixture_dir = [d for d in require_fixtures() if d.name == "zemosaic_ref_2x2"] or require_fixtures()
    fixture_dir = fixture_dir[0]
    paths = _tiles_without_alpha(fixture_dir, tmp_path)
    opts = Phase5Options(intertile_photometric_match=False, apply_master_tile_crop=False,
                         enable_tile_weighting=False, two_pass_coverage_renorm=False,
                         patchwork_suppressor_enabled=False, block_size=128)
    run_pipeline(paths, tmp_path / "out.zarr", opts)
    ours, coverage, _, attrs = read_store_window(tmp_path / "out.zarr")
    header = fits.Header.fromstring(attrs["output_wcs_header"])
    height, width = attrs["shape_hw"]
    out_wcs = WCS(header)

    planes, footprint = [], None
    for c in range(3):
        inputs, weights = [], []
        for path in paths:
            data = fits.getdata(path)
            wcs = WCS(fits.getheader(path), naxis=2)
            inputs.append((data[c], wcs))
            weights.append(np.any(np.isfinite(data), axis=0).astype(np.float64))
        plane, fp = reproject_and_coadd(inputs, out_wcs, shape_out=(height, width),
                                        input_weights=weights, reproject_function=reproject_interp,
                                        combine_function="mean", match_background=True)
        planes.append(plane)
        footprint = fp if footprint is None else footprint
    oracle = np.stack(planes, axis=-1).astype(np.float32)
    oracle[footprint <= 0] = np.nan
    both = np.isfinite(ours).all(-1) & np.isfinite(oracle).all(-1)
    assert np.mean(np.isfinite(ours).all(-1) == np.isfinite(oracle).all(-1)) >= 0.995
    for c in range(3):
        o, r = ours[..., c][both], oracle[..., c][both]
        p1, p99 = np.percentile(r, [1, 99])
        assert abs(np.median(o) / np.median(r) - 1) <= 1e-5
        assert np.sqrt(np.mean((o - r) ** 2)) <= 1e-5 * (p99 - p1)
    assert np.max(np.abs(coverage[both] - footprint[both])) < 1e-5
