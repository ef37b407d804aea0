"""Helpers for comparing a zemosaic_ooc store with ZeMosaic's golden reference files."""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from astropy.io import fits

from zemosaic_ooc.store.export import read_window


@dataclass
class Comparison:
    median_ratio_minus_1: list[float]
    rms_over_range: list[float]
    max_over_range: list[float]
    mask_agreement: float
    valid_both: int


def read_store_window(store_path: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray, dict]:
    """(mosaic HWC, coverage, alpha, attrs) of a store, cropped to its autocrop window."""
    return read_window(store_path)


def read_reference(fixture_dir: Path, name: str) -> tuple[np.ndarray, np.ndarray, np.ndarray, fits.Header]:
    path = fixture_dir / name
    mosaic = np.moveaxis(fits.getdata(path, 0), 0, -1).astype(np.float32)
    return (mosaic, fits.getdata(path, "COVERAGE"), fits.getdata(path, "ALPHA"), fits.getheader(path, 0))


def compare(ours: np.ndarray, ref: np.ndarray) -> Comparison:
    """The fixture README's metrics, per channel over pixels valid in both (all channels finite)."""
    valid_ours = np.isfinite(ours).all(-1)
    valid_ref = np.isfinite(ref).all(-1)
    both = valid_ours & valid_ref
    ratios, rms, mx = [], [], []
    for c in range(3):
        o = ours[..., c][both].astype(np.float64)
        r = ref[..., c][both].astype(np.float64)
        p1, p99 = np.percentile(r, [1, 99])
        ratios.append(float(np.median(o) / np.median(r) - 1.0))
        rms.append(float(np.sqrt(np.mean((o - r) ** 2)) / (p99 - p1)))
        mx.append(float(np.max(np.abs(o - r)) / (p99 - p1)))
    return Comparison(ratios, rms, mx, float(np.mean(valid_ours == valid_ref)), int(both.sum()))


def load_ref_json(fixture_dir: Path) -> dict:
    return json.loads((fixture_dir / "ref.json").read_text())


def noise_floor(ref: dict, variant: str, channel: int) -> float:
    """1e-5, or the reference's own run-to-run RMS for ``variant`` where its README measures more."""
    floors = [1e-5]
    metrics = ref.get("metrics", {})
    for key in ("determinism", "determinism_separate_process"):
        entry = metrics.get(key, {}).get(variant)
        for item in (entry if isinstance(entry, list) else [entry]):
            if item:
                floors.append(float(item["rms_over_range"][channel]))
    return max(floors)


def assert_same_mosaic(ours: tuple, ref: tuple, *, tol: float = 1e-6,
                       coverage_tol: float | None = None) -> None:
    """Two store windows (mosaic, coverage, alpha, attrs) agree: identical valid masks and alpha,
    max |Δ| < tol × (P99 − P1 of ``ref``) per channel; coverage identical, or within
    ``coverage_tol`` × max(1, max coverage) when given."""
    a, cov_a, alpha_a, _ = ours
    b, cov_b, alpha_b, _ = ref
    assert a.shape == b.shape
    assert np.array_equal(np.isfinite(a), np.isfinite(b))
    assert np.array_equal(alpha_a, alpha_b)
    both = np.isfinite(b).all(-1)
    for c in range(3):
        p1, p99 = np.percentile(b[..., c][both], [1, 99])
        assert np.max(np.abs(a[..., c][both] - b[..., c][both]), initial=0.0) < tol * (p99 - p1)
    if coverage_tol is None:
        assert np.array_equal(cov_a, cov_b)
    else:
        assert np.nanmax(np.abs(cov_a - cov_b)) < coverage_tol * max(1.0, float(np.nanmax(cov_b)))
