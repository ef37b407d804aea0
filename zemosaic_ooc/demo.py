"""Synthetic master tiles in ZeMosaic's on-disk format, with the injected truth.

``make_demo_tiles`` writes ``master_tile_000.fits`` ... one per tile of an ``nx`` x ``ny``
grid, exactly as ZeMosaic writes master tiles (see the fixtures' README):

* primary HDU float32 (3, H, W) = R, G, B with a 2-D celestial TAN WCS (``WCSAXES = 2``,
  CD matrix, a small rotation < 0.6 deg; order-2 SIP ``A``/``B`` terms with a largest
  correction of 0.7-1.1 px and ``CTYPE`` ``*-TAN-SIP`` on some tiles);
* the frame-count keys ``MT_NFRAMES`` (varying per tile), ``ZMT_NALGN``, ``ZMT_NRAW`` and
  ``ZMT_ID`` (ZeMosaic's tile id is ``tile:<ZMT_ID>``);
* an image extension ``ALPHA`` (uint8, H x W): 0 in a 1-5 px outer band (per side), then a
  smoothstep ramp to 255 over 8-16 px; the data are 0 where ALPHA = 0.

Every tile sees one true sky (:class:`DemoSky`: Gaussian stars, smooth two-colour
nebulosity, a sky level per channel), evaluated at each pixel's sky position through the
tile's own WCS (SIP included).  Per tile and channel ``c``::

    data_c = gain_c * sky_c + offset_c + noise,   noise ~ N(0, 2.5 ADU * sqrt(40 / MT_NFRAMES))

with gains within +-10 % (``gain_spread``) and offsets within +-30 ADU.  ``truth.json`` beside the tiles records
the injected gains, offsets, frame counts, SIP flags and the whole sky model, so a test can
re-render the true sky on any grid (:func:`load_truth`, :meth:`DemoSky.render`).
"""
from __future__ import annotations

import concurrent.futures as cf

import json
import math
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np
from astropy.io import fits
from astropy.wcs import WCS, FITSFixedWarning
from astropy.wcs.utils import proj_plane_pixel_scales

TRUTH_FILE = "truth.json"
TRUTH_SCHEMA = "zemosaic_ooc.demo/1"
SKY_LEVEL_RGB = (420.0, 380.0, 340.0)
NOISE_ADU_AT_40_FRAMES = 2.5
STAR_CUT_SIGMA = 4.5          # star profile: Gaussian lowered to 0 at 4.5 sigma (compact, smooth)
STARS_PER_TILE_AREA = 120     # star density: this many per 512 x 544 px

__all__ = [
    "DemoSky",
    "make_demo_tiles",
    "demo_summary",
    "load_truth",
    "tile_name",
    "make_alpha",
]


def tile_name(index: int) -> str:
    return f"master_tile_{index:03d}.fits"


# --------------------------------------------------------------------------------------
# the true sky
# --------------------------------------------------------------------------------------

def _reference_wcs(ra: float, dec: float, scale_deg: float) -> WCS:
    """Plain TAN plane centred on (ra, dec); reference pixel (0, 0) at the centre (origin 0)."""
    w = WCS(naxis=2)
    w.wcs.ctype = ["RA---TAN", "DEC--TAN"]
    w.wcs.crval = [ra, dec]
    w.wcs.crpix = [1.0, 1.0]
    w.wcs.cd = np.array([[-scale_deg, 0.0], [0.0, scale_deg]])
    w.wcs.cunit = ["deg", "deg"]
    w.wcs.radesys = "ICRS"
    w.wcs.set()
    return w


def _quiet_wcs(header: fits.Header) -> WCS:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FITSFixedWarning)
        return WCS(header, naxis=2, relax=True)


@dataclass
class DemoSky:
    """The one true sky of a demo set, defined on a reference TAN plane.

    Coordinates ``(u, v)`` are pixels of the reference plane (``ref_wcs``, origin 0 at
    (ra, dec), ``pixel_scale_arcsec`` per pixel, u towards the west = decreasing RA).
    ``evaluate(u, v)`` returns (3, ...) ADU: sky level + nebulosity + stars.
    """

    ra: float
    dec: float
    pixel_scale_arcsec: float
    sky_level_rgb: np.ndarray            # (3,)
    nebula: list[dict[str, Any]]         # blobs: u, v, sx, sy, theta, amp, rgb
    star_u: np.ndarray
    star_v: np.ndarray
    star_sigma: np.ndarray               # reference px
    star_peak: np.ndarray                # ADU (before the tile gains)
    star_rgb: np.ndarray                 # (N, 3) colour factors
    star_cut_sigma: float = STAR_CUT_SIGMA

    # ---- construction -------------------------------------------------------------
    @classmethod
    def random(cls, rng: np.random.Generator, *, ra: float, dec: float,
               pixel_scale_arcsec: float,
               extent_uv: tuple[float, float, float, float],
               nebula_detail: int = 0) -> "DemoSky":
        """A random sky over ``extent_uv``; ``nebula_detail`` adds that many small knots
        (σ 12-40 px, 40-160 ADU) per 512 x 544 px of area, drawn after everything else."""
        u0, u1, v0, v1 = extent_uv
        area = (u1 - u0) * (v1 - v0)
        n_stars = max(8, int(round(STARS_PER_TILE_AREA * area / (512.0 * 544.0))))
        su = rng.uniform(u0, u1, n_stars)
        sv = rng.uniform(v0, v1, n_stars)
        sigma = rng.uniform(1.0, 1.5, n_stars)
        peak = np.minimum(25.0 * rng.random(n_stars) ** (-1.0 / 1.2), 12000.0)
        tcol = rng.uniform(-1.0, 1.0, n_stars)
        rgb = np.stack([1.0 + 0.3 * tcol, np.ones(n_stars), 1.0 - 0.3 * tcol], axis=1)
        size = max(u1 - u0, v1 - v0)
        nebula = []
        colours = ((1.0, 0.3, 0.2), (0.15, 0.7, 1.0))       # H-alpha red, OIII teal
        for colour in colours:
            for _ in range(3):
                nebula.append({
                    "u": float(rng.uniform(u0, u1)), "v": float(rng.uniform(v0, v1)),
                    "sx": float(rng.uniform(0.12, 0.35) * size),
                    "sy": float(rng.uniform(0.12, 0.35) * size),
                    "theta": float(rng.uniform(0.0, math.pi)),
                    "amp": float(rng.uniform(30.0, 110.0)),
                    "rgb": list(colour),
                })
        n_knots = int(round(max(0, int(nebula_detail)) * area / (512.0 * 544.0)))
        for _ in range(n_knots):
            mix = float(rng.uniform(0.0, 1.0))
            nebula.append({
                "u": float(rng.uniform(u0, u1)), "v": float(rng.uniform(v0, v1)),
                "sx": float(rng.uniform(12.0, 40.0)), "sy": float(rng.uniform(12.0, 40.0)),
                "theta": float(rng.uniform(0.0, math.pi)),
                "amp": float(rng.uniform(40.0, 160.0)),
                "rgb": [mix * a + (1.0 - mix) * b for a, b in zip(colours[0], colours[1])],
            })
        return cls(ra=float(ra), dec=float(dec), pixel_scale_arcsec=float(pixel_scale_arcsec),
                   sky_level_rgb=np.asarray(SKY_LEVEL_RGB, dtype=np.float64), nebula=nebula,
                   star_u=su, star_v=sv, star_sigma=sigma, star_peak=peak, star_rgb=rgb)

    def to_json(self) -> dict[str, Any]:
        return {
            "ra": self.ra, "dec": self.dec, "pixel_scale_arcsec": self.pixel_scale_arcsec,
            "reference_wcs": dict(self.ref_wcs.to_header(relax=True)),
            "sky_level_rgb": self.sky_level_rgb.tolist(),
            "nebula": self.nebula,
            "star_cut_sigma": self.star_cut_sigma,
            "stars": {
                "u": self.star_u.tolist(), "v": self.star_v.tolist(),
                "sigma": self.star_sigma.tolist(), "peak": self.star_peak.tolist(),
                "rgb": self.star_rgb.tolist(),
            },
        }

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> "DemoSky":
        s = d["stars"]
        return cls(ra=float(d["ra"]), dec=float(d["dec"]),
                   pixel_scale_arcsec=float(d["pixel_scale_arcsec"]),
                   sky_level_rgb=np.asarray(d["sky_level_rgb"], dtype=np.float64),
                   nebula=list(d["nebula"]),
                   star_u=np.asarray(s["u"], dtype=np.float64),
                   star_v=np.asarray(s["v"], dtype=np.float64),
                   star_sigma=np.asarray(s["sigma"], dtype=np.float64),
                   star_peak=np.asarray(s["peak"], dtype=np.float64),
                   star_rgb=np.asarray(s["rgb"], dtype=np.float64).reshape(-1, 3),
                   star_cut_sigma=float(d.get("star_cut_sigma", STAR_CUT_SIGMA)))

    @classmethod
    def from_truth(cls, truth: dict[str, Any]) -> "DemoSky":
        return cls.from_json(truth["sky"])

    # ---- evaluation ---------------------------------------------------------------
    @property
    def ref_wcs(self) -> WCS:
        return _reference_wcs(self.ra, self.dec, self.pixel_scale_arcsec / 3600.0)

    def _star_profile(self, d2: np.ndarray, sigma: float) -> np.ndarray:
        cut = math.exp(-0.5 * self.star_cut_sigma ** 2)
        g = (np.exp(-0.5 * d2 / (sigma * sigma)) - cut) * (1.0 / (1.0 - cut))
        return np.maximum(g, 0.0)

    def diffuse(self, u: np.ndarray, v: np.ndarray) -> np.ndarray:
        """Sky level + nebulosity (no stars) at reference-plane (u, v), (3,) + u.shape ADU."""
        out = np.empty((3,) + u.shape, dtype=np.float64)
        out[:] = self.sky_level_rgb.reshape((3,) + (1,) * u.ndim)
        for b in self.nebula:
            c, s = math.cos(b["theta"]), math.sin(b["theta"])
            reach = 9.0 * max(b["sx"], b["sy"])     # exp(-40.5) ≈ 2.6e-18 of the peak beyond
            near = (np.abs(u - b["u"]) < reach) & (np.abs(v - b["v"]) < reach)
            if not near.any():
                continue
            du, dv = u[near] - b["u"], v[near] - b["v"]
            a = (c * du + s * dv) / b["sx"]
            e = (-s * du + c * dv) / b["sy"]
            g = b["amp"] * np.exp(-0.5 * (a * a + e * e))
            for ch in range(3):
                out[ch][near] += b["rgb"][ch] * g
        return out

    def evaluate(self, u: np.ndarray, v: np.ndarray) -> np.ndarray:
        """The sky at reference-plane positions (u, v), (3,) + u.shape, every star summed."""
        u = np.asarray(u, dtype=np.float64)
        v = np.asarray(v, dtype=np.float64)
        out = self.diffuse(u, v)
        reach = self.star_cut_sigma * self.star_sigma
        for k in range(self.star_u.size):
            d2 = (u - self.star_u[k]) ** 2 + (v - self.star_v[k]) ** 2
            if not np.any(d2 < reach[k] ** 2):
                continue
            g = self.star_peak[k] * self._star_profile(d2, self.star_sigma[k])
            for ch in range(3):
                out[ch] += self.star_rgb[k, ch] * g
        return out

    def uv_of_pixels(self, wcs: WCS, shape_hw: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
        """Reference-plane (u, v) of every pixel of a grid (origin 0), through ``wcs`` (SIP too)."""
        h, w = int(shape_hw[0]), int(shape_hw[1])
        yy, xx = np.mgrid[0:h, 0:w]
        ra, dec = wcs.all_pix2world(xx.ravel().astype(np.float64),
                                    yy.ravel().astype(np.float64), 0)
        u, v = self.ref_wcs.wcs_world2pix(ra, dec, 0)
        return u.reshape(h, w), v.reshape(h, w)

    def render(self, wcs: WCS, shape_hw: tuple[int, int]) -> np.ndarray:
        """The sky on a pixel grid, (3, H, W) float64: each pixel's sky position through ``wcs``.

        Same numbers as :meth:`evaluate` at those positions; stars are only evaluated in a
        small box around their position (their profile is exactly 0 beyond the cut).
        """
        h, w = int(shape_hw[0]), int(shape_hw[1])
        u, v = self.uv_of_pixels(wcs, (h, w))
        out = self.diffuse(u, v)
        if self.star_u.size == 0:
            return out
        sra, sdec = self.ref_wcs.wcs_pix2world(self.star_u, self.star_v, 0)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            px, py = wcs.all_world2pix(sra, sdec, 0, quiet=True)
        # grid pixels per reference pixel (scales, not distortion: SIP adds ~1 px, margin 3 px)
        ref_scale = self.pixel_scale_arcsec / 3600.0
        scales = np.abs(proj_plane_pixel_scales(wcs))
        ratio = ref_scale / float(np.min(scales))
        reach = self.star_cut_sigma * self.star_sigma * ratio + 3.0
        ok = (np.isfinite(px) & np.isfinite(py)
              & (px > -reach) & (px < w - 1 + reach) & (py > -reach) & (py < h - 1 + reach))
        for k in np.flatnonzero(ok):
            r = reach[k]
            x0 = max(0, int(math.floor(px[k] - r)))
            x1 = min(w, int(math.ceil(px[k] + r)) + 1)
            y0 = max(0, int(math.floor(py[k] - r)))
            y1 = min(h, int(math.ceil(py[k] + r)) + 1)
            if x0 >= x1 or y0 >= y1:
                continue
            du = u[y0:y1, x0:x1] - self.star_u[k]
            dv = v[y0:y1, x0:x1] - self.star_v[k]
            g = self.star_peak[k] * self._star_profile(du * du + dv * dv, self.star_sigma[k])
            for ch in range(3):
                out[ch, y0:y1, x0:x1] += self.star_rgb[k, ch] * g
        return out


# --------------------------------------------------------------------------------------
# tiles
# --------------------------------------------------------------------------------------

def _smoothstep(t: np.ndarray) -> np.ndarray:
    t = np.clip(t, 0.0, 1.0)
    return t * t * (3.0 - 2.0 * t)


def make_alpha(shape_hw: tuple[int, int], band_tblr: Sequence[int], ramp_px: int) -> np.ndarray:
    """ZeMosaic-like soft ALPHA: 0 in an outer band (top, bottom, left, right), then a
    smoothstep ramp to 255 over ``ramp_px`` pixels (the min of the four sides' ramps)."""
    h, w = int(shape_hw[0]), int(shape_hw[1])
    bt, bb, bl, br = (int(b) for b in band_tblr)
    y = np.arange(h, dtype=np.float64)
    x = np.arange(w, dtype=np.float64)
    ry = np.minimum(y - bt + 1.0, (h - 1 - y) - bb + 1.0) / float(ramp_px)
    rx = np.minimum(x - bl + 1.0, (w - 1 - x) - br + 1.0) / float(ramp_px)
    t = np.minimum(ry[:, None], rx[None, :])
    return np.rint(255.0 * _smoothstep(t)).astype(np.uint8)


def _sip_terms(rng: np.random.Generator, shape_hw: tuple[int, int], crpix: tuple[float, float],
               target_px: float) -> tuple[dict[str, float], float]:
    """Order-2 A/B coefficients scaled so the largest correction over the tile is target_px."""
    h, w = shape_hw
    names = ("2_0", "1_1", "0_2")
    a = rng.normal(size=3)
    b = rng.normal(size=3)
    uu, vv = np.meshgrid(np.linspace(1 - crpix[0], w - crpix[0], 41),
                         np.linspace(1 - crpix[1], h - crpix[1], 41))
    mono = (uu * uu, uu * vv, vv * vv)
    fa = sum(c * m for c, m in zip(a, mono))
    fb = sum(c * m for c, m in zip(b, mono))
    scale = target_px / float(np.max(np.hypot(fa, fb)))
    terms = {}
    for n, c in zip(names, a * scale):
        terms[f"A_{n}"] = float(c)
    for n, c in zip(names, b * scale):
        terms[f"B_{n}"] = float(c)
    return terms, float(target_px)


def _tile_header(*, shape_hw, crval, rotation_deg, scale_deg, sip_terms, zmt_id,
                 nframes, nalgn, nraw) -> fits.Header:
    h, w = shape_hw
    th = math.radians(rotation_deg)
    c, s = math.cos(th), math.sin(th)
    hdr = fits.Header()
    hdr["WCSAXES"] = 2
    suffix = "-SIP" if sip_terms else ""
    hdr["CTYPE1"] = "RA---TAN" + suffix
    hdr["CTYPE2"] = "DEC--TAN" + suffix
    hdr["CRPIX1"] = w / 2.0 + 0.5
    hdr["CRPIX2"] = h / 2.0 + 0.5
    hdr["CRVAL1"] = float(crval[0])
    hdr["CRVAL2"] = float(crval[1])
    hdr["CUNIT1"] = "deg"
    hdr["CUNIT2"] = "deg"
    hdr["CD1_1"] = -scale_deg * c
    hdr["CD1_2"] = scale_deg * s
    hdr["CD2_1"] = scale_deg * s
    hdr["CD2_2"] = scale_deg * c
    hdr["RADESYS"] = "ICRS"
    if sip_terms:
        hdr["A_ORDER"] = 2
        hdr["B_ORDER"] = 2
        for key in ("A_2_0", "A_0_2", "A_1_1", "B_2_0", "B_0_2", "B_1_1"):
            hdr[key] = sip_terms[key]
    hdr["ZMT_TYPE"] = ("Master Tile", "ZeMosaic Processed Tile")
    hdr["ZMT_ID"] = (int(zmt_id), "Master Tile ID")
    hdr["ZMT_NRAW"] = (int(nraw), "Raw frames in this tile group")
    hdr["HIERARCH ZMT_NALGN"] = (int(nalgn), "Successfully aligned frames for stack")
    hdr["HIERARCH MT_NFRAMES"] = (int(nframes), "Frames stacked into this master tile")
    hdr["ALPHAEXT"] = (1, "Alpha mask ext present")
    hdr["ZMT_NANZ"] = (0, "Non-finite values were zeroed for export")
    hdr["ZDEMO"] = ("synthetic", "made by zemosaic_ooc.demo")
    return hdr


def _sip_flags(sip: bool | Sequence[bool], n: int, rng: np.random.Generator) -> list[bool]:
    if isinstance(sip, (bool, np.bool_)):
        if not sip:
            return [False] * n
        flags = list(rng.random(n) < 0.7)
        flags[0] = True                       # at least one SIP tile ...
        if n > 1 and all(flags):
            flags[-1] = False                 # ... and at least one plain TAN tile
        return [bool(f) for f in flags]
    flags = [bool(f) for f in sip]
    if len(flags) != n:
        raise ValueError(f"sip: {len(flags)} flags for {n} tiles")
    return flags


def _render_tile(sky: "DemoSky", shape_hw: tuple[int, int], hdr: fits.Header, gain: np.ndarray,
                 offset: np.ndarray, tile_noise: np.ndarray | None, band: list[int], ramp: int,
                 path: Path) -> None:
    """Render one tile of :func:`make_demo_tiles` (sky × gain + offset + noise, ALPHA) to ``path``."""
    truth_sky = sky.render(_quiet_wcs(hdr), shape_hw)
    data = truth_sky * gain[:, None, None] + offset[:, None, None]
    data = data.astype(np.float32)
    if tile_noise is not None:
        data += tile_noise
    alpha = make_alpha(shape_hw, band, ramp)
    data[:, alpha == 0] = 0.0
    ahdr = fits.Header()
    ahdr["ALPHADSC"] = "1=opaque(in), 0=transparent(out)"
    fits.HDUList([
        fits.PrimaryHDU(data=data, header=hdr),
        fits.ImageHDU(data=alpha, header=ahdr, name="ALPHA"),
    ]).writeto(path, overwrite=True)


def make_demo_tiles(out_dir: str | Path, *, nx: int = 2, ny: int = 2,
                    tile_hw: tuple[int, int] = (512, 544), overlap: float = 0.3, seed: int = 0,
                    pixel_scale_arcsec: float = 2.4, sip: bool | Sequence[bool] = True,
                    noise: bool = True, ra: float = 150.0, dec: float = 35.0,
                    gain_spread: float = 0.10, nebula_detail: int = 0,
                    workers: int = 1) -> list[Path]:
    """Write a synthetic ZeMosaic master-tile set and ``truth.json``; return the tile paths.

    Tiles are numbered row by row (``index = j * nx + i``, ``i`` along x/RA, ``j`` along
    y/Dec), each centred on its grid position (step ``(1 - overlap)`` times the tile side, a
    jitter of +-3 px) and rotated by less than 0.6 deg.  ``sip=True`` puts SIP on a random
    subset of tiles (always tile 0, never all of them when there are several); a sequence
    of booleans chooses per tile; ``False`` gives plain TAN everywhere.  Gains per tile and
    channel are drawn in ``1 ± gain_spread``; ``nebula_detail`` adds small nebula knots
    (:meth:`DemoSky.random`).  ``workers`` > 1 renders and writes that many tiles at once on
    threads (the same files: every random draw stays in tile order).
    """
    if nx < 1 or ny < 1:
        raise ValueError("nx and ny must be >= 1")
    if not 0.0 <= overlap < 1.0:
        raise ValueError("overlap must be in [0, 1)")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    h, w = int(tile_hw[0]), int(tile_hw[1])
    n = nx * ny
    # two independent streams: the noise never shifts the tiles' parameters or the sky
    rng, noise_rng = (np.random.default_rng(s) for s in np.random.SeedSequence(seed).spawn(2))
    scale_deg = pixel_scale_arcsec / 3600.0

    step_x = w * (1.0 - overlap)
    step_y = h * (1.0 - overlap)
    half_u = 0.5 * ((nx - 1) * step_x + w) + 40.0
    half_v = 0.5 * ((ny - 1) * step_y + h) + 40.0
    sky = DemoSky.random(rng, ra=ra, dec=dec, pixel_scale_arcsec=pixel_scale_arcsec,
                         extent_uv=(-half_u, half_u, -half_v, half_v), nebula_detail=nebula_detail)
    ref = sky.ref_wcs

    sip_flags = _sip_flags(sip, n, rng)
    nframes = rng.integers(20, 81, n)
    while n > 1 and np.all(nframes == nframes[0]):
        nframes = rng.integers(20, 81, n)

    paths: list[Path] = []
    records: list[dict[str, Any]] = []
    pool = cf.ThreadPoolExecutor(max_workers=int(workers)) if int(workers) > 1 else None
    pending: list[cf.Future] = []
    for j in range(ny):
        for i in range(nx):
            idx = j * nx + i
            cu = (i - (nx - 1) / 2.0) * step_x + rng.uniform(-3.0, 3.0)
            cv = (j - (ny - 1) / 2.0) * step_y + rng.uniform(-3.0, 3.0)
            crval = [float(x) for x in ref.wcs_pix2world(cu, cv, 0)]
            rotation = float(rng.uniform(-0.6, 0.6))
            crpix = (w / 2.0 + 0.5, h / 2.0 + 0.5)
            sip_terms, sip_max = (None, 0.0)
            if sip_flags[idx]:
                sip_terms, sip_max = _sip_terms(rng, (h, w), crpix, float(rng.uniform(0.7, 1.1)))
            nf = int(nframes[idx])
            nraw = nf + int(rng.integers(0, 5))
            gain = rng.uniform(1.0 - gain_spread, 1.0 + gain_spread, 3)
            offset = rng.uniform(-30.0, 30.0, 3)
            band = [int(b) for b in rng.integers(1, 6, 4)]
            ramp = int(rng.integers(8, 17))
            sigma_n = NOISE_ADU_AT_40_FRAMES * math.sqrt(40.0 / nf)

            hdr = _tile_header(shape_hw=(h, w), crval=crval, rotation_deg=rotation,
                               scale_deg=scale_deg, sip_terms=sip_terms, zmt_id=idx,
                               nframes=nf, nalgn=nf, nraw=nraw)
            path = out / tile_name(idx)
            tile_noise = (noise_rng.standard_normal((3, h, w), dtype=np.float32) * np.float32(sigma_n)
                          if noise else None)
            job = (hdr, gain, offset, tile_noise, band, ramp, path)
            if pool is None:
                _render_tile(sky, (h, w), *job)
            else:
                pending.append(pool.submit(_render_tile, sky, (h, w), *job))
                if len(pending) >= workers:          # bounded: at most ``workers`` noise planes held
                    pending.pop(0).result()
            paths.append(path)
            records.append({
                "file": path.name, "zmt_id": idx, "tile_id": f"tile:{idx}",
                "grid_ij": [i, j], "shape_hw": [h, w],
                "mt_nframes": nf, "zmt_nalgn": nf, "zmt_nraw": nraw,
                "sip": bool(sip_flags[idx]), "sip_max_displacement_px": sip_max,
                "sip_terms": sip_terms or {},
                "rotation_deg": rotation, "crval": crval, "center_ref_px": [cu, cv],
                "alpha_zero_band_px_top_bottom_left_right": band, "alpha_ramp_px": ramp,
                "injected": {"gain_rgb": gain.tolist(), "offset_rgb_adu": offset.tolist(),
                             "noise_sigma_adu": sigma_n if noise else 0.0},
            })

    if pool is not None:
        for future in pending:
            future.result()
        pool.shutdown()
    truth = {
        "schema": TRUTH_SCHEMA,
        "seed": int(seed), "nx": int(nx), "ny": int(ny), "tile_hw": [h, w],
        "overlap": float(overlap), "pixel_scale_arcsec": float(pixel_scale_arcsec),
        "ra": float(ra), "dec": float(dec), "noise": bool(noise),
        "gain_spread": float(gain_spread), "nebula_detail": int(nebula_detail),
        "model": "data_c = gain_c * sky_c + offset_c + N(0, noise_sigma); 0 where ALPHA == 0",
        "files": [p.name for p in paths],
        "gains": [r["injected"]["gain_rgb"] for r in records],
        "offsets": [r["injected"]["offset_rgb_adu"] for r in records],
        "nframes": [r["mt_nframes"] for r in records],
        "sip": [r["sip"] for r in records],
        "tiles": records,
        "sky": sky.to_json(),
    }
    (out / TRUTH_FILE).write_text(json.dumps(truth, indent=1))
    return paths


def load_truth(path: str | Path) -> dict[str, Any]:
    """``truth.json`` of a demo set: pass the folder, a tile path or the JSON file itself."""
    p = Path(path)
    if p.is_dir():
        p = p / TRUTH_FILE
    elif p.suffix.lower() != ".json":
        p = p.parent / TRUTH_FILE
    return json.loads(p.read_text())


def demo_summary(paths: Iterable[str | Path]) -> str:
    """A short human-readable table of a tile set (and its injected truth when present)."""
    paths = [Path(p) for p in paths]
    truth = None
    if paths and (paths[0].parent / TRUTH_FILE).is_file():
        try:
            truth = load_truth(paths[0].parent)
        except (OSError, ValueError):
            truth = None
    by_file = {t["file"]: t for t in truth["tiles"]} if truth else {}
    lines = []
    folder = paths[0].parent if paths else Path(".")
    lines.append(f"{len(paths)} master tiles in {folder}")
    head = f"{'file':<22} {'H x W':>11} {'frames':>6} {'SIP':>4} {'rot':>6}"
    if truth:
        head += f"  {'gain R,G,B':<20} {'offset R,G,B (ADU)':<22}"
    lines.append(head)
    for p in paths:
        hdr = fits.getheader(p, 0)
        hw = f"{hdr.get('NAXIS2', '?')} x {hdr.get('NAXIS1', '?')}"
        nf = hdr.get("MT_NFRAMES", "-")
        is_sip = str(hdr.get("CTYPE1", "")).endswith("-SIP")
        cd11, cd12 = float(hdr.get("CD1_1", 0.0)), float(hdr.get("CD1_2", 0.0))
        rot = math.degrees(math.atan2(cd12, -cd11)) if (cd11 or cd12) else 0.0
        line = f"{p.name:<22} {hw:>11} {nf!s:>6} {'yes' if is_sip else 'no':>4} {rot:>+6.2f}"
        t = by_file.get(p.name)
        if t:
            g = ",".join(f"{x:.3f}" for x in t["injected"]["gain_rgb"])
            o = ",".join(f"{x:+.1f}" for x in t["injected"]["offset_rgb_adu"])
            line += f"  {g:<20} {o:<22}"
        lines.append(line)
    if truth:
        sky = truth["sky"]
        lines.append(f"sky: {len(sky['stars']['u'])} stars, {len(sky['nebula'])} nebula blobs, "
                     f"level R,G,B = {', '.join(f'{x:g}' for x in sky['sky_level_rgb'])} ADU; "
                     f"truth in {folder / TRUTH_FILE}")
    return "\n".join(lines)
