#!/usr/bin/env python
"""Compare two mosaics (zarr stores or FITS files): parity metrics and a difference picture.

    python tools/compare.py A.zarr B.zarr [-o diff.png] [--max-side 600] [--json] [--max-rms X]

B is the reference.  Over the pixels valid in both (all channels finite), per channel:

* ``median ratio``   median(A) / median(B)
* ``RMS / range``    sqrt(mean((A − B)²)) / (P99(B) − P1(B))
* ``max / range``    max |A − B| / (P99(B) − P1(B))

and ``mask agreement``: the fraction of pixels where A and B agree on validity.  These are
the metrics of the golden tests (``tests/golden.py``) and of the fixtures' READMEs, used for
CPU vs GPU checks.  A store is compared over its autocrop window (``attrs['window']``, what
its FITS export holds); a FITS file over its whole primary image ((3, H, W) as ZeMosaic
writes it, (H, W, 3) or 2-D mono).

Memory is bounded whatever the mosaic size: the inputs are read in row slabs
(``--slab-mib``), the sums in one pass, and the medians and P1/P99 with the exact
out-of-core percentiles of :func:`zemosaic_ooc.phase5.stats.exact_percentiles` (slabs are
kept in memory between passes only while they fit in ``--cache-mib``).  The difference
picture is read with an integer stride (longest side ``--max-side``): the per-channel
difference in percent of the reference range, and where the valid masks disagree.

Exit code 0; 1 when ``--max-rms`` is given and a channel's RMS / range exceeds it; 2 on
bad input (missing file, shapes that differ).
"""
from __future__ import annotations

import argparse
import json
import math
import sys
import warnings
from collections import OrderedDict
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

MiB = 2 ** 20


class CompareError(Exception):
    """Bad input: reported as one line, exit code 2."""


# ---------------------------------------------------------------------------------- sources

class Source:
    """An (H, W, 3) float32 image read in row slabs."""

    name: str
    shape_hw: tuple[int, int]
    row_unit: int = 1

    def read(self, r0: int, r1: int, stride: int = 1) -> np.ndarray:  # pragma: no cover
        raise NotImplementedError


class ZarrSource(Source):
    def __init__(self, path: Path, full_grid: bool = False):
        import zarr

        from zemosaic_ooc.report.reading import window_of

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                group = zarr.open_group(str(path), mode="r")
                self.arr = group["mosaic"]
            except Exception as exc:
                raise CompareError(f"{path}: not a mosaic store ({exc})") from exc
        if self.arr.ndim != 3:
            raise CompareError(f"{path}: mosaic has shape {self.arr.shape}, expected (H, W, 3)")
        h, w = int(self.arr.shape[0]), int(self.arr.shape[1])
        y0, y1, x0, x1 = (0, h, 0, w) if full_grid else window_of(group, (h, w))
        self.window = (y0, y1, x0, x1)
        self.name = str(path)
        self.shape_hw = (y1 - y0, x1 - x0)
        unit = getattr(self.arr, "shards", None) or self.arr.chunks
        self.row_unit = int(unit[0])

    def read(self, r0: int, r1: int, stride: int = 1) -> np.ndarray:
        y0, _, x0, x1 = self.window
        return np.asarray(self.arr[y0 + r0:y0 + r1:stride, x0:x1:stride, :], dtype=np.float32)


class FitsSource(Source):
    def __init__(self, path: Path):
        from astropy.io import fits
        try:
            self.hdul = fits.open(str(path), memmap=True)
        except Exception as exc:
            raise CompareError(f"{path}: cannot open as FITS ({exc})") from exc
        self.hdu = None
        for hdu in self.hdul:
            if getattr(hdu, "is_image", False) and hdu.header.get("NAXIS", 0) >= 2 \
                    and hdu.header.get("NAXIS1", 0) > 0:
                self.hdu = hdu
                break
        if self.hdu is None:
            raise CompareError(f"{path}: no image in the FITS file")
        hdr = self.hdu.header
        naxis = int(hdr["NAXIS"])
        shape = tuple(int(hdr[f"NAXIS{k}"]) for k in range(naxis, 0, -1))   # numpy order
        if naxis == 2:
            self.layout, (h, w) = "mono", shape
        elif naxis == 3 and shape[2] == 3 and shape[0] != 3:
            self.layout, (h, w) = "hwc", shape[:2]
        elif naxis == 3 and shape[0] in (1, 3):
            self.layout, (h, w) = "chw", shape[1:]
        else:
            raise CompareError(f"{path}: image of shape {shape} is not (3, H, W), (H, W, 3) or 2-D")
        self.name = str(path)
        self.shape_hw = (int(h), int(w))
        self.row_unit = 1

    def read(self, r0: int, r1: int, stride: int = 1) -> np.ndarray:
        sec = self.hdu.section
        if self.layout == "mono":
            plane = np.asarray(sec[r0:r1:stride, ::stride], dtype=np.float32)
            return np.repeat(plane[:, :, None], 3, axis=2)
        if self.layout == "hwc":
            return np.asarray(sec[r0:r1:stride, ::stride, :], dtype=np.float32)
        data = np.asarray(sec[:, r0:r1:stride, ::stride], dtype=np.float32)
        if data.shape[0] == 1:
            data = np.repeat(data, 3, axis=0)
        return np.ascontiguousarray(np.moveaxis(data, 0, -1))


def open_source(path: str | Path, *, full_grid: bool = False) -> Source:
    path = Path(path)
    if not path.exists():
        raise CompareError(f"{path}: no such file or store")
    if path.is_dir() or path.suffix.lower() == ".zarr":
        return ZarrSource(path, full_grid=full_grid)
    return FitsSource(path)


# ---------------------------------------------------------------------------------- metrics

@dataclass
class CompareResult:
    a: str
    b: str
    shape_hw: tuple[int, int]
    median_a: list[float] = field(default_factory=list)
    median_b: list[float] = field(default_factory=list)
    median_ratio: list[float] = field(default_factory=list)
    p1_b: list[float] = field(default_factory=list)
    p99_b: list[float] = field(default_factory=list)
    rms_over_range: list[float] = field(default_factory=list)
    max_over_range: list[float] = field(default_factory=list)
    mask_agreement: float = float("nan")
    valid_a: int = 0
    valid_b: int = 0
    valid_both: int = 0
    png: str | None = None

    def format(self) -> str:
        def row(label, vals, fmt):
            return f"  {label:<16}" + "  ".join(fmt(v) for v in vals)
        lines = [f"A: {self.a}", f"B: {self.b}  (reference)",
                 f"  image           {self.shape_hw[0]} x {self.shape_hw[1]} px (H x W); valid A "
                 f"{self.valid_a}, B {self.valid_b}, both {self.valid_both}",
                 "  channel         " + "  ".join(f"{c:>12}" for c in "RGB"),
                 row("median A", self.median_a, lambda v: f"{v:12.6g}"),
                 row("median B", self.median_b, lambda v: f"{v:12.6g}"),
                 row("median ratio", self.median_ratio, lambda v: f"{v:12.8f}"),
                 row("P99-P1 (B)", [b - a for a, b in zip(self.p1_b, self.p99_b)],
                     lambda v: f"{v:12.6g}"),
                 row("RMS/(P99-P1)", self.rms_over_range, lambda v: f"{v:12.4e}"),
                 row("max/(P99-P1)", self.max_over_range, lambda v: f"{v:12.4e}"),
                 f"  mask agreement  {self.mask_agreement:.6f}"]
        if self.png:
            lines.append(f"  difference PNG  {self.png}")
        return "\n".join(lines)


class _SlabCache:
    """(A, B) slabs by row range, kept while they fit in ``capacity`` bytes (LRU)."""

    def __init__(self, a: Source, b: Source, capacity: int):
        self.a, self.b, self.capacity = a, b, int(capacity)
        self.items: OrderedDict[tuple[int, int], tuple[np.ndarray, np.ndarray, np.ndarray]] = OrderedDict()
        self.size = 0

    def get(self, slab: tuple[int, int]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        hit = self.items.get(slab)
        if hit is not None:
            self.items.move_to_end(slab)
            return hit
        a = self.a.read(*slab)
        b = self.b.read(*slab)
        both = np.isfinite(a).all(-1) & np.isfinite(b).all(-1)
        item = (a, b, both)
        nbytes = a.nbytes + b.nbytes + both.nbytes
        if nbytes <= self.capacity:
            self.items[slab] = item
            self.size += nbytes
            while self.size > self.capacity and self.items:
                _, old = self.items.popitem(last=False)
                self.size -= sum(x.nbytes for x in old)
        return item


def _slabs(height: int, width: int, unit: int, slab_bytes: int) -> list[tuple[int, int]]:
    rows = max(1, int(slab_bytes) // max(1, width * 3 * 4 * 2))
    rows = max(unit, (rows // max(1, unit)) * unit)
    return [(r, min(height, r + rows)) for r in range(0, height, rows)]


def compare(a_path: str | Path, b_path: str | Path, *, png: str | Path | None = None,
            max_side: int = 600, slab_bytes: int = 32 * MiB, cache_bytes: int = 256 * MiB,
            full_grid: bool = False) -> CompareResult:
    """Parity metrics of A against the reference B (module doc); writes ``png`` if given."""
    from zemosaic_ooc.phase5.stats import exact_percentiles

    a, b = open_source(a_path, full_grid=full_grid), open_source(b_path, full_grid=full_grid)
    if a.shape_hw != b.shape_hw:
        raise CompareError(f"the images differ in size: {a.name} is {a.shape_hw[0]} x "
                           f"{a.shape_hw[1]}, {b.name} is {b.shape_hw[0]} x {b.shape_hw[1]} (H x W)")
    h, w = a.shape_hw
    slabs = _slabs(h, w, max(a.row_unit, b.row_unit), slab_bytes)
    cache = _SlabCache(a, b, cache_bytes)

    valid_a = valid_b = agree = both_n = 0
    sumsq = np.zeros(3, dtype=np.float64)
    maxabs = np.zeros(3, dtype=np.float64)
    for slab in slabs:
        sa, sb, both = cache.get(slab)
        va, vb = np.isfinite(sa).all(-1), np.isfinite(sb).all(-1)
        valid_a += int(va.sum())
        valid_b += int(vb.sum())
        agree += int((va == vb).sum())
        both_n += int(both.sum())
        if both.any():
            d = sa[both].astype(np.float64) - sb[both].astype(np.float64)
            sumsq += np.einsum("nc,nc->c", d, d)
            maxabs = np.maximum(maxabs, np.abs(d).max(axis=0))
            del d
    result = CompareResult(a=a.name, b=b.name, shape_hw=(h, w), valid_a=valid_a,
                           valid_b=valid_b, valid_both=both_n,
                           mask_agreement=agree / float(max(1, h * w)))
    for c in range(3):
        def values(which: int):
            def of(slab):
                item = cache.get(slab)
                return item[which][..., c][item[2]].astype(np.float64)
            return of
        if both_n:
            p1, med_b, p99 = exact_percentiles(slabs, values(1), [1.0, 50.0, 99.0])
            med_a = exact_percentiles(slabs, values(0), [50.0])[0]
        else:
            p1 = med_b = p99 = med_a = float("nan")
        rng = p99 - p1
        result.median_a.append(float(med_a))
        result.median_b.append(float(med_b))
        result.median_ratio.append(float(med_a / med_b) if med_b else float("nan"))
        result.p1_b.append(float(p1))
        result.p99_b.append(float(p99))
        result.rms_over_range.append(float(math.sqrt(sumsq[c] / both_n) / rng) if both_n else float("nan"))
        result.max_over_range.append(float(maxabs[c] / rng) if both_n else float("nan"))
    cache.items.clear()
    if png is not None:
        write_difference_png(a, b, png, result, max_side=max_side, slab_bytes=slab_bytes)
        result.png = str(png)
    return result


def _strided(src: Source, stride: int, slab_bytes: int) -> np.ndarray:
    h, w = src.shape_hw
    rows_per = max(stride, (max(1, slab_bytes // max(1, w * 12)) // stride) * stride)
    parts = [src.read(r, min(h, r + rows_per), stride) for r in range(0, h, rows_per)]
    return np.concatenate(parts, axis=0)


def write_difference_png(a: Source, b: Source, png: str | Path, result: CompareResult, *,
                         max_side: int = 600, slab_bytes: int = 32 * MiB) -> Path:
    """Per-channel (A − B) / (P99 − P1) of B in percent, and the valid-mask disagreement."""
    import matplotlib
    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt
    from matplotlib.colors import ListedColormap

    h, w = a.shape_hw
    stride = max(1, int(math.ceil(max(h, w) / float(max_side))))
    sa, sb = _strided(a, stride, slab_bytes), _strided(b, stride, slab_bytes)
    va, vb = np.isfinite(sa).all(-1), np.isfinite(sb).all(-1)
    both = va & vb
    ranges = np.array([p99 - p1 for p1, p99 in zip(result.p1_b, result.p99_b)], dtype=np.float64)
    ranges = np.where(np.isfinite(ranges) & (ranges > 0), ranges, 1.0)
    diff = np.where(both[..., None], (sa - sb) / ranges * 100.0, np.nan).astype(np.float32)
    del sa, sb
    finite = np.abs(diff[np.isfinite(diff)])
    lim = float(np.percentile(finite, 99.5)) if finite.size else 1.0
    lim = lim if lim > 0 else 1e-6
    ph, pw = diff.shape[:2]
    panel_w = 4.2
    fig, axes = plt.subplots(1, 4, figsize=(4 * panel_w, max(2.8, panel_w * ph / max(1, pw) + 1.2)),
                             dpi=100, constrained_layout=True)
    for c, name in enumerate("RGB"):
        im = axes[c].imshow(diff[..., c], cmap="RdBu_r", vmin=-lim, vmax=lim, interpolation="nearest")
        axes[c].set_title(f"{name}: (A - B) / (P99 - P1), %  RMS {result.rms_over_range[c]:.2e}",
                          fontsize=8)
        fig.colorbar(im, ax=axes[c], shrink=0.8)
    mask = np.zeros((ph, pw), dtype=np.int8)
    mask[va & ~vb] = 1
    mask[~va & vb] = 2
    mask[both] = 3
    cmap = ListedColormap(["black", "#d62728", "#1f77b4", "#cccccc"])
    axes[3].imshow(mask, cmap=cmap, vmin=-0.5, vmax=3.5, interpolation="nearest")
    axes[3].set_title(f"valid: grey both, red A only, blue B only\n"
                      f"mask agreement {result.mask_agreement:.6f}", fontsize=8)
    for ax in axes:
        ax.tick_params(labelsize=7)
    fig.suptitle(f"A = {Path(a.name).name}   B = {Path(b.name).name}   (1 px = {stride} px)",
                 fontsize=9)
    png = Path(png)
    png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(png, format="png", dpi=100)
    plt.close(fig)
    return png


# ---------------------------------------------------------------------------------- CLI

def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="compare.py", description="Parity metrics of mosaic A against reference B (zarr "
                                       "stores or FITS) and a difference picture.")
    parser.add_argument("a", metavar="A", help="mosaic store (.zarr) or FITS file")
    parser.add_argument("b", metavar="B", help="the reference: mosaic store or FITS file")
    parser.add_argument("-o", "--png", metavar="DIFF.png",
                        help="difference picture (default: A_vs_B_diff.png here)")
    parser.add_argument("--no-png", action="store_true", help="do not draw the difference")
    parser.add_argument("--max-side", type=int, default=600,
                        help="longest side of each difference panel in pixels (default 600)")
    parser.add_argument("--slab-mib", type=float, default=32.0, help="rows read at once, MiB")
    parser.add_argument("--cache-mib", type=float, default=256.0,
                        help="slabs kept between the percentile passes, MiB")
    parser.add_argument("--full-grid", action="store_true",
                        help="compare stores over their full grids, not their autocrop windows")
    parser.add_argument("--json", action="store_true", help="print the metrics as JSON")
    parser.add_argument("--max-rms", type=float, metavar="X",
                        help="exit 1 when a channel's RMS / (P99 - P1) exceeds X")
    args = parser.parse_args(argv)
    png = None
    if not args.no_png:
        png = Path(args.png) if args.png else Path(
            f"{Path(args.a).stem}_vs_{Path(args.b).stem}_diff.png")
    try:
        result = compare(args.a, args.b, png=png, max_side=max(16, args.max_side),
                         slab_bytes=int(args.slab_mib * MiB), cache_bytes=int(args.cache_mib * MiB),
                         full_grid=args.full_grid)
    except CompareError as exc:
        print(f"compare.py: error: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(asdict(result), indent=1) if args.json else result.format())
    if args.max_rms is not None and any(not (v <= args.max_rms) for v in result.rms_over_range):
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
