"""Drawings of the report: Pillow for the previews (drawn at their own pixel size),
matplotlib (Agg backend, no display needed) for maps and charts.  Every function
returns PNG bytes."""
from __future__ import annotations

import io
import math
from typing import Any, Sequence

import numpy as np

from .footprints import TileFootprint

OUTLINE_COLOURS = [(255, 80, 80), (80, 220, 80), (90, 150, 255), (255, 210, 60),
                   (230, 90, 230), (60, 220, 220), (255, 150, 60), (180, 180, 180)]


def _mpl():
    import matplotlib
    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt
    return matplotlib, plt


def _png_from_figure(fig) -> bytes:
    _, plt = _mpl()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=fig.dpi)
    plt.close(fig)
    return buf.getvalue()


def png_from_array(img: np.ndarray) -> bytes:
    from PIL import Image
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="PNG")
    return buf.getvalue()


def to_preview_xy(polygon: np.ndarray, window: Sequence[int], stride: int) -> np.ndarray:
    """Grid pixel (x, y) -> preview pixel (x, y)."""
    return np.column_stack([(polygon[:, 0] - window[2]) / stride, (polygon[:, 1] - window[0]) / stride])


def preview_with_outlines(img8: np.ndarray, footprints: Sequence[TileFootprint],
                          window: Sequence[int], stride: int) -> bytes:
    """The stretched preview with every tile's footprint outlined and labelled (same size)."""
    from PIL import Image, ImageDraw
    image = Image.fromarray(img8)
    draw = ImageDraw.Draw(image)
    width = max(1, int(round(min(image.size) / 400)))
    for k, fp in enumerate(footprints):
        colour = OUTLINE_COLOURS[k % len(OUTLINE_COLOURS)]
        pts = [tuple(p) for p in to_preview_xy(fp.polygon, window, stride).tolist()]
        if len(pts) >= 2:
            draw.line(pts + [pts[0]], fill=colour, width=width)
        cx, cy = fp.centroid
        px, py = (cx - window[2]) / stride, (cy - window[0]) / stride
        label = fp.tile_id
        draw.text((px + 1, py + 1), label, fill=(0, 0, 0))
        draw.text((px, py), label, fill=colour)
    return png_from_array(np.asarray(image))


def _figsize(h: int, w: int, panels: int = 1, base: float = 7.5) -> tuple[float, float]:
    aspect = h / max(1, w)
    width = base if panels == 1 else min(16.0, base * 0.75 * panels)
    height = min(12.0, max(2.5, (width / panels) * aspect + 0.8))
    return width, height


def _outline_axes(ax, footprints: Sequence[TileFootprint], window: Sequence[int], stride: int,
                  colour: str = "white", labels: bool = False) -> None:
    for fp in footprints:
        pts = to_preview_xy(fp.polygon, window, stride)
        pts = np.vstack([pts, pts[:1]])
        ax.plot(pts[:, 0], pts[:, 1], color=colour, lw=0.7, alpha=0.8)
        if labels:
            cx, cy = fp.centroid
            ax.text((cx - window[2]) / stride, (cy - window[0]) / stride, fp.tile_id,
                    color=colour, fontsize=7, ha="center", va="center")


def colourize(data: np.ndarray, cmap_name: str, vmin: float, vmax: float,
              rows_per_piece: int = 128) -> np.ndarray:
    """(h, w) values -> (h, w, 4) uint8 RGBA through a colour map, in row pieces (NaN: clear),
    so matplotlib never holds float64 RGBA copies of the whole picture."""
    _, plt = _mpl()
    cmap = plt.get_cmap(cmap_name)
    span = float(vmax - vmin) if vmax > vmin else 1.0
    out = np.zeros(data.shape + (4,), dtype=np.uint8)
    for r in range(0, data.shape[0], rows_per_piece):
        part = data[r:r + rows_per_piece].astype(np.float32)
        bad = ~np.isfinite(part)
        norm = np.clip((part - np.float32(vmin)) / np.float32(span), 0.0, 1.0)
        norm[bad] = 0.0
        rgba = cmap(norm, bytes=True)
        rgba[bad] = 0
        out[r:r + rows_per_piece] = rgba
    return out


DISPLAY_PX = 800


def _display_image(ax, rgb: np.ndarray) -> None:
    """Show a uint8 RGB(A) picture in preview coordinates, first shrunk (nearest) to at most
    ``DISPLAY_PX`` on its longer side: the axes cannot show more, and matplotlib's resampling
    of a large picture costs several float copies of it."""
    from PIL import Image
    h, w = rgb.shape[:2]
    if max(h, w) > DISPLAY_PX:
        scale = DISPLAY_PX / float(max(h, w))
        size = (max(1, int(round(w * scale))), max(1, int(round(h * scale))))
        rgb = np.asarray(Image.fromarray(rgb).resize(size, Image.NEAREST))
    ax.imshow(rgb, interpolation="nearest", extent=(-0.5, w - 0.5, h - 0.5, -0.5))


def map_image(data: np.ndarray, title: str, *, cmap: str, label: str,
              footprints: Sequence[TileFootprint], window: Sequence[int], stride: int,
              vmin: float | None = None, vmax: float | None = None) -> bytes:
    """One map (coverage, alpha, pass-2 mask) with colour bar and tile outlines."""
    _, plt = _mpl()
    from matplotlib.colors import Normalize
    h, w = data.shape
    if vmin is None or vmax is None:
        finite = data[np.isfinite(data)]
        vmin = float(finite.min()) if vmin is None and finite.size else (vmin or 0.0)
        vmax = float(finite.max()) if vmax is None and finite.size else (vmax or 1.0)
    rgba = colourize(data, cmap, float(vmin), float(vmax))
    fig, ax = plt.subplots(figsize=_figsize(h, w), dpi=100, constrained_layout=True)
    _display_image(ax, rgba)
    del rgba
    _outline_axes(ax, footprints, window, stride, colour="white", labels=True)
    ax.set_xlim(-0.5, w - 0.5)
    ax.set_ylim(h - 0.5, -0.5)
    ax.set_title(title, fontsize=10)
    ax.set_xlabel(f"preview px (1 = {stride} mosaic px)", fontsize=8)
    sm = plt.cm.ScalarMappable(norm=Normalize(vmin, vmax), cmap=plt.get_cmap(cmap))
    fig.colorbar(sm, ax=ax, shrink=0.85, label=label)
    return _png_from_figure(fig)


def tile_value_maps(footprints: Sequence[TileFootprint], panels: Sequence[tuple[str, Sequence[float]]],
                    window: Sequence[int], cmap: str = "coolwarm") -> bytes:
    """A grid of panels; each colours every tile's footprint by one per-tile value."""
    _, plt = _mpl()
    from matplotlib.collections import PolyCollection
    from matplotlib.colors import Normalize
    n = len(panels)
    cols = min(3, n)
    rows = int(math.ceil(n / cols))
    wy0, wy1, wx0, wx1 = window
    h, w = wy1 - wy0, wx1 - wx0
    panel_w = 4.6
    fig_h = min(4.0 * rows + 0.5, rows * (panel_w * h / max(1, w) + 1.0) + 0.5)
    fig, axes = plt.subplots(rows, cols, figsize=(panel_w * cols, max(2.5, fig_h)), dpi=100,
                             constrained_layout=True, squeeze=False)
    order = sorted(range(len(footprints)),
                   key=lambda i: -abs(float(np.ptp(footprints[i].polygon[:, 0]) * np.ptp(footprints[i].polygon[:, 1]))))
    for k, (title, values) in enumerate(panels):
        ax = axes[k // cols][k % cols]
        vals = np.array([np.nan if v is None else float(v) for v in values], dtype=np.float64)
        finite = vals[np.isfinite(vals)]
        if finite.size:
            lo, hi = float(finite.min()), float(finite.max())
            if hi - lo < 1e-9 * max(1.0, abs(hi)):
                lo, hi = lo - max(1e-3, abs(lo) * 1e-3), hi + max(1e-3, abs(hi) * 1e-3)
        else:
            lo, hi = 0.0, 1.0
        norm = Normalize(vmin=lo, vmax=hi)
        polys = [footprints[i].polygon for i in order]
        colours = [vals[i] if i < vals.size else np.nan for i in order]
        coll = PolyCollection(polys, array=np.ma.masked_invalid(np.array(colours)), cmap=cmap,
                              norm=norm, alpha=0.55, edgecolors="black", linewidths=0.8)
        ax.add_collection(coll)
        for i, fp in enumerate(footprints):
            cx, cy = fp.centroid
            v = vals[i] if i < vals.size else np.nan
            ax.text(cx, cy, f"{fp.tile_id}\n{v:.4g}" if np.isfinite(v) else f"{fp.tile_id}\n-",
                    fontsize=7, ha="center", va="center")
        ax.add_patch(plt.Rectangle((wx0 - 0.5, wy0 - 0.5), w, h, fill=False, ls="--", lw=0.8,
                                   edgecolor="grey"))
        allx = np.concatenate([fp.polygon[:, 0] for fp in footprints] + [np.array([wx0, wx1])])
        ally = np.concatenate([fp.polygon[:, 1] for fp in footprints] + [np.array([wy0, wy1])])
        pad = 0.02 * max(np.ptp(allx), np.ptp(ally), 1.0)
        ax.set_xlim(allx.min() - pad, allx.max() + pad)
        ax.set_ylim(ally.max() + pad, ally.min() - pad)
        ax.set_aspect("equal")
        ax.set_title(title, fontsize=9)
        ax.tick_params(labelsize=7)
        fig.colorbar(coll, ax=ax, shrink=0.8)
    for k in range(n, rows * cols):
        axes[k // cols][k % cols].axis("off")
    return _png_from_figure(fig)


def block_maps(backend_idx: np.ndarray, backend_names: Sequence[str], replays: np.ndarray,
               seconds: np.ndarray, resumed: np.ndarray, block: int, shape_hw: Sequence[int]) -> bytes:
    """Three panels on the block grid: backend, replays after OOM (and resumed blocks), time."""
    _, plt = _mpl()
    from matplotlib.colors import ListedColormap, BoundaryNorm
    nby, nbx = backend_idx.shape
    h, w = int(shape_hw[0]), int(shape_hw[1])
    # cells drawn at full block size; the partial last row/column is clipped by the limits
    extent = (0, nbx * block, nby * block, 0)
    fig, axes = plt.subplots(1, 3, figsize=_figsize(h, w, panels=3, base=6.0), dpi=100,
                             constrained_layout=True, squeeze=False)
    axes = axes[0]
    n = max(1, len(backend_names))
    palette = ["#d9d9d9", "#4c72b0", "#dd8452", "#55a868", "#c44e52", "#8172b3", "#937860",
               "#da8bc3", "#8c8c8c", "#ccb974", "#64b5cd"]
    colours = [palette[0]] + [palette[1 + (k % (len(palette) - 1))] for k in range(n)]
    cmap = ListedColormap(colours)
    norm = BoundaryNorm(np.arange(-1.5, n + 0.5), cmap.N)
    show = dict(extent=extent, interpolation="nearest", aspect="equal")
    im = axes[0].imshow(backend_idx, cmap=cmap, norm=norm, **show)
    cb = fig.colorbar(im, ax=axes[0], shrink=0.8, ticks=np.arange(-1, n))
    cb.ax.set_yticklabels(["no block"] + list(backend_names), fontsize=7)
    axes[0].set_title("backend per block", fontsize=9)
    im = axes[1].imshow(replays, cmap="Reds", vmin=0,
                        vmax=max(1, int(replays.max()) if replays.size else 1), **show)
    fig.colorbar(im, ax=axes[1], shrink=0.8, label="CPU replays after OOM")
    ys, xs = np.nonzero(resumed)
    if ys.size:
        axes[1].scatter((xs + 0.5) * block, (ys + 0.5) * block, marker="x",
                        s=14 if ys.size < 2000 else 2, c="blue",
                        label="resumed (done by an earlier run)")
        axes[1].legend(fontsize=7, loc="lower right")
    axes[1].set_title("replays after OOM, resumed blocks", fontsize=9)
    im = axes[2].imshow(np.ma.masked_where(seconds <= 0, seconds), cmap="magma", **show)
    fig.colorbar(im, ax=axes[2], shrink=0.8, label="seconds (all stages)")
    axes[2].set_title("time per block", fontsize=9)
    for ax in axes:
        if nby * nbx <= 64 * 64:
            for y in range(0, h, block):
                ax.axhline(y, color="white", lw=0.4)
            for x in range(0, w, block):
                ax.axvline(x, color="white", lw=0.4)
        ax.set_xlim(0, w)
        ax.set_ylim(h, 0)
        ax.tick_params(labelsize=7)
    return _png_from_figure(fig)


def seam_map(gray8: np.ndarray, seams: Sequence[Any], window: Sequence[int], stride: int,
             rel_threshold: float, footprints: Sequence[TileFootprint]) -> bytes:
    """The preview (grey) with every checked boundary drawn, coloured by its largest step."""
    _, plt = _mpl()
    from matplotlib.colors import Normalize
    h, w = gray8.shape
    fig, ax = plt.subplots(figsize=_figsize(h, w), dpi=100, constrained_layout=True)
    _display_image(ax, np.repeat(gray8[:, :, None], 3, axis=2))
    _outline_axes(ax, footprints, window, stride, colour="#888888")
    vmax = max(2.0 * rel_threshold * 100.0, 1e-3)
    norm = Normalize(0.0, vmax)
    cmap = plt.get_cmap("plasma")
    for s in seams:
        if s.xs is None or s.xs.size == 0:
            continue
        worst = s.worst_rel * 100.0 if math.isfinite(s.worst_rel) else 0.0
        px = (s.xs - window[2]) / stride
        py = (s.ys - window[0]) / stride
        ax.scatter(px, py, s=6 if s.flagged else 2, color="red" if s.flagged else cmap(norm(worst)),
                   linewidths=0)
        mx, my = (s.mid_xy[0] - window[2]) / stride, (s.mid_xy[1] - window[0]) / stride
        ax.text(mx, my, f"{s.a}|{s.b} {worst:.1f}%", fontsize=6,
                color="red" if s.flagged else "yellow",
                bbox=dict(facecolor="black", alpha=0.5, pad=1, lw=0))
    sm = plt.cm.ScalarMappable(norm=norm, cmap=cmap)
    fig.colorbar(sm, ax=ax, shrink=0.85, label="largest |step| / (P99 - P1), %  (red: flagged)")
    ax.set_xlim(-0.5, w - 0.5)
    ax.set_ylim(h - 0.5, -0.5)
    ax.set_title("seam check: tile boundaries", fontsize=10)
    return _png_from_figure(fig)


def seam_chart(seams: Sequence[Any], rel_threshold: float) -> bytes:
    """Bars: |step| / range per channel for every boundary, with the threshold line."""
    _, plt = _mpl()
    n = max(1, len(seams))
    fig, ax = plt.subplots(figsize=(min(16.0, max(6.0, 0.45 * n + 2.0)), 3.6), dpi=100,
                           constrained_layout=True)
    colours = ["#d62728", "#2ca02c", "#1f77b4"]
    width = 0.27
    x = np.arange(len(seams))
    n_ch = max((len(s.rel_step) for s in seams), default=3)
    for c in range(n_ch):
        vals = [abs(s.rel_step[c]) * 100.0 if c < len(s.rel_step) and math.isfinite(s.rel_step[c])
                else 0.0 for s in seams]
        ax.bar(x + (c - (n_ch - 1) / 2) * width, vals, width, color=colours[c % 3],
               label="RGB"[c] if n_ch == 3 else f"ch {c}")
    ax.axhline(rel_threshold * 100.0, color="black", ls="--", lw=1, label="threshold")
    for i, s in enumerate(seams):
        if s.flagged:
            ax.annotate("!", (i, 0), xytext=(0, -14), textcoords="offset points", ha="center",
                        color="red", fontsize=10, fontweight="bold")
    ax.set_xticks(x)
    ax.set_xticklabels([f"{s.a}|{s.b}" for s in seams], fontsize=7, rotation=90 if n > 20 else 0)
    ax.set_ylabel("|median step| / (P99 - P1), %", fontsize=8)
    ax.set_xlabel("boundary: outline of tile a inside tile b", fontsize=8)
    ax.legend(fontsize=7)
    ax.set_title("step across each tile boundary", fontsize=10)
    return _png_from_figure(fig)


def stage_chart(stages: Sequence[tuple[str, float]]) -> bytes:
    _, plt = _mpl()
    n = max(1, len(stages))
    fig, ax = plt.subplots(figsize=(7.0, 0.35 * n + 1.2), dpi=100, constrained_layout=True)
    names = [str(s[0]) for s in stages]
    secs = [float(s[1]) for s in stages]
    ax.barh(np.arange(len(stages)), secs, color="#4c72b0")
    ax.set_yticks(np.arange(len(stages)))
    ax.set_yticklabels(names, fontsize=8)
    ax.invert_yaxis()
    for i, v in enumerate(secs):
        ax.text(v, i, f" {v:.2f} s", va="center", fontsize=7)
    ax.set_xlabel("wall time, s", fontsize=8)
    ax.set_title("wall time per stage", fontsize=10)
    return _png_from_figure(fig)
