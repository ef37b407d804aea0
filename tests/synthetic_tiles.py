"""Small hand-made tiles for the bad-input tests: a plain TAN WCS and smooth noisy data."""
from __future__ import annotations

import numpy as np
from astropy.wcs import WCS


def tan_wcs(shape_hw: tuple[int, int], crval: tuple[float, float] = (10.0, 20.0),
            scale_deg: float = 1.0 / 3600) -> WCS:
    """A north-up TAN WCS with the reference pixel at the tile centre."""
    h, w = shape_hw
    wcs = WCS(naxis=2)
    wcs.wcs.ctype = ["RA---TAN", "DEC--TAN"]
    wcs.wcs.crval = list(crval)
    wcs.wcs.crpix = [(w + 1) / 2.0, (h + 1) / 2.0]
    wcs.wcs.cdelt = [-scale_deg, scale_deg]
    return wcs


def smooth_tile_data(shape_hw: tuple[int, int], *, seed: int = 0, channels: int = 3) -> np.ndarray:
    """(C, H, W) float32 (or (H, W) for one channel): a gentle ramp per channel plus N(0, 2) noise."""
    rng = np.random.default_rng(seed)
    h, w = shape_hw
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    base = 100.0 + 0.05 * xx + 0.03 * yy
    planes = [base * (1.0 + 0.1 * c) + rng.normal(0, 2.0, (h, w)) for c in range(channels)]
    data = np.stack(planes).astype(np.float32)
    return data[0] if channels == 1 else data
