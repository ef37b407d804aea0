"""How well a mosaic of a demo set recovers the injected truth, tile by tile.

For a store made from :func:`zemosaic_ooc.demo.make_demo_tiles` tiles, the true sky is
re-rendered on the output grid (:meth:`~zemosaic_ooc.demo.DemoSky.render`) and, over each
tile's *interior* (output pixels that only this tile covers, at least ``margin`` px inside
its cropped frame and ``margin`` px away from every other tile's frame, away from stars),
the mosaic is fitted per channel as ``k·truth + o`` (ordinary least squares; the truth has
no noise).  A perfectly calibrated mosaic has the same ``k`` and ``o`` on every tile; the
spread of ``k`` (max − min, relative to the mean) and of ``o`` (max − min, relative to the
sky level) measures the tile imprints a calibration leaves.

Memory: the full output grid is rendered (this is a test/diagnostic tool for demo-sized sets).
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .demo import DemoSky, load_truth
from .phase5.channels import all_finite
from .phase5.stats import robust_sigma

STAR_FREE_ADU = 0.5          # a pixel is "star free" where the stars add < 0.5 ADU to the truth


@dataclass
class TruthResponse:
    """Per tile and channel: the fitted response k and level o of the mosaic to the truth."""

    k: np.ndarray                # (n_tiles, 3)
    o: np.ndarray                # (n_tiles, 3) ADU
    n_pixels: np.ndarray         # (n_tiles,) interior pixels used
    sky_level: np.ndarray        # (3,) ADU, the demo sky level per channel

    @property
    def k_spread(self) -> np.ndarray:
        """(max − min) / mean of k over tiles, per channel."""
        return (self.k.max(axis=0) - self.k.min(axis=0)) / np.abs(self.k.mean(axis=0))

    @property
    def o_spread(self) -> np.ndarray:
        """(max − min) of o over tiles / sky level, per channel."""
        return (self.o.max(axis=0) - self.o.min(axis=0)) / self.sky_level

    def describe(self, label: str = "") -> str:
        ks = ", ".join(f"{v * 100:.3f} %" for v in self.k_spread)
        os_ = ", ".join(f"{v * 100:.3f} %" for v in self.o_spread)
        return f"{label}k spread (R, G, B) {ks}; o spread / sky level {os_}"


def _open_store(store_path: str | Path):
    import zarr
    return zarr.open_group(str(store_path), mode="r")


def tile_response(store_path: str | Path, truth_path: str | Path, *, margin: int = 24) -> TruthResponse:
    """Fit the store's final mosaic as k·truth + o over every tile's interior (see module doc)."""
    from .phase5.mapping import TileGeometry, output_to_tile
    from .report.footprints import output_wcs

    group = _open_store(store_path)
    attrs = dict(group.attrs)
    truth: dict[str, Any] = load_truth(truth_path)
    sky = DemoSky.from_truth(truth)
    out_wcs = output_wcs(attrs)
    tiles = attrs["plan"]["tiles"]
    mosaic = np.asarray(group["mosaic"][...], dtype=np.float64)          # (H, W, 3)
    h, w = shape_hw = (int(mosaic.shape[0]), int(mosaic.shape[1]))
    truth_rgb = sky.render(out_wcs, shape_hw)                            # (3, H, W)
    u, v = sky.uv_of_pixels(out_wcs, shape_hw)
    star_free = (truth_rgb - sky.diffuse(u, v)).max(axis=0) < STAR_FREE_ADU
    ys, xs = np.mgrid[0:h, 0:w]
    xs, ys = xs.ravel().astype(np.float64), ys.ravel().astype(np.float64)
    inside_strict, inside_loose = [], []
    for k, t in enumerate(tiles):
        geom = TileGeometry(int(t.get("index", k)), t["header_text"], tuple(t["shape_hw"]),
                            tuple(t["crop_hw"]))
        tu, tv = output_to_tile(geom, out_wcs, xs, ys)
        ch, cw = geom.cropped_hw
        with np.errstate(invalid="ignore"):
            strict = (tu >= margin) & (tu <= cw - 1 - margin) & (tv >= margin) & (tv <= ch - 1 - margin)
            loose = (tu >= -margin) & (tu <= cw - 1 + margin) & (tv >= -margin) & (tv <= ch - 1 + margin)
        inside_strict.append(strict.reshape(h, w))
        inside_loose.append(loose.reshape(h, w))
    count_loose = np.sum(inside_loose, axis=0)
    finite = all_finite(np, mosaic)
    n = len(tiles)
    k_fit = np.full((n, 3), np.nan)
    o_fit = np.full((n, 3), np.nan)
    counts = np.zeros(n, dtype=np.int64)
    for t in range(n):
        interior = inside_strict[t] & (count_loose == 1) & star_free & finite
        counts[t] = int(interior.sum())
        if counts[t] < 100:
            continue
        for c in range(3):
            x = truth_rgb[c][interior]
            y = mosaic[..., c][interior]
            design = np.column_stack([x, np.ones_like(x)])
            (k_fit[t, c], o_fit[t, c]), *_ = np.linalg.lstsq(design, y, rcond=None)
    return TruthResponse(k=k_fit, o=o_fit, n_pixels=counts,
                         sky_level=np.asarray(sky.sky_level_rgb, dtype=np.float64))


def main(argv: list[str] | None = None) -> int:
    """``python -m zemosaic_ooc.truthcheck OUT.zarr TILES_DIR``: print the per-tile response."""
    import argparse
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("store")
    parser.add_argument("truth", help="the demo folder (holding truth.json)")
    parser.add_argument("--margin", type=int, default=24)
    args = parser.parse_args(argv)
    result = tile_response(args.store, args.truth, margin=args.margin)
    print(json.dumps({"k": result.k.tolist(), "o": result.o.tolist(),
                      "n_pixels": result.n_pixels.tolist()}, indent=1))
    print(result.describe())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())


def write_oracle_tiles(tile_paths: list[Path], injected: list[dict[str, Any]], out_dir: str | Path) -> list[Path]:
    """Copies of the tiles with the injected photometry undone: (data − offset_c) / gain_c.

    ``injected[t]`` holds ``gain_rgb`` and ``offset_rgb_adu`` (a fixture's ``ref.json`` tiles or a
    demo's ``truth.json`` records).  Pixels with data 0 outside the ALPHA footprint stay 0.  A
    mosaic of these tiles with the calibration off is the truth up to the background matching's
    per-channel constants: the reference for a colour balance (:func:`colour_balance`).
    """
    from astropy.io import fits

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for path, inj in zip(tile_paths, injected):
        with fits.open(path) as hdul:
            data = hdul[0].data.astype(np.float64)
            gain = np.asarray(inj["gain_rgb"], dtype=np.float64)[:, None, None]
            offset = np.asarray(inj["offset_rgb_adu"], dtype=np.float64)[:, None, None]
            footprint = np.any(data != 0, axis=0)
            fixed = np.where(footprint, (data - offset) / gain, 0.0).astype(np.float32)
            hdus = [fits.PrimaryHDU(data=fixed, header=hdul[0].header)]
            hdus += [fits.ImageHDU(data=h.data, header=h.header, name=h.name) for h in hdul[1:]]
            target = out / Path(path).name
            fits.HDUList(hdus).writeto(target, overwrite=True)
            written.append(target)
    return written


def colour_balance(mosaic: np.ndarray, oracle: np.ndarray) -> np.ndarray:
    """Per-channel slope of ``mosaic`` against the ``oracle`` mosaic (both (H, W, 3)).

    Least squares ``mosaic_c = s_c·oracle_c + b_c`` over pixels valid in both, with one 5σ
    clipping round.  The colour balance shift is ``s_R/s_G − 1`` and ``s_B/s_G − 1``: a
    change of the channels' relative scale, free of the per-channel additive constants
    that no calibration can know.
    """
    valid = np.isfinite(mosaic).all(-1) & np.isfinite(oracle).all(-1)
    slopes = np.zeros(3)
    for c in range(3):
        x = oracle[..., c][valid].astype(np.float64)
        y = mosaic[..., c][valid].astype(np.float64)
        keep = np.ones(x.size, dtype=bool)
        for _ in range(2):
            s, b = np.polyfit(x[keep], y[keep], 1)
            resid = y - (s * x + b)
            sigma = robust_sigma(resid[keep])
            keep = np.abs(resid) <= 5.0 * max(sigma, 1e-12)
        slopes[c] = s
    return slopes
