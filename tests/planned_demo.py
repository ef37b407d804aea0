"""A small demo set ingested and planned up to the §4.2 boxes, for tests of single stages."""
from __future__ import annotations

from pathlib import Path

from zemosaic_ooc.backend import numpy_backend
from zemosaic_ooc.demo import make_demo_tiles
from zemosaic_ooc.options import Phase5Options
from zemosaic_ooc.phase5.grid import compute_output_grid, reproject_box
from zemosaic_ooc.phase5.mapping import OutputGrid
from zemosaic_ooc.phase5.plan import build_tile_plans, geometry
from zemosaic_ooc.store.tiles import ingest_tiles


def planned_demo(root: Path, *, seed: int, tile_hw: tuple[int, int] = (160, 176)):
    """(backend, tile store, tile plans with boxes, output grid, grid shape) of a 2x2 demo set."""
    paths = make_demo_tiles(root / "tiles", nx=2, ny=2, tile_hw=tile_hw, seed=seed)
    store = ingest_tiles(paths, root / "store")
    tiles = build_tile_plans(store.records, Phase5Options())
    wcs, shape_hw = compute_output_grid([geometry(t) for t in tiles])
    grid = OutputGrid(wcs, shape_hw)
    for tile in tiles:
        tile.box = reproject_box(geometry(tile), grid, shape_hw)
    return numpy_backend(), store, tiles, grid, shape_hw
