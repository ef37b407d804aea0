"""``zemosaic-ooc report``: one self-contained HTML page about a finished mosaic store.

Built from the store alone (arrays, attributes and the run journal; the input tiles are
never read again) in bounded memory: every picture is read with an integer stride so its
longer side is at most ``max_side`` px (:func:`~.reading.strided`, chunk-aligned pieces),
and the seam check gathers its sample points chunk by chunk.  The PNGs are written beside
the HTML file (``<stem>_<name>.png``) and embedded in it as base64.
"""
from __future__ import annotations

import base64
import datetime as _dt
import html
import json
import math
import platform
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ..errors import StoreError
from ..memory import release_memory
from ..store.files import written_atomically
from . import figures
from .footprints import TileFootprint, tile_footprints
from .reading import get_array, open_journal, open_store, parse_block, strided, window_of
from .stretch import auto_stretch
from .seams import DEFAULT_N_SIGMA, DEFAULT_REL_THRESHOLD, SeamResult, seam_check, seam_metric, seam_metric_stderr

SECTIONS = ("preview", "coverage", "tiles", "blocks", "seams", "run")
SECTION_TITLES = {
    "preview": "Mosaic preview",
    "coverage": "Coverage and alpha",
    "tiles": "Tiles: inter-tile gain/offset, background offsets, two-pass gains",
    "blocks": "Block map",
    "seams": "Seam check",
    "run": "Run facts",
    "modes": "Photometry modes: seam check of this run and of the other mode",
}


@dataclass
class ReportResult:
    """What :func:`build_report` wrote and found."""

    html_path: Path
    images: dict[str, Path] = field(default_factory=dict)
    image_sizes: dict[str, tuple[int, int]] = field(default_factory=dict)   # (width, height)
    seams: list[SeamResult] = field(default_factory=list)
    flagged: list[SeamResult] = field(default_factory=list)
    sections: list[str] = field(default_factory=list)
    stride: int = 1
    preview_hw: tuple[int, int] = (0, 0)
    sky_range: list[float] = field(default_factory=list)
    rel_threshold: float = DEFAULT_REL_THRESHOLD
    mode_comparison: Any = None      # .modes.ModeComparison with --compare-modes

    def format(self) -> str:
        lines = [f"zemosaic-ooc: report written -> {self.html_path}",
                 f"  images      {len(self.images)} PNG(s) beside it, preview "
                 f"{self.preview_hw[1]} x {self.preview_hw[0]} px (1 px = {self.stride} mosaic px)",
                 f"  seam check  {len(self.seams)} boundary(ies), {len(self.flagged)} flagged "
                 f"(|step| > {100 * self.rel_threshold:.1f} % of P99 - P1)"]
        for s in self.flagged:
            steps = ", ".join(f"{100 * v:+.1f} %" for v in s.rel_step)
            lines.append(f"  flagged     {s.name}: step {steps} of the range (R, G, B)")
        if self.mode_comparison is not None:
            lines.append("  photometry modes (same request, same seam check):")
            lines.extend(self.mode_comparison.lines())
        return "\n".join(lines)


# ---------------------------------------------------------------------------------- helpers

def _esc(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _fmt(value: Any, digits: int = 4) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, (int, np.integer)):
        return str(int(value))
    if isinstance(value, (float, np.floating)):
        v = float(value)
        if not math.isfinite(v):
            return "-"
        return f"{v:.{digits}g}"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_fmt(v, digits) for v in value) + "]"
    return str(value)


def _table(headers: Sequence[str], rows: Sequence[Sequence[Any]], *, cls: str = "",
           row_classes: Sequence[str] | None = None) -> str:
    out = [f'<table class="{_esc(cls)}"><thead><tr>'
           + "".join(f"<th>{_esc(h)}</th>" for h in headers) + "</tr></thead><tbody>"]
    for k, row in enumerate(rows):
        rc = f' class="{_esc(row_classes[k])}"' if row_classes and row_classes[k] else ""
        out.append(f"<tr{rc}>" + "".join(f"<td>{_esc(_fmt(v))}</td>" for v in row) + "</tr>")
    out.append("</tbody></table>")
    return "".join(out)


class _Images:
    """Writes each PNG beside the HTML and keeps it for embedding."""

    def __init__(self, html_path: Path):
        self.dir = html_path.parent
        self.stem = html_path.stem
        self.paths: dict[str, Path] = {}
        self.sizes: dict[str, tuple[int, int]] = {}
        self.data: dict[str, bytes] = {}

    def add(self, name: str, png: bytes) -> str:
        from PIL import Image
        import io
        path = self.dir / f"{self.stem}_{name}.png"
        with written_atomically(path) as tmp:
            tmp.write_bytes(png)
        with Image.open(io.BytesIO(png)) as im:
            self.sizes[name] = (int(im.size[0]), int(im.size[1]))
        self.paths[name] = path
        self.data[name] = png
        return self.tag(name)

    def tag(self, name: str, alt: str | None = None) -> str:
        b64 = base64.b64encode(self.data[name]).decode("ascii")
        w, h = self.sizes[name]
        return (f'<figure><img id="img-{_esc(name)}" alt="{_esc(alt or name)}" width="{w}" '
                f'height="{h}" src="data:image/png;base64,{b64}">'
                f'<figcaption>{_esc(self.paths[name].name)} ({w} x {h} px)</figcaption></figure>')


def _default_options() -> dict[str, Any]:
    try:
        from ..options import Phase5Options
        return Phase5Options().to_dict()
    except Exception:  # pragma: no cover - options module broken
        return {}


def _versions() -> dict[str, str]:
    versions = {"python": platform.python_version()}
    for name in ("zemosaic_ooc", "numpy", "zarr", "astropy", "scipy", "matplotlib", "PIL"):
        try:
            module = __import__(name)
            versions[name if name != "PIL" else "pillow"] = str(getattr(module, "__version__", "?"))
        except Exception:
            continue
    return versions


def sky_statistics(rgb: np.ndarray) -> tuple[list[float], list[float], list[float], int]:
    """P1, P99 and P99 − P1 per channel over the valid pixels of the (strided) preview."""
    valid = np.isfinite(rgb).all(axis=-1)
    n = int(valid.sum())
    c = rgb.shape[-1]
    if n == 0:
        nan = [float("nan")] * c
        return nan, nan, nan, 0
    p1, p99 = [], []
    for k in range(c):
        lo, hi = np.percentile(rgb[..., k][valid], [1.0, 99.0])
        p1.append(float(lo))
        p99.append(float(hi))
    return p1, p99, [b - a for a, b in zip(p1, p99)], n


# ---------------------------------------------------------------------------------- sections

def _section(key: str, body: str) -> str:
    return (f'<section id="{key}"><h2>{_esc(SECTION_TITLES[key])}</h2>\n{body}\n</section>')


def _preview_section(imgs: _Images, rgb: np.ndarray, footprints, window, stride) -> tuple[str, np.ndarray]:
    parts = ["<p>Auto stretch: black and white points at P0.5 / P99.8, then asinh with the "
             "softening that puts the median at 25 % grey. <b>Linked</b>: one set of points for "
             "R, G and B (true colour balance); <b>unlinked</b>: each channel on its own (shows "
             "faint colour casts and per-channel seams). Coloured outlines: tile footprints "
             "(cropped tile outline mapped through its WCS), labelled with the tile id.</p>"]
    linked8 = None
    for linked, name, title in ((True, "preview_linked", "linked channels"),
                                (False, "preview_unlinked", "unlinked channels")):
        img8 = auto_stretch(rgb, linked=linked)
        parts.append(f"<h3>{_esc(title)}</h3>")
        parts.append(imgs.add(name, figures.preview_with_outlines(img8, footprints, window, stride)))
        if linked:
            linked8 = img8
        del img8
    return "\n".join(parts), linked8


def _coverage_section(imgs: _Images, group, window, stride, footprints) -> tuple[str, dict]:
    parts = []
    facts: dict[str, Any] = {}
    cov_arr = get_array(group, "coverage")
    alpha_arr = get_array(group, "alpha")
    mask_arr = get_array(group, "pass2_mask")
    if cov_arr is not None:
        cov = strided(cov_arr, window, stride, dtype=np.float32)
        finite = cov[np.isfinite(cov)]
        vmax = float(np.percentile(finite, 99.9)) if finite.size else 1.0
        facts["coverage max (preview)"] = float(finite.max()) if finite.size else float("nan")
        facts["coverage > 0 (preview)"] = float((finite > 0).mean()) if finite.size else 0.0
        cov = np.where(cov > 0, cov, np.nan)
        parts.append("<h3>coverage (summed coadd weights; blank = 0)</h3>")
        parts.append(imgs.add("coverage", figures.map_image(
            cov, "coverage", cmap="viridis", label="summed weights", footprints=footprints,
            window=window, stride=stride, vmin=0.0, vmax=max(vmax, 1e-6))))
        del cov
    else:
        parts.append("<p>No <code>coverage</code> array in the store.</p>")
    # (array, name, heading, title, colour map, colour-bar label, vmax, fact, message when absent)
    maps = [(alpha_arr, "alpha", "alpha (0 = no data, 255 = opaque)", "alpha", "gray", "alpha", 255,
             "alpha > 0 (preview)", "<p>No <code>alpha</code> array in the store.</p>"),
            (mask_arr, "pass2_mask", "two-pass: pixels taken from pass 2", "pass-2 mask (1 = from pass 2)",
             "cividis", "pass 2", 1, "pixels from pass 2 (preview)", "")]
    for array, name, heading, title, cmap, label, vmax, fact, absent in maps:
        if array is None:
            if absent:
                parts.append(absent)
            continue
        values = strided(array, window, stride, dtype=np.float32)
        facts[fact] = float((values > 0).mean()) if values.size else 0.0
        parts.append(f"<h3>{heading}</h3>")
        parts.append(imgs.add(name, figures.map_image(
            values, title, cmap=cmap, label=label, footprints=footprints, window=window,
            stride=stride, vmin=0, vmax=vmax)))
        del values
    if facts:
        parts.insert(0, _table(["fact", "value"], [[k, v] for k, v in facts.items()]))
    return "\n".join(parts), facts


def _tiles_section(imgs: _Images, attrs: dict, footprints: Sequence[TileFootprint], window) -> str:
    plan = attrs.get("plan") or {}
    tiles = plan.get("tiles") or []
    cal = plan.get("calibration") or {}
    two_pass = attrs.get("two_pass") or {}
    if not tiles:
        return "<p>The store has no tile plan.</p>"
    rows = []
    tp_gains = two_pass.get("gains") or []
    for k, t in enumerate(tiles):
        bg = list(t.get("bg_offsets") or [None] * 3) + [None] * 3
        bg2 = (list(t.get("bg_offsets_pass2") or [None] * 3) if two_pass.get("ran") else []) + [None] * 3
        tpg = t.get("two_pass_gain")
        if k < len(tp_gains) and tp_gains[k] is not None:
            tpg = tp_gains[k]
        gain, offset = t.get("gain"), t.get("offset")
        if t.get("gain_rgb") is not None:       # corrected photometry: per channel
            gain = " / ".join(f"{v:.4f}" for v in t["gain_rgb"])
            offset = " / ".join(f"{v:+.2f}" for v in t["offset_rgb"])
        rows.append([t.get("tile_id", k), t.get("shape_hw"), t.get("crop_hw"), t.get("box"),
                     t.get("tau"), gain, offset, bg[0], bg[1], bg[2],
                     tpg if two_pass.get("ran") else None, bg2[0], bg2[1], bg2[2],
                     t.get("empty_flag")])
    parts = [_table(["tile", "shape (H, W)", "crop (dh, dw)", "box on grid [y0, y1, x0, x1]",
                     "weight τ", "inter-tile gain", "inter-tile offset", "bg offset R",
                     "bg offset G", "bg offset B", "two-pass gain", "pass-2 bg R", "pass-2 bg G",
                     "pass-2 bg B", "empty"], rows, cls="num")]
    status = cal.get("status", "-")
    reasons = cal.get("guard_reasons") or []
    if cal.get("mode") == "corrected":
        comps = cal.get("component_tile_ids") or []
        isolated = cal.get("isolated_tile_ids") or []
        parts.append("<p>Photometry: <b>corrected</b> (per-channel gains and offsets, R / G / B in the "
                     f"table). Overlap graph: {len(comps)} calibrated component(s)"
                     + (": " + "; ".join("[" + ", ".join(map(_esc, c)) + "]" for c in comps) if len(comps) > 1 else "")
                     + (f'; <span class="bad">uncalibrated (no usable overlap): {_esc(", ".join(isolated))}</span>'
                        if isolated else "")
                     + (' <span class="bad">(each component is levelled on its own)</span>' if len(comps) > 1 else "")
                     + ".</p>")
    parts.append(f"<p>Inter-tile calibration: <b>{_esc(status)}</b>"
                 + (f", anchor tile {_esc(cal.get('anchor'))}" if cal.get("anchor") is not None else "")
                 + (f"; under-constrained guard: {_esc(', '.join(map(str, reasons)))}" if reasons else "")
                 + ". Two-pass renormalisation: "
                 + ("<b>ran</b>" if two_pass.get("ran") else "<b>not run</b>")
                 + (f" ({_esc(two_pass.get('note'))})" if two_pass.get("note") else "")
                 + (f", {100 * float(two_pass['fraction_pass2']):.1f} % of pixels from pass 2"
                    if two_pass.get("fraction_pass2") is not None else "") + ".</p>")
    fits = cal.get("pair_fits") or []
    if fits:
        parts.append("<details><summary>pair fits of the calibration "
                     f"({len(fits)})</summary>"
                     + _table(["i", "j", "a", "b", "weight", "samples"],
                              [[f.get("i"), f.get("j"), f.get("a"), f.get("b"), f.get("weight"),
                                f.get("n_samples")] for f in fits], cls="num") + "</details>")
    if footprints:
        by_index = {int(t.get("index", k)): t for k, t in enumerate(tiles)}
        fp_tiles = [by_index.get(fp.index, {}) for fp in footprints]

        def col(key, sub=None):
            vals = []
            for t in fp_tiles:
                v = t.get(key)
                if sub is not None:
                    v = (v or [None] * 3)[sub] if v is not None and len(v) > sub else None
                vals.append(v)
            return vals
        tp = [(tp_gains[fp.index] if fp.index < len(tp_gains) else t.get("two_pass_gain"))
              if two_pass.get("ran") else None for fp, t in zip(footprints, fp_tiles)]
        if any(t.get("gain_rgb") is not None for t in fp_tiles):
            gain_panel = ("inter-tile gain G (corrected)", [(t.get("gain_rgb") or [None] * 3)[1] for t in fp_tiles])
            offset_panel = ("inter-tile offset G (ADU)", [(t.get("offset_rgb") or [None] * 3)[1] for t in fp_tiles])
        else:
            gain_panel, offset_panel = ("inter-tile gain", col("gain")), ("inter-tile offset (ADU)", col("offset"))
        panels = [gain_panel, offset_panel,
                  ("background offset R (ADU)", col("bg_offsets", 0)),
                  ("background offset G (ADU)", col("bg_offsets", 1)),
                  ("background offset B (ADU)", col("bg_offsets", 2)),
                  ("two-pass gain" + ("" if two_pass.get("ran") else " (not run)"), tp)]
        parts.append("<p>Each tile's footprint coloured by its value (dashed: the autocrop "
                     "window; overlapping footprints blend).</p>")
        parts.append(imgs.add("tile_maps", figures.tile_value_maps(footprints, panels, window)))
    return "\n".join(parts)


def _blocks_section(imgs: _Images, store_path: Path, attrs: dict, shape_hw) -> str:
    journal = open_journal(store_path)
    if journal is None or journal.count_blocks() == 0:
        if journal is not None:
            journal.close()
        return "<p>No run journal (<code>journal.sqlite</code>) with block rows in the store.</p>"
    try:
        return _blocks_body(imgs, journal, attrs, shape_hw)
    finally:
        journal.close()


def _blocks_body(imgs: _Images, journal, attrs: dict, shape_hw) -> str:
    h, w = int(shape_hw[0]), int(shape_hw[1])
    block = int(attrs.get("block") or 0) or max(1, min(h, w))
    nby, nbx = int(math.ceil(h / block)), int(math.ceil(w / block))
    # run start: blocks updated before it were done by an earlier session (kept on resume)
    run_start = None
    for st in journal.stages():
        if st.get("stage") == "run" and st.get("updated") is not None:
            run_start = float(st["updated"]) - float(st.get("seconds") or 0.0) - 1.0
    has_resumed_col = "resumed" in journal.columns("blocks")
    backend_names: list[str] = []
    backend_bits = np.zeros((nby, nbx), dtype=np.int64)
    replays = np.zeros((nby, nbx), dtype=np.int64)
    seconds = np.zeros((nby, nbx), dtype=np.float64)
    resumed = np.zeros((nby, nbx), dtype=bool)
    per_stage: dict[str, dict[str, Any]] = {}
    n_rows = 0
    for rows in journal.iter_blocks():
        n_rows += len(rows)
        single: list[tuple[int, int, int, float, bool, bool]] = []
        for r in rows:
            stage = str(r.get("stage"))
            s = per_stage.setdefault(stage, {"blocks": 0, "backends": {}, "replays": 0,
                                             "resumed": 0, "seconds": 0.0, "max": 0.0,
                                             "states": {}})
            backend = str(r.get("backend") or "?")
            if backend not in backend_names:
                backend_names.append(backend)
            bit = backend_names.index(backend) if len(backend_names) < 63 else 62
            secs = float(r.get("seconds") or 0.0)
            replay = bool(r.get("replay"))
            was_resumed = bool(r.get("resumed")) if has_resumed_col else (
                run_start is not None and r.get("updated") is not None
                and float(r["updated"]) < run_start)
            s["blocks"] += 1
            s["backends"][backend] = s["backends"].get(backend, 0) + 1
            s["replays"] += int(replay)
            s["resumed"] += int(was_resumed)
            s["seconds"] += secs
            s["max"] = max(s["max"], secs)
            state = str(r.get("state") or "?")
            s["states"][state] = s["states"].get(state, 0) + 1
            box = parse_block(r.get("block"))
            if box is None:
                continue
            y0, y1, x0, x1 = box
            by0, by1 = max(0, y0 // block), min(nby, -(-y1 // block))
            bx0, bx1 = max(0, x0 // block), min(nbx, -(-x1 // block))
            if by1 - by0 == 1 and bx1 - bx0 == 1:
                single.append((by0, bx0, bit, secs, replay, was_resumed))
                continue
            area = max(1, (y1 - y0) * (x1 - x0))          # a super-block: share it out
            for by in range(by0, by1):
                oy = min(y1, (by + 1) * block) - max(y0, by * block)
                for bx in range(bx0, bx1):
                    ox = min(x1, (bx + 1) * block) - max(x0, bx * block)
                    if oy <= 0 or ox <= 0:
                        continue
                    backend_bits[by, bx] |= np.int64(1) << bit
                    replays[by, bx] += int(replay)
                    seconds[by, bx] += secs * (oy * ox) / area
                    resumed[by, bx] |= was_resumed
        if single:
            arr = np.array(single, dtype=np.float64)
            by, bx = arr[:, 0].astype(np.int64), arr[:, 1].astype(np.int64)
            np.bitwise_or.at(backend_bits, (by, bx), np.left_shift(1, arr[:, 2].astype(np.int64)))
            np.add.at(replays, (by, bx), arr[:, 4].astype(np.int64))
            np.add.at(seconds, (by, bx), arr[:, 3])
            np.logical_or.at(resumed, (by, bx), arr[:, 5].astype(bool))
    combos: list[str] = []
    backend_idx = np.full((nby, nbx), -1, dtype=np.int64)
    for value in np.unique(backend_bits):
        if value == 0:
            continue
        label = " + ".join(sorted(name for k, name in enumerate(backend_names)
                                  if int(value) >> k & 1))
        if label not in combos:
            combos.append(label)
        backend_idx[backend_bits == value] = combos.index(label)
    parts = [f"<p>From the run journal: {n_rows} block task(s) in {len(per_stage)} stage(s) on "
             f"a grid of {nby} x {nbx} blocks of {block} px. A cell's backend lists every backend "
             "that produced part of it in any stage; replays are block tasks re-run on the CPU "
             "after a device out-of-memory error; resumed blocks were completed by an earlier "
             "run and kept; time is the wall time of every task, shared among the cells it "
             "covered.</p>"]
    parts.append(_table(
        ["stage", "tasks", "backends", "replays after OOM", "resumed", "total s", "mean s",
         "max s", "states"],
        [[k, v["blocks"], ", ".join(f"{b}: {n}" for b, n in sorted(v["backends"].items())),
          v["replays"], v["resumed"], v["seconds"], v["seconds"] / max(1, v["blocks"]), v["max"],
          ", ".join(f"{b}: {n}" for b, n in sorted(v["states"].items()))]
         for k, v in per_stage.items()], cls="num"))
    parts.append(imgs.add("block_map", figures.block_maps(
        backend_idx, combos, replays, seconds, resumed, block, (h, w))))
    return "\n".join(parts)


def _seams_section(imgs: _Images, seams: Sequence[SeamResult], linked8: np.ndarray, window,
                   stride, footprints, rel_threshold: float, n_sigma: float, sky: tuple) -> str:
    p1, p99, rng, n_valid = sky
    flagged = [s for s in seams if s.flagged]
    parts = [f"<p>For each pair of overlapping tiles (a, b): the part of tile a's footprint "
             "outline inside tile b. Along it, the mosaic is read on a profile across the edge "
             "(2 to 8 px on both sides, only where tile a is the one tile whose coverage "
             "changes); the step is the median over the edge of a straight-line fit's jump at "
             "the edge, per channel, so a smooth sky gradient does not count. A boundary is "
             f"<b>flagged</b> when |step| exceeds {100 * rel_threshold:.1f} % of the channel's "
             f"P99 − P1 range and {n_sigma:g} standard errors in any channel.</p>",
             _table(["channel", "P1", "P99", "P99 − P1 (sky range)"],
                    [[c, a, b, r] for c, a, b, r in zip("RGB", p1, p99, rng)], cls="num"),
             f'<p class="{"bad" if flagged else "good"}"><b>{len(flagged)}</b> of {len(seams)} '
             "boundaries flagged" + (": " + _esc(", ".join(s.name for s in flagged)) if flagged else "")
             + ".</p>"]
    if seams:
        rows = []
        for s in seams:
            rows.append([s.name, s.n_points] + [v for v in s.step]
                        + [f"{100 * v:+.2f} %" if math.isfinite(v) else "-" for v in s.rel_step]
                        + [max(s.threshold) if s.threshold else None,
                           "FLAGGED" if s.flagged else "ok"])
        parts.append(_table(["boundary (a | b)", "edge points", "step R (ADU)", "step G (ADU)",
                             "step B (ADU)", "R / range", "G / range", "B / range",
                             "largest threshold (ADU)", "verdict"], rows, cls="num seams",
                            row_classes=["bad" if s.flagged else "" for s in seams]))
        gray8 = (linked8.mean(axis=-1, dtype=np.float32) * 0.75).astype(np.uint8)
        parts.append(imgs.add("seam_map", figures.seam_map(gray8, seams, window, stride,
                                                           rel_threshold, footprints)))
        parts.append(imgs.add("seam_chart", figures.seam_chart(seams, rel_threshold)))
    else:
        parts.append("<p>No tile boundary lies inside the valid mosaic (a single tile, or tiles "
                     "that do not overlap).</p>")
    return "\n".join(parts)


def _run_section(imgs: _Images, attrs: dict, store_path: Path, coverage_facts: dict) -> str:
    options = attrs.get("options") or {}
    defaults = _default_options()
    differing = [[k, json.dumps(v), json.dumps(defaults.get(k)) if k in defaults else "(no default)"]
                 for k, v in sorted(options.items()) if k not in defaults or defaults.get(k) != v]
    summary = attrs.get("summary") or {}
    stages = [(str(s[0]), float(s[1])) for s in (summary.get("stages") or []) if len(s) >= 2]
    y0, y1, x0, x1 = attrs.get("window") or [0, 0, 0, 0]
    shape = attrs.get("shape_hw") or ["?", "?"]
    facts = [
        ["store", str(store_path)],
        ["output grid (H x W)", f"{shape[0]} x {shape[1]}"],
        ["mosaic window [y0, y1, x0, x1]", f"[{y0}, {y1}, {x0}, {x1}]"
         + (" (autocrop fired)" if attrs.get("autocrop_fired") else "")],
        ["block (chunk) edge", attrs.get("block")],
        ["tiles", len((attrs.get("plan") or {}).get("tiles") or [])],
        ["valid fraction of the window", summary.get("valid_fraction")],
        ["peak RSS of the run", f"{float(summary['peak_rss_bytes']) / 2**20:.0f} MiB"
         if summary.get("peak_rss_bytes") else None],
        ["total stage time", f"{sum(s for _, s in stages):.2f} s" if stages else None],
        ["steps run", ", ".join(map(str, attrs.get("steps_run") or [])) or None],
        ["steps not run", ", ".join(map(str, attrs.get("steps_skipped") or [])) or "none"],
    ]
    patch = attrs.get("patchwork") or {}
    if patch:
        facts.append(["patchwork suppressor", ("ran" if patch.get("ran") else "not run")
                      + (f" ({patch['note']})" if patch.get("note") else "")])
    if attrs.get("device"):
        facts.append(["device", json.dumps(attrs["device"])])
    for key in ("warnings",):
        if attrs.get(key):
            facts.append([key, "; ".join(map(str, attrs[key]))])
    parts = ["<h3>facts</h3>", _table(["fact", "value"], facts)]
    parts.append("<h3>options that differ from the defaults</h3>")
    parts.append(_table(["option", "value", "default"], differing) if differing
                 else "<p>All options at their defaults.</p>")
    parts.append("<h3>wall time per stage</h3>")
    if stages:
        parts.append(_table(["stage", "seconds"], stages, cls="num"))
        parts.append(imgs.add("stages", figures.stage_chart(stages)))
    else:
        parts.append("<p>No stage times recorded in the store.</p>")
    parts.append("<h3>versions</h3>")
    stored = attrs.get("versions") or {}
    if stored:
        parts.append("<p>Recorded by the run:</p>" + _table(["package", "version"],
                                                             sorted(stored.items())))
    else:
        parts.append("<p>The store records no versions of the run; this report was built "
                     "with:</p>")
    parts.append(_table(["package", "version (report)"], sorted(_versions().items())))
    return "\n".join(parts)


_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:1.5em auto;max-width:1200px;
color:#222;padding:0 1em}h1{font-size:1.5em}h2{border-bottom:2px solid #ccc;padding-top:.6em}
table{border-collapse:collapse;margin:.6em 0;font-size:.85em}th,td{border:1px solid #ccc;
padding:2px 6px;text-align:left}th{background:#f0f0f0}table.num td{font-variant-numeric:tabular-nums}
tr.bad td{background:#fdd}.bad{color:#b00}.good{color:#070}figure{margin:.6em 0}
img{max-width:100%;height:auto;border:1px solid #ddd}figcaption{font-size:.75em;color:#666}
nav a{margin-right:1em}code{background:#f4f4f4;padding:0 3px}
"""


def _open_mosaic_store(store_path: Path) -> tuple[Any, Any, dict]:
    """(group, the (H, W, 3) mosaic array, attrs) of a store; StoreError naming what is wrong."""
    if not store_path.exists():
        raise StoreError(f"{store_path}: no such mosaic store")
    try:
        group = open_store(store_path)
    except Exception as exc:
        raise StoreError(f"{store_path}: cannot open the mosaic store ({exc})") from exc
    mosaic = get_array(group, "mosaic")
    if mosaic is None or mosaic.ndim != 3:
        raise StoreError(f"{store_path}: no finished mosaic in the store (array 'mosaic' "
                         "(H, W, 3) missing; did the run finish?)")
    return group, mosaic, dict(group.attrs)


@dataclass
class StoreSeams:
    """The seam check of a finished store and the sky facts it is measured against."""

    seams: list[SeamResult]
    sky_range: list[float]           # P99 − P1 per channel (strided preview)
    sky_level: list[float]           # median per channel over the valid preview pixels
    metric: float                    # :func:`~.seams.seam_metric`
    metric_stderr: float             # :func:`~.seams.seam_metric_stderr`

    @property
    def flagged(self) -> list[SeamResult]:
        return [s for s in self.seams if s.flagged]

    @property
    def colour(self) -> list[float]:
        """Sky colour: the R/G and B/G ratios of the sky levels."""
        r, g, b = self.sky_level[:3]
        return [r / g, b / g] if g else [float("nan"), float("nan")]


def store_seams(store_path: str | Path, *, max_side: int = 1024,
                rel_threshold: float = DEFAULT_REL_THRESHOLD,
                n_sigma: float = DEFAULT_N_SIGMA) -> StoreSeams:
    """The seam check of a finished store alone (no HTML), in the report's bounded memory."""
    store_path = Path(store_path)
    group, mosaic, attrs = _open_mosaic_store(store_path)
    shape_hw = (int(mosaic.shape[0]), int(mosaic.shape[1]))
    window = window_of(group, shape_hw)
    stride = max(1, int(math.ceil(max(window[1] - window[0], window[3] - window[2]) / float(max_side))))
    rgb = strided(mosaic, window, stride, dtype=np.float32)
    sky = sky_statistics(rgb)
    valid = np.isfinite(rgb).all(axis=-1)
    level = [float(np.median(rgb[..., c][valid])) if valid.any() else float("nan")
             for c in range(rgb.shape[-1])]
    del rgb
    seams = seam_check(mosaic, tile_footprints(attrs), window, sky[2], rel_threshold=rel_threshold,
                       n_sigma=n_sigma)
    return StoreSeams(seams=seams, sky_range=list(sky[2]), sky_level=level, metric=seam_metric(seams),
                      metric_stderr=seam_metric_stderr(seams))


def _modes_section(comparison: Any) -> str:
    rows = []
    for mode, s in comparison.results.items():
        rows.append([mode + (" (this run)" if mode == comparison.run_mode else ""),
                     f"{s.metric:.5f} ± {s.metric_stderr:.5f}", f"{len(s.flagged)} of {len(s.seams)}",
                     ", ".join(f"{v:.2f}" for v in s.sky_level), f"{s.colour[0]:.4f}", f"{s.colour[1]:.4f}"])
    return ("<p>The same request (tiles, options, grid) run in both photometry modes and measured by "
            "the same seam check. Seam metric: RMS over boundaries (with ≥ 16 edge points) and "
            "channels of step / (P99 − P1), ± its standard error; sky level: median per channel.</p>"
            + _table(["photometry", "seam metric", "flagged", "sky level R, G, B (ADU)", "sky R/G",
                      "sky B/G"], rows, cls="num"))


# ---------------------------------------------------------------------------------- main

def default_html_path(store_path: str | Path) -> Path:
    """``<store folder>/<store name without .zarr>_report.html``."""
    store_path = Path(store_path)
    name = store_path.name[:-5] if store_path.name.endswith(".zarr") else store_path.name
    return store_path.parent / f"{name}_report.html"


def build_report(store_path: str | Path, html_path: str | Path | None = None, *,
                 max_side: int = 1024, rel_threshold: float = DEFAULT_REL_THRESHOLD,
                 n_sigma: float = DEFAULT_N_SIGMA, compare_modes: bool = False) -> ReportResult:
    """Write the HTML report of a finished mosaic store (and its PNGs beside it).

    ``max_side`` bounds the longer side of the preview and maps (the mosaic window is read
    with the integer stride that achieves it).  ``rel_threshold`` and ``n_sigma`` set when
    the seam check flags a boundary.  ``compare_modes`` adds the seam check of the same
    request run in the other photometry mode (:mod:`.modes`; reads the input tiles again).  Raises :class:`~zemosaic_ooc.errors.StoreError` when
    the path is not a mosaic store.
    """
    store_path = Path(store_path)
    html_path = Path(html_path) if html_path is not None else default_html_path(store_path)
    if int(max_side) < 16:
        raise ValueError("max_side must be >= 16")
    group, mosaic, attrs = _open_mosaic_store(store_path)
    shape_hw = (int(mosaic.shape[0]), int(mosaic.shape[1]))
    window = window_of(group, shape_hw)
    wy0, wy1, wx0, wx1 = window
    stride = max(1, int(math.ceil(max(wy1 - wy0, wx1 - wx0) / float(max_side))))
    html_path.parent.mkdir(parents=True, exist_ok=True)
    imgs = _Images(html_path)

    rgb = strided(mosaic, window, stride, dtype=np.float32)
    sky = sky_statistics(rgb)
    footprints = tile_footprints(attrs)
    seams = seam_check(mosaic, footprints, window, sky[2], rel_threshold=rel_threshold,
                       n_sigma=n_sigma)

    release_memory()
    body = {}
    body["preview"], linked8 = _preview_section(imgs, rgb, footprints, window, stride)
    release_memory()
    body["coverage"], cov_facts = _coverage_section(imgs, group, window, stride, footprints)
    release_memory()
    body["tiles"] = _tiles_section(imgs, attrs, footprints, window)
    body["blocks"] = _blocks_section(imgs, store_path, attrs, shape_hw)
    release_memory()
    preview_hw = (int(rgb.shape[0]), int(rgb.shape[1]))
    del rgb
    body["seams"] = _seams_section(imgs, seams, linked8, window, stride, footprints, rel_threshold,
                                   n_sigma, sky)
    del linked8
    body["run"] = _run_section(imgs, attrs, store_path, cov_facts)
    sections = list(SECTIONS)
    comparison = None
    if compare_modes:
        from .modes import compare_photometry_modes
        comparison = compare_photometry_modes(store_path, work_dir=html_path.parent, max_side=max_side,
                                              rel_threshold=rel_threshold, n_sigma=n_sigma)
        body["modes"] = _modes_section(comparison)
        sections.append("modes")

    flagged = [s for s in seams if s.flagged]
    now = _dt.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M:%S %Z")
    unfinished = "" if attrs.get("summary") else (
        '<p class="bad"><b>The run has not finished</b> (the store has no run summary): the '
        "pictures show what the store holds now.</p>")
    head = unfinished + (f"<p>Store <code>{_esc(store_path)}</code>: mosaic {wy1 - wy0} x {wx1 - wx0} px "
            f"(H x W) from {len(footprints)} tile(s); pictures at 1 px = {stride} mosaic px. "
            f"Seam check: <span class=\"{'bad' if flagged else 'good'}\">{len(flagged)} of "
            f"{len(seams)} boundaries flagged</span>. Report made {now} by zemosaic-ooc.</p>")
    nav = "<nav>" + "".join(f'<a href="#{k}">{_esc(SECTION_TITLES[k].split(":")[0])}</a>'
                            for k in sections) + "</nav>"
    doc = ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
           f"<title>zemosaic-ooc report: {_esc(store_path.name)}</title>"
           f"<style>{_CSS}</style></head><body>\n"
           f"<h1>zemosaic-ooc report: {_esc(store_path.name)}</h1>\n{head}\n{nav}\n"
           + "\n".join(_section(k, body[k]) for k in sections)
           + "\n</body></html>\n")
    with written_atomically(html_path) as tmp:
        tmp.write_text(doc, encoding="utf-8")
    return ReportResult(html_path=html_path, images=dict(imgs.paths), image_sizes=dict(imgs.sizes),
                        seams=list(seams), flagged=flagged, sections=sections, stride=stride,
                        preview_hw=preview_hw, sky_range=list(sky[2]), rel_threshold=rel_threshold,
                        mode_comparison=comparison)
