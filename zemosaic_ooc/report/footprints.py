"""Tile footprints on the output grid, from the plan stored in the mosaic store.

Each plan tile carries its uncropped WCS (``header_text``), its shape and its crop; the
footprint is the pixel-edge outline of the cropped tile mapped through the tile WCS and
the output WCS (``output_wcs_header``), SIP included.  Where that is not possible (no
header, a point that does not map) the tile's output box is used instead.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np


@dataclass
class TileFootprint:
    """One tile's outline on the output grid, in 0-based grid pixel coordinates (x, y)."""

    index: int
    tile_id: str
    polygon: np.ndarray            # (N, 2) closed outline, x then y; last vertex != first
    box: tuple[int, int, int, int] | None
    from_wcs: bool

    @property
    def centroid(self) -> tuple[float, float]:
        x, y = self.polygon[:, 0], self.polygon[:, 1]
        xn, yn = np.roll(x, -1), np.roll(y, -1)
        cross = x * yn - xn * y
        area = cross.sum() / 2.0
        if abs(area) < 1e-9:
            return float(x.mean()), float(y.mean())
        return (float(((x + xn) * cross).sum() / (6 * area)),
                float(((y + yn) * cross).sum() / (6 * area)))

    def bbox(self) -> tuple[float, float, float, float]:
        """(y0, y1, x0, x1) floats of the outline."""
        return (float(self.polygon[:, 1].min()), float(self.polygon[:, 1].max()),
                float(self.polygon[:, 0].min()), float(self.polygon[:, 0].max()))

    def contains(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        from matplotlib.path import Path as MplPath
        pts = np.column_stack([np.asarray(x, dtype=np.float64).ravel(),
                               np.asarray(y, dtype=np.float64).ravel()])
        if pts.size == 0:
            return np.zeros(0, dtype=bool)
        return MplPath(self.polygon).contains_points(pts)


def _outline(height: int, width: int, n_per_edge: int) -> tuple[np.ndarray, np.ndarray]:
    """Pixel-edge outline of an (height, width) image walked in order (u = column, v = row)."""
    us = np.linspace(-0.5, width - 0.5, n_per_edge + 1)
    vs = np.linspace(-0.5, height - 0.5, n_per_edge + 1)
    top_u, top_v = us[:-1], np.full(n_per_edge, -0.5)
    right_u, right_v = np.full(n_per_edge, width - 0.5), vs[:-1]
    bottom_u, bottom_v = us[::-1][:-1], np.full(n_per_edge, height - 0.5)
    left_u, left_v = np.full(n_per_edge, -0.5), vs[::-1][:-1]
    return (np.concatenate([top_u, right_u, bottom_u, left_u]),
            np.concatenate([top_v, right_v, bottom_v, left_v]))


def _box_polygon(box: Sequence[int]) -> np.ndarray:
    y0, y1, x0, x1 = (float(v) for v in box)
    return np.array([[x0 - 0.5, y0 - 0.5], [x1 - 0.5, y0 - 0.5], [x1 - 0.5, y1 - 0.5],
                     [x0 - 0.5, y1 - 0.5]], dtype=np.float64)


def output_wcs(attrs: dict[str, Any]):
    """The output grid's WCS from ``output_wcs_header``, or None."""
    text = attrs.get("output_wcs_header")
    if not text:
        return None
    from astropy.io import fits
    from astropy.wcs import WCS
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            header = fits.Header.fromstring(str(text), sep="\n" if "\n" in str(text) else "")
            return WCS(header, naxis=2, relax=True)
    except Exception:
        return None


def tile_footprints(attrs: dict[str, Any], *, n_per_edge: int = 24) -> list[TileFootprint]:
    """Footprints of the plan's tiles (tiles without a box nor a usable WCS are left out)."""
    tiles = (attrs.get("plan") or {}).get("tiles") or []
    out_wcs = output_wcs(attrs)
    result: list[TileFootprint] = []
    for k, tile in enumerate(tiles):
        index = int(tile.get("index", k))
        tile_id = str(tile.get("tile_id", f"tile {index}"))
        box = tile.get("box")
        box = tuple(int(v) for v in box) if box else None
        polygon = None
        if out_wcs is not None and tile.get("header_text") and tile.get("shape_hw"):
            try:
                from ..phase5.mapping import TileGeometry, tile_to_output
                shape = (int(tile["shape_hw"][0]), int(tile["shape_hw"][1]))
                crop = tuple(int(v) for v in (tile.get("crop_hw") or (0, 0)))
                geom = TileGeometry(index, str(tile["header_text"]), shape, crop)
                u, v = _outline(shape[0] - 2 * crop[0], shape[1] - 2 * crop[1], n_per_edge)
                x, y = tile_to_output(geom, out_wcs, u, v)
                if np.all(np.isfinite(x)) and np.all(np.isfinite(y)):
                    polygon = np.column_stack([x, y])
            except Exception:
                polygon = None
        from_wcs = polygon is not None
        if polygon is None:
            if box is None:
                continue
            polygon = _box_polygon(box)
        result.append(TileFootprint(index, tile_id, polygon, box, from_wcs))
    return result
