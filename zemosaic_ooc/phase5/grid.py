"""Output grid (spec §1), output blocks, tile boxes (§4.2) and overlap pairs (§3.3).

Coordinates: 0-based pixel centres, x = column, y = row.  Boxes are half-open
integer ranges ``(y0, y1, x0, x1)`` on the output grid Ω unless stated.
"""
from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import Iterator, Sequence

import numpy as np
from astropy import units as u
from astropy.coordinates import Angle
from astropy.io import fits
from astropy.wcs import WCS, FITSFixedWarning

from .mapping import TileGeometry, tile_to_output


Box = tuple[int, int, int, int]  # (y0, y1, x0, x1), half-open


def compute_output_grid(geometries: Sequence[TileGeometry]) -> tuple[WCS, tuple[int, int]]:
    """§1.1: ZeMosaic's Phase-4 grid from the **uncropped** tiles.

    Resolution = mean over tiles of mean(|proj_plane_pixel_scales|) (2″/px
    fallback); reproject's ``find_optimal_celestial_wcs(auto_rotate=True,
    projection='TAN', frame='icrs')``.  Returns (WCS, (H, W)).
    """
    from reproject.mosaicking import find_optimal_celestial_wcs

    inputs = []
    scales = []
    for geom in geometries:
        wcs = geom.new_uncropped_wcs()
        inputs.append((geom.shape_hw, wcs))
        try:
            scale = float(np.mean(np.abs([s.to_value(u.deg) for s in wcs.proj_plane_pixel_scales()])))
        except Exception:
            continue
        if math.isfinite(scale) and scale > 1e-10:
            scales.append(scale)
    resolution = sum(scales) / len(scales) if scales else 2.0 / 3600.0
    wcs_out, shape_hw = find_optimal_celestial_wcs(
        inputs, resolution=Angle(resolution, unit=u.deg), auto_rotate=True,
        projection="TAN", reference=None, frame="icrs")
    shape_hw = (int(shape_hw[0]), int(shape_hw[1]))
    wcs_out.pixel_shape = (shape_hw[1], shape_hw[0])
    return wcs_out, shape_hw


def grid_from_header(header: fits.Header) -> tuple[WCS, tuple[int, int]]:
    """A user-supplied output grid: celestial WCS and NAXIS1/NAXIS2 from a FITS header."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FITSFixedWarning)
        wcs = WCS(header, naxis=2, relax=True)
    if not wcs.has_celestial:
        raise ValueError("grid header has no celestial WCS")
    width, height = int(header["NAXIS1"]), int(header["NAXIS2"])
    wcs.pixel_shape = (width, height)
    return wcs, (height, width)


def output_header(wcs: WCS) -> fits.Header:
    """Ω as a FITS header, the way ZeMosaic passes it everywhere (PC + CDELT)."""
    return wcs.to_header()


def iter_blocks(shape_hw: tuple[int, int], block: int) -> Iterator[Box]:
    """Row-major blocks of side ``block`` covering the grid (the output chunks)."""
    height, width = shape_hw
    for y0 in range(0, height, block):
        for x0 in range(0, width, block):
            yield (y0, min(height, y0 + block), x0, min(width, x0 + block))


def halo_superblocks(shape_hw: tuple[int, int], block: int, halo: int, budget_bytes: int,
                     bytes_per_pixel: int = 32, workers: int = 1) -> list[Box]:
    """Chunk-aligned groups of k × k blocks for stages that read a halo around each task.

    Each group computes its area grown by ``halo`` on every side (clipped to the grid), so
    larger groups re-read and recompute less halo, and fewer groups keep fewer workers busy.
    k is chosen to minimise the stage's estimated wall time, max(all groups' haloed area /
    the groups run at once, the largest group's), among the k whose groups, as many at once
    as run (``workers``, at most the number of groups), hold ``bytes_per_pixel`` per haloed
    pixel within ``budget_bytes`` (k = 1 when none does; the pipeline passes its budget less
    the tile cache's share, which is all a halo stage holds besides its groups).  32 B/px is
    the coverage blur's working set (tracemalloc: 29 B per haloed pixel, plus the 4 B region
    read).  E.g. a 7000 px grid, 1472 px blocks, 200 px halo, 1.5 GB: 25 groups for 16
    workers, 4 of 4416 px for 2.  The result is the same for every k (the halo covers the
    filter's reach); only the time and memory differ.
    Each chunk belongs to exactly one group, so concurrent writes never share a chunk.
    """
    height, width = shape_hw
    block = max(1, int(block))
    workers = max(1, int(workers))
    most = max(1, -(-max(height, width) // block))          # k beyond this is one group
    best: tuple[float, int] | None = None
    for k in range(1, most + 1):
        groups = list(iter_blocks(shape_hw, k * block))
        areas = [(min(height, g[1] + halo) - max(0, g[0] - halo)) * (min(width, g[3] + halo) - max(0, g[2] - halo))
                 for g in groups]
        at_once = min(workers, len(groups))
        if k > 1 and at_once * max(areas) * bytes_per_pixel > budget_bytes:
            continue
        wall = max(sum(areas) / at_once, max(areas))
        if best is None or wall < best[0]:
            best = (wall, k)
    return list(iter_blocks(shape_hw, best[1] * block))


def intersect(a: Box | None, b: Box | None) -> Box | None:
    """Intersection of two half-open boxes, or None when empty."""
    if a is None or b is None:
        return None
    y0, y1 = max(a[0], b[0]), min(a[1], b[1])
    x0, x1 = max(a[2], b[2]), min(a[3], b[3])
    if y1 <= y0 or x1 <= x0:
        return None
    return (y0, y1, x0, x1)


def _edge_samples(height: int, width: int, n_samples: int = 11) -> tuple[np.ndarray, np.ndarray]:
    """reproject's ``sample_array_edges``: n points per edge of the pixel-edge outline."""
    xs_line = np.linspace(-0.5, width - 0.5, n_samples)
    ys_line = np.linspace(-0.5, height - 0.5, n_samples)
    points = set()
    for x in xs_line:
        points.add((x, -0.5))
        points.add((x, height - 0.5))
    for y in ys_line:
        points.add((-0.5, y))
        points.add((width - 0.5, y))
    arr = np.array(sorted(points), dtype=np.float64)
    return arr[:, 0], arr[:, 1]


def reproject_box(geom: TileGeometry, out_wcs: WCS, shape_hw: tuple[int, int]) -> Box | None:
    """§4.2 step 1: the tile's output box as reproject_and_coadd computes it.

    11 samples per edge of the (cropped) tile's pixel-edge outline go to Ω;
    x range [max(0, ⌊min+0.5⌋), min(W, ⌈max+0.5⌉)), same for y.  None when
    empty (the tile then takes no part in the coadd); the whole frame when an
    edge sample does not map.
    """
    height, width = shape_hw
    xs, ys = _edge_samples(*geom.cropped_hw)
    ox, oy = tile_to_output(geom, out_wcs, xs, ys)
    if np.any(np.isnan(ox)) or np.any(np.isnan(oy)):
        return (0, height, 0, width)
    x0 = max(0, int(np.floor(ox.min() + 0.5)))
    x1 = min(width, int(np.ceil(ox.max() + 0.5)))
    y0 = max(0, int(np.floor(oy.min() + 0.5)))
    y1 = min(height, int(np.ceil(oy.max() + 0.5)))
    if x1 <= x0 or y1 <= y0:
        return None
    return (y0, y1, x0, x1)


@dataclass(frozen=True)
class ClampedBox:
    """§3.3 box of one tile in float Ω pixels, after ZeMosaic's CRPIX clamp."""

    x_min: float
    x_max: float
    y_min: float
    y_max: float
    area: float


@dataclass(frozen=True)
class OverlapPair:
    """A §3.3 calibration pair i < j with its integer bbox and weight."""

    i: int
    j: int
    bbox: Box          # (Y0, Y1, X0, X1) on Ω
    weight: float      # a_ij, from the clamped float boxes


def clamped_boxes(geometries: Sequence[TileGeometry], out_wcs: WCS,
                  shape_hw: tuple[int, int]) -> list[ClampedBox | None]:
    """§3.3: pixel-centre corners of each cropped tile → Ω, clamped at ±CRPIX as the code does."""
    header = output_header(out_wcs)
    crpix1 = float(header.get("CRPIX1", 0.0))
    crpix2 = float(header.get("CRPIX2", 0.0))
    height, width = shape_hw
    boxes: list[ClampedBox | None] = []
    for geom in geometries:
        h_c, w_c = geom.cropped_hw
        cx = np.array([0.0, w_c - 1.0, 0.0, w_c - 1.0])
        cy = np.array([0.0, 0.0, h_c - 1.0, h_c - 1.0])
        px, py = tile_to_output(geom, out_wcs, cx, cy, roundtrip=False)
        if not np.isfinite(px).any() or not np.isfinite(py).any():
            boxes.append(None)
            continue
        x_min, x_max = float(np.nanmin(px)), float(np.nanmax(px))
        y_min, y_max = float(np.nanmin(py)), float(np.nanmax(py))
        x_min = max(x_min, -crpix1)
        y_min = max(y_min, -crpix2)
        if width > 0:
            x_max = min(x_max, width - crpix1)
        if height > 0:
            y_max = min(y_max, height - crpix2)
        if not np.isfinite([x_min, x_max, y_min, y_max]).all() or x_max <= x_min or y_max <= y_min:
            boxes.append(None)
            continue
        boxes.append(ClampedBox(x_min, x_max, y_min, y_max, max((x_max - x_min) * (y_max - y_min), 1e-6)))
    return boxes


def overlap_pairs(boxes: Sequence[ClampedBox | None], shape_hw: tuple[int, int],
                  min_overlap_fraction: float) -> list[OverlapPair]:
    """§3.3 pairs for one τ_ov (the cascade is the caller's)."""
    height, width = shape_hw
    pairs: list[OverlapPair] = []
    for i, box_i in enumerate(boxes):
        if box_i is None:
            continue
        for j in range(i + 1, len(boxes)):
            box_j = boxes[j]
            if box_j is None:
                continue
            x0, x1 = max(box_i.x_min, box_j.x_min), min(box_i.x_max, box_j.x_max)
            y0, y1 = max(box_i.y_min, box_j.y_min), min(box_i.y_max, box_j.y_max)
            if x1 <= x0 or y1 <= y0:
                continue
            area = (x1 - x0) * (y1 - y0)
            min_area = min(box_i.area, box_j.area)
            if min_area <= 0 or area / min_area < max(0.0, float(min_overlap_fraction)):
                continue
            bx0, by0 = max(0, int(math.floor(x0))), max(0, int(math.floor(y0)))
            bx1, by1 = min(width, int(math.ceil(x1))), min(height, int(math.ceil(y1)))
            if bx1 - bx0 < 4 or by1 - by0 < 4:
                continue
            pairs.append(OverlapPair(i, j, (by0, by1, bx0, bx1), float(area)))
    return pairs


def overlap_pairs_with_cascade(boxes: Sequence[ClampedBox | None], shape_hw: tuple[int, int],
                               min_overlap_fraction: float) -> tuple[list[OverlapPair], float]:
    """§3.3 τ_ov cascade: the configured value, then 0.03, 0.02, 0.01 (only smaller ones)."""
    thresholds = [float(min_overlap_fraction)] + [t for t in (0.03, 0.02, 0.01)
                                                  if t < float(min_overlap_fraction)]
    for threshold in thresholds:
        pairs = overlap_pairs(boxes, shape_hw, threshold)
        if pairs:
            return pairs, threshold
    return [], thresholds[-1]
