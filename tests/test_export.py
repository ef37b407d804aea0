"""FITS export in slabs and PNG preview of a mosaic store (zemosaic_ooc.store.export)."""
from __future__ import annotations

import gc
import threading
import time
import warnings

import numpy as np
import psutil
import pytest
import zarr
from astropy.io import fits
from astropy.wcs import WCS, FITSFixedWarning

from zemosaic_ooc.store.export import export_fits, window_wcs_header, write_preview_png


def _grid_wcs(h: int, w: int) -> WCS:
    wcs = WCS(naxis=2)
    wcs.wcs.ctype = ["RA---TAN", "DEC--TAN"]
    wcs.wcs.crval = [150.0, 35.0]
    wcs.wcs.crpix = [w / 2.0 + 0.3, h / 2.0 - 0.7]
    th = np.radians(0.13)
    wcs.wcs.cd = (2.4 / 3600.0) * np.array([[-np.cos(th), np.sin(th)], [np.sin(th), np.cos(th)]])
    wcs.wcs.radesys = "ICRS"
    return wcs


def _make_store(path, h, w, *, chunks=256, window=None, bunit="adu", fill=None):
    """A mosaic store as the pipeline leaves it; returns (mosaic, coverage, alpha) when small."""
    g = zarr.open_group(str(path), mode="w")
    mos = g.create_array("mosaic", shape=(h, w, 3), chunks=(chunks, chunks, 3), dtype="float32",
                         fill_value=np.nan)
    cov = g.create_array("coverage", shape=(h, w), chunks=(chunks, chunks), dtype="float32",
                         fill_value=0.0)
    alp = g.create_array("alpha", shape=(h, w), chunks=(chunks, chunks), dtype="uint8",
                         fill_value=0)
    g.attrs["output_wcs_header"] = _grid_wcs(h, w).to_header(relax=True).tostring()
    if window is not None:
        g.attrs["window"] = list(window)
    if bunit:
        g.attrs["bunit"] = bunit
    if fill is not None:
        fill(mos, cov, alp)
        return None
    rng = np.random.default_rng(1)
    m = rng.normal(400.0, 50.0, (h, w, 3)).astype(np.float32)
    c = rng.uniform(0.0, 4.0, (h, w)).astype(np.float32)
    a = rng.integers(0, 256, (h, w)).astype(np.uint8)
    m[:37] = np.nan            # NaN borders
    m[:, -23:] = np.nan
    m[100:120, 300:340, 1] = np.nan
    c[:37] = 0
    a[:37] = 0
    mos[:] = m
    cov[:] = c
    alp[:] = a
    return m, c, a


@pytest.mark.parametrize("slab_rows,piece_bytes", [(100, 32 * 2**20), (600, 1)],
                         ids=["full-width-slabs", "one-chunk-pieces"])
def test_export_round_trip_window_wcs(tmp_path, slab_rows, piece_bytes):
    h, w = 700, 900
    window = (31, 655, 18, 871)
    m, c, a = _make_store(tmp_path / "m.zarr", h, w, window=window)
    out = tmp_path / "out" / "mosaic.fits"
    res = export_fits(tmp_path / "m.zarr", out, slab_rows=slab_rows, max_piece_bytes=piece_bytes)
    assert res == out and out.is_file()
    assert not (tmp_path / "out" / "mosaic.fits.partial").exists()

    y0, y1, x0, x1 = window
    with fits.open(out) as hl:
        hl.verify("exception")
        assert [hdu.name for hdu in hl] == ["PRIMARY", "COVERAGE", "ALPHA"]
        prim = hl[0]
        assert prim.data.dtype.kind == "f" and prim.data.dtype.itemsize == 4
        assert prim.data.shape == (3, y1 - y0, x1 - x0)
        expect = np.moveaxis(m[y0:y1, x0:x1], -1, 0)
        np.testing.assert_array_equal(prim.data, expect)        # NaN positions equal too
        np.testing.assert_array_equal(hl["COVERAGE"].data, c[y0:y1, x0:x1])
        assert hl["ALPHA"].data.dtype == np.uint8
        np.testing.assert_array_equal(hl["ALPHA"].data, a[y0:y1, x0:x1])
        hdr = prim.header
        assert hdr["ORIGIN"] == "zemosaic_ooc"
        assert hdr["BUNIT"] == "adu"
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FITSFixedWarning)
            wout = WCS(hdr, naxis=2)
            wcov = WCS(hl["COVERAGE"].header)
    grid = _grid_wcs(h, w)
    ys, xs = np.mgrid[0:y1 - y0:50, 0:x1 - x0:50]
    ra_o, dec_o = wout.all_pix2world(xs.ravel(), ys.ravel(), 0)
    ra_g, dec_g = grid.all_pix2world(xs.ravel() + x0, ys.ravel() + y0, 0)
    np.testing.assert_allclose(ra_o, ra_g, rtol=0, atol=1e-10)
    np.testing.assert_allclose(dec_o, dec_g, rtol=0, atol=1e-10)
    assert wcov.wcs.crpix[0] == pytest.approx(grid.wcs.crpix[0] - x0)
    assert wcov.wcs.crpix[1] == pytest.approx(grid.wcs.crpix[1] - y0)


def test_export_no_window_and_overwrite(tmp_path):
    h, w = 130, 170
    m, c, a = _make_store(tmp_path / "m.zarr", h, w, chunks=64, bunit=None)
    out = tmp_path / "full.fits"
    export_fits(tmp_path / "m.zarr", out, slab_rows=50)
    data = fits.getdata(out, 0)
    np.testing.assert_array_equal(data, np.moveaxis(m, -1, 0))
    assert "BUNIT" not in fits.getheader(out, 0)
    with pytest.raises(FileExistsError):
        export_fits(tmp_path / "m.zarr", out)
    export_fits(tmp_path / "m.zarr", out, overwrite=True, slab_rows=7)
    np.testing.assert_array_equal(fits.getdata(out, "ALPHA"), a)
    assert not (tmp_path / "full.fits.partial").exists()


def test_export_failure_leaves_no_file(tmp_path):
    _make_store(tmp_path / "m.zarr", 64, 64, chunks=32, window=(0, 64, 0, 64))
    g = zarr.open_group(str(tmp_path / "m.zarr"), mode="r+")
    g.attrs["window"] = [0, 100, 0, 64]          # does not fit: rejected before writing
    with pytest.raises(ValueError):
        export_fits(tmp_path / "m.zarr", tmp_path / "bad.fits")
    assert not (tmp_path / "bad.fits").exists()
    assert not (tmp_path / "bad.fits.partial").exists()


def test_window_wcs_header_shifts_crpix():
    hdr = _grid_wcs(100, 200).to_header(relax=True)
    shifted = window_wcs_header(hdr.tostring(sep="\n"), 10, 20)
    assert shifted["CRPIX1"] == pytest.approx(hdr["CRPIX1"] - 20)
    assert shifted["CRPIX2"] == pytest.approx(hdr["CRPIX2"] - 10)
    assert "NAXIS" not in shifted


class _PeakRSS:
    """Samples this process's RSS in a thread; ``peak`` is the largest value seen."""

    def __init__(self, interval=0.002):
        self.proc = psutil.Process()
        self.interval = interval
        self.peak = self.proc.memory_info().rss
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        while not self._stop.is_set():
            self.peak = max(self.peak, self.proc.memory_info().rss)
            time.sleep(self.interval)

    def __enter__(self):
        self._t.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._t.join()
        self.peak = max(self.peak, self.proc.memory_info().rss)


def test_export_memory_bounded(tmp_path):
    """Export holds a chunk-aligned piece (and the chunks zarr decodes for it), never the
    mosaic: exporting a 3000 x 3000 store (chunks 512) adds far less than its size to RSS."""
    h = w = 3000

    def fill(mos, cov, alp):
        for r0 in range(0, h, 512):
            r1 = min(h, r0 + 512)
            base = np.arange(r0, r1, dtype=np.float32)[:, None] + np.arange(w, dtype=np.float32)
            mos[r0:r1] = np.repeat(base[:, :, None], 3, axis=2)
            cov[r0:r1] = base
            alp[r0:r1] = (base % 256).astype(np.uint8)

    _make_store(tmp_path / "big.zarr", h, w, chunks=512, window=(10, 2990, 5, 2995), fill=fill)
    full_bytes = h * w * 3 * 4 + h * w * 4 + h * w            # mosaic + coverage + alpha
    gc.collect()
    out = tmp_path / "big.fits"
    with _PeakRSS() as mon:
        base = mon.peak
        export_fits(tmp_path / "big.zarr", out, slab_rows=256, max_piece_bytes=4 * 2**20)
    growth = mon.peak - base
    print(f"export RSS growth {growth / 2**20:.1f} MiB of {full_bytes / 2**20:.0f} MiB")
    assert growth < 0.15 * full_bytes, f"RSS grew by {growth / 2**20:.1f} MiB"
    with fits.open(out, memmap=True) as hl:
        d = hl[0].data
        assert d.shape == (3, 2980, 2990)
        assert d[2, 0, 0] == 10 + 5 and d[1, -1, -1] == 2989 + 2994
        assert d[0, 1000, 517] == 1010 + 522          # a piece boundary (chunk column 512)
        assert hl["COVERAGE"].data[511, 1200] == 521 + 1205
        assert hl["ALPHA"].data[100, 7] == (110 + 12) % 256
        del d


def test_preview_png(tmp_path):
    from PIL import Image

    h, w = 700, 900
    window = (31, 655, 18, 871)
    _make_store(tmp_path / "m.zarr", h, w, window=window)
    for stretch, linked in (("auto", True), ("asinh", False), ("linear", True)):
        png = tmp_path / f"p_{stretch}.png"
        size = write_preview_png(tmp_path / "m.zarr", png, max_side=300, stretch=stretch,
                                 linked=linked)
        stride = int(np.ceil(max(655 - 31, 871 - 18) / 300))
        expect = (len(range(18, 871, stride)), len(range(31, 655, stride)))
        assert size == expect
        with Image.open(png) as im:
            assert im.mode == "RGB" and im.size == expect
            arr = np.asarray(im)
        assert arr.max() > 200                       # stretched, not black
        assert (arr.reshape(-1, 3) > 0).any(axis=1).mean() > 0.8
        # rows above y = 37 are NaN in the store: black in the preview
        assert (arr[: (37 - 31) // stride] == 0).all()
        assert not (tmp_path / f"p_{stretch}.png.partial").exists()
    from zemosaic_ooc.store.export import _read_strided

    g = zarr.open_group(str(tmp_path / "m.zarr"), mode="r")
    for stride in (1, 3, 7):
        got = _read_strided(g["mosaic"], 31, 655, 18, 871, stride, max_piece_bytes=1)
        np.testing.assert_array_equal(got, g["mosaic"][31:655:stride, 18:871:stride, :])
    full = write_preview_png(tmp_path / "m.zarr", tmp_path / "full.png", max_side=4096)
    assert full == (871 - 18, 655 - 31)
    with pytest.raises(ValueError):
        write_preview_png(tmp_path / "m.zarr", tmp_path / "x.png", stretch="bogus")
