"""Where two runs part: every stage array and every numeric attribute of two output stores.

    python tools/stage_diff.py A.zarr B.zarr [--json FILE]
    python tools/stage_diff.py --run TILES_DIR WORK [--device gpu|emulate|emulate-cupy-sums] [--workers N]
                               [--first-pass] [--json FILE]

The first form compares two finished stores (e.g. a CPU and a GPU run of one set).  The
second runs the full default pipeline twice on ``TILES_DIR`` — numpy backend, then the device
backend (``gpu``: CuPy; ``emulate``: the device code path with numpy standing in, which must
give zeros; ``emulate-cupy-sums``: the same with filters that sum in the input's precision, as
CuPy's do, :class:`InputPrecisionNdimage`) — into ``WORK`` and compares them.

For each array (``mosaic``, ``coverage``, ``alpha`` and every ``stages/*``; the tile store is
skipped): the count of pixels that differ, max |Δ| and RMS over the first store's P99 − P1
(finite pixels of both), the NaN masks' agreement, and where the largest difference is, with
both values there.  For the attributes (the plan's tile gains and offsets, background
offsets, the two-pass gains and P5, the patchwork's scalars): each numeric leaf that differs,
with its relative difference, largest first.  Arrays are read one row band at a time
(float64 only per band), so a 16×2048² set's stores fit in a few GiB.

The GPU parity check (:mod:`tools.gpu_check`) says whether two mosaics agree; this says in
which stage they first part and by how much.
"""
from __future__ import annotations

import argparse
import json
import math
import shutil
import sys
import warnings
from pathlib import Path
from typing import Any, Iterator

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

#: arrays of an output store that are not stage results
SKIPPED_GROUPS = ("tiles",)
#: attributes that are not results (timings, paths, the options echo, wall clocks)
SKIPPED_ATTRS = ("summary", "run_state", "options", "output_wcs_header", "steps_run", "steps_skipped")


def store_arrays(root: Path) -> dict[str, Any]:
    """Every array of the store at ``root`` by its path ("mosaic", "stages/scale_map", …)."""
    import zarr

    found: dict[str, Any] = {}

    def walk(group: Any, prefix: str) -> None:
        for name, member in group.members():
            if isinstance(member, zarr.Group):
                if name not in SKIPPED_GROUPS:
                    walk(member, prefix + name + "/")
            else:
                found[prefix + name] = member

    with warnings.catch_warnings():
        # the run's journal.sqlite sits in the store's folder: zarr warns it is no array
        warnings.filterwarnings("ignore", message=".*journal.sqlite.*")
        walk(zarr.open_group(str(root), mode="r"), "")
    return found


def _bands(array: Any, rows: int) -> Iterator[tuple[int, np.ndarray]]:
    for y0 in range(0, array.shape[0], rows):
        yield y0, np.asarray(array[y0:y0 + rows])


def compare_array(a: Any, b: Any, *, band_rows: int = 512) -> dict[str, Any]:
    """Difference of two same-shaped arrays (H, W) or (H, W, C), read band by band.

    Spans (P99 − P1) come from a strided sample of ``a``'s finite values (at most ~4 M), per
    channel; the max and RMS are over pixels finite in both.
    """
    if a.shape != b.shape:
        return {"shape_a": list(a.shape), "shape_b": list(b.shape), "note": "shapes differ"}
    channels = a.shape[2] if len(a.shape) == 3 else 1
    stride = max(1, int(math.sqrt(a.shape[0] * a.shape[1] / 4e6)))
    sample = np.asarray(a[::stride, ::stride]).astype(np.float64).reshape(-1, channels)
    spans = []
    for c in range(channels):
        finite = sample[:, c][np.isfinite(sample[:, c])]
        p1, p99 = np.percentile(finite, [1, 99]) if finite.size else (0.0, 1.0)
        spans.append(max(float(p99 - p1), 1e-30))
    differing = 0
    nan_disagree = 0
    sq = np.zeros(channels)
    count = np.zeros(channels)
    worst = [(-1.0, None, None, None)] * channels
    for y0, band_a in _bands(a, band_rows):
        band_b = np.asarray(b[y0:y0 + band_a.shape[0]])
        fa = band_a.astype(np.float64).reshape(band_a.shape[0], band_a.shape[1], channels)
        fb = band_b.astype(np.float64).reshape(fa.shape)
        finite_a, finite_b = np.isfinite(fa), np.isfinite(fb)
        nan_disagree += int(np.count_nonzero(finite_a != finite_b))
        both = finite_a & finite_b
        delta = np.where(both, np.abs(fa - fb), 0.0)
        differing += int(np.count_nonzero(np.any(delta > 0, axis=-1)))
        for c in range(channels):
            sq[c] += float(np.sum(delta[..., c] ** 2))
            count[c] += float(np.count_nonzero(both[..., c]))
            flat = int(np.argmax(delta[..., c]))
            y, x = divmod(flat, delta.shape[1])
            if delta[y, x, c] > worst[c][0]:
                worst[c] = (float(delta[y, x, c]), (y0 + y, x), float(fa[y, x, c]), float(fb[y, x, c]))
    return {
        "dtype": str(a.dtype), "shape": list(a.shape), "differing_pixels": differing,
        "nan_mask_disagreements": nan_disagree,
        "max_over_span": [w[0] / s for w, s in zip(worst, spans)],
        "rms_over_span": [math.sqrt(q / max(n, 1.0)) / s for q, n, s in zip(sq, count, spans)],
        "span": spans,
        "worst": [{"yx": w[1], "a": w[2], "b": w[3]} for w in worst],
    }


def numeric_leaves(value: Any, path: str = "") -> Iterator[tuple[str, float]]:
    """(path, number) for every int/float leaf of nested dicts and lists."""
    if isinstance(value, bool) or value is None:
        return
    if isinstance(value, (int, float)):
        yield path, float(value)
    elif isinstance(value, dict):
        for key, item in value.items():
            yield from numeric_leaves(item, f"{path}.{key}" if path else str(key))
    elif isinstance(value, (list, tuple)):
        for i, item in enumerate(value):
            yield from numeric_leaves(item, f"{path}[{i}]")


def compare_attrs(a: dict[str, Any], b: dict[str, Any]) -> list[dict[str, Any]]:
    """Every numeric attribute leaf whose values differ, largest relative difference first."""
    left = dict(numeric_leaves({k: v for k, v in a.items() if k not in SKIPPED_ATTRS}))
    right = dict(numeric_leaves({k: v for k, v in b.items() if k not in SKIPPED_ATTRS}))
    rows = []
    for path in sorted(set(left) | set(right)):
        x, y = left.get(path), right.get(path)
        if x is None or y is None:
            rows.append({"path": path, "a": x, "b": y, "rel": float("inf")})
        elif not (x == y or (math.isnan(x) and math.isnan(y))):
            rows.append({"path": path, "a": x, "b": y, "rel": abs(x - y) / max(abs(x), abs(y), 1e-300)})
    return sorted(rows, key=lambda row: -row["rel"])


def compare_stores(a_root: Path, b_root: Path) -> dict[str, Any]:
    import zarr

    arrays_a, arrays_b = store_arrays(a_root), store_arrays(b_root)
    report: dict[str, Any] = {"arrays": {}, "only_in_a": sorted(set(arrays_a) - set(arrays_b)),
                              "only_in_b": sorted(set(arrays_b) - set(arrays_a))}
    for name in sorted(set(arrays_a) & set(arrays_b)):
        report["arrays"][name] = compare_array(arrays_a[name], arrays_b[name])
    report["attrs"] = compare_attrs(dict(zarr.open_group(str(a_root), mode="r").attrs),
                                    dict(zarr.open_group(str(b_root), mode="r").attrs))
    return report


def print_report(report: dict[str, Any], attr_rows: int = 25) -> None:
    def fmt(values: list[float]) -> str:
        return "[" + ", ".join(f"{v:.1e}" for v in values) + "]"

    for name, row in report["arrays"].items():
        if "note" in row:
            print(f"{name:32s} {row['note']}: {row['shape_a']} vs {row['shape_b']}")
            continue
        worst = max(range(len(row["max_over_span"])), key=lambda c: row["max_over_span"][c])
        w = row["worst"][worst]
        print(f"{name:32s} differ {row['differing_pixels']:>10d} px, NaN masks differ {row['nan_mask_disagreements']}, "
              f"max/span {fmt(row['max_over_span'])} rms/span {fmt(row['rms_over_span'])}; "
              f"worst at {w['yx']} (channel {worst}): {w['a']!r} vs {w['b']!r}", flush=True)
    for label in ("only_in_a", "only_in_b"):
        if report[label]:
            print(f"{label}: {', '.join(report[label])}")
    rows = report["attrs"]
    print(f"attributes that differ: {len(rows)}" + (f" (largest {attr_rows})" if len(rows) > attr_rows else ""))
    for row in rows[:attr_rows]:
        print(f"  {row['path']:50s} {row['a']!r} vs {row['b']!r} (rel {row['rel']:.2e})")


class InputPrecisionNdimage:
    """``scipy.ndimage`` summing as ``cupyx.scipy.ndimage`` does: ``correlate1d`` (and
    ``gaussian_filter``, separable over it) accumulate tap by tap in the input's precision
    (``result_type(input, float32)``: float32 lines in float32), where SciPy sums in float64.
    With ``--device emulate-cupy-sums`` the device code path runs on numpy with this ndimage,
    so the summation-precision part of a CPU/GPU difference shows without a GPU.  Slow (a
    Python loop over the taps): minutes on 16 tiles of 1024²."""

    @staticmethod
    def correlate1d(values: np.ndarray, weights: Any, axis: int = -1, output: Any = None,
                    mode: str = "reflect", cval: float = 0.0, origin: int = 0) -> np.ndarray:
        if origin != 0 or mode not in ("reflect", "mirror"):
            raise NotImplementedError("origin 0 and modes reflect / mirror only")
        weights = np.asarray(weights)
        precision = np.result_type(values.dtype, np.float32)
        moved = np.moveaxis(np.asarray(values).astype(precision), axis, -1)
        radius = weights.size // 2
        padded = np.pad(moved, [(0, 0)] * (moved.ndim - 1) + [(radius, radius)],
                        mode={"reflect": "symmetric", "mirror": "reflect"}[mode])
        total = np.zeros(moved.shape, dtype=precision)
        for j, w in enumerate(weights.astype(precision)):
            total += padded[..., j:j + moved.shape[-1]] * w
        return np.moveaxis(total, -1, axis).astype(output if output is not None else precision)

    @classmethod
    def gaussian_filter(cls, values: np.ndarray, sigma: float, output: Any = None, mode: str = "reflect",
                        cval: float = 0.0, truncate: float = 4.0) -> np.ndarray:
        from zemosaic_ooc.phase5.filters import scipy_gaussian_weights

        weights = scipy_gaussian_weights(sigma, truncate)
        along_rows = cls.correlate1d(values, weights, 0, output, mode)
        return cls.correlate1d(along_rows, weights, 1, output, mode)


def run_pair(tiles_dir: Path, work: Path, device: str, workers: int | None, first_pass: bool) -> tuple[Path, Path]:
    """The default pipeline on numpy, then on the device backend, into ``work``/{cpu,device}.zarr."""
    import time

    from zemosaic_ooc.backend import cupy_backend, numpy_as_device_backend
    from zemosaic_ooc.options import Phase5Options
    from zemosaic_ooc.phase5.pipeline import run_pipeline

    if device == "gpu":
        device_backend = cupy_backend()
    else:
        device_backend = numpy_as_device_backend()
        if device == "emulate-cupy-sums":
            device_backend.ndimage = InputPrecisionNdimage()

    tiles = sorted(tiles_dir.glob("*.fits"))
    kwargs: dict[str, Any] = {"gpu": "off"}
    if first_pass:
        kwargs.update(two_pass_coverage_renorm=False, patchwork_suppressor_enabled=False)
    opts = Phase5Options(**kwargs)
    outputs = (work / "cpu.zarr", work / "device.zarr")
    for out, backend in zip(outputs, (None, device_backend)):
        shutil.rmtree(out, ignore_errors=True)
        t0 = time.perf_counter()
        summary = run_pipeline(tiles, out, opts, workers=workers, device=backend)
        print(f"{out.name}: {time.perf_counter() - t0:.1f} s, replays {summary.device.get('replays')}, "
              f"GPU disabled: {summary.device.get('disabled_reason')}", flush=True)
    return outputs


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="every stage array and numeric attribute of two stores, compared")
    parser.add_argument("paths", nargs=2, help="two stores, or with --run: a tile folder and a work folder")
    parser.add_argument("--run", action="store_true", help="run numpy and the device backend first")
    parser.add_argument("--device", choices=("gpu", "emulate", "emulate-cupy-sums"), default="gpu",
                        help="with --run: CuPy; numpy standing in (must give zeros); or numpy standing "
                             "in with CuPy's summation precision in the filters (InputPrecisionNdimage)")
    parser.add_argument("--workers", type=int, default=None)
    parser.add_argument("--first-pass", action="store_true", help="with --run: first pass only")
    parser.add_argument("--json", default=None)
    ns = parser.parse_args(argv)
    a, b = Path(ns.paths[0]), Path(ns.paths[1])
    if ns.run:
        b.mkdir(parents=True, exist_ok=True)
        a, b = run_pair(a, b, ns.device, ns.workers, ns.first_pass)
    report = compare_stores(a, b)
    print_report(report)
    if ns.json:
        Path(ns.json).write_text(json.dumps(report, indent=1, default=str))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
