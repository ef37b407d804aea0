"""``report --compare-modes``: the seam check of a run under both photometry modes.

The store holds one run (``photometry`` = ``zemosaic`` or ``corrected``).  To show what the
other mode would give, the same request (input tiles, options, output grid) is run again
with only ``photometry`` switched, into a temporary store beside the report, and both
stores go through the same seam check (:func:`~.build.store_seams`).  The temporary store is
removed afterwards, also on failure.  This is the one part of the report that reads the
input tiles again: they must still be where the run found them.
"""
from __future__ import annotations

import logging
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import StoreError

log = logging.getLogger(__name__)

MODES = ("zemosaic", "corrected")


@dataclass
class ModeComparison:
    """Seam facts per photometry mode; ``run_mode`` is the mode the store itself was made with."""

    run_mode: str
    results: dict[str, Any]          # mode -> StoreSeams

    def lines(self) -> list[str]:
        out = []
        for mode in MODES:
            s = self.results.get(mode)
            if s is None:
                continue
            mark = " (this run)" if mode == self.run_mode else ""
            out.append(f"  {mode:9s}{mark:11s} seam metric {s.metric:.5f} ± {s.metric_stderr:.5f}, "
                       f"{len(s.flagged)} of {len(s.seams)} boundaries flagged, sky R/G {s.colour[0]:.4f} "
                       f"B/G {s.colour[1]:.4f}")
        return out


def compare_photometry_modes(store_path: str | Path, *, work_dir: str | Path | None = None,
                             max_side: int = 1024, rel_threshold: float | None = None,
                             n_sigma: float | None = None) -> ModeComparison:
    """Run the store's request again in the other photometry mode; seam facts of both.

    Raises :class:`~zemosaic_ooc.errors.StoreError` when the store holds no finished run
    request or an input tile is no longer readable.
    """
    from astropy.io import fits

    from ..options import Phase5Options
    from ..phase5.grid import grid_from_header
    from ..phase5.pipeline import run_pipeline
    from .build import store_seams
    from .reading import open_store

    store_path = Path(store_path)
    group = open_store(store_path)
    attrs = dict(group.attrs)
    request = (attrs.get("run_state") or {}).get("run_request")
    if not request or not attrs.get("summary"):
        raise StoreError(f"{store_path}: --compare-modes needs a finished run (no run request/summary "
                         "in the store)")
    missing = [p for p in request["tile_paths"] if not Path(p).is_file()]
    if missing:
        raise StoreError(f"{missing[0]}: input tile not found; --compare-modes runs the request "
                         "again and needs the input tiles where the run found them")
    options = Phase5Options.from_mapping(request["options"])
    run_mode = str(options.photometry)
    other = MODES[1] if run_mode == MODES[0] else MODES[0]
    header_text = str(attrs["output_wcs_header"])
    header = fits.Header.fromstring(header_text, sep="\n" if "\n" in header_text else "")
    height, width = (int(v) for v in attrs["shape_hw"])
    header["NAXIS"], header["NAXIS1"], header["NAXIS2"] = 2, width, height
    grid = grid_from_header(header)
    kwargs: dict[str, Any] = {"max_side": max_side}
    if rel_threshold is not None:
        kwargs["rel_threshold"] = rel_threshold
    if n_sigma is not None:
        kwargs["n_sigma"] = n_sigma
    results = {run_mode: store_seams(store_path, **kwargs)}
    parent = Path(work_dir) if work_dir is not None else store_path.parent
    scratch = Path(tempfile.mkdtemp(prefix=f".compare_{other}_", dir=parent))
    try:
        options.photometry = other
        options.overwrite = True
        log.info("compare-modes: running the request again with photometry=%s", other)
        run_pipeline(request["tile_paths"], scratch / "other.zarr", options, grid=grid)
        results[other] = store_seams(scratch / "other.zarr", **kwargs)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return ModeComparison(run_mode=run_mode, results=results)
