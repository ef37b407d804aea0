"""Phase5Options: the options of PHASE5_SPEC §9 under ZeMosaic's key names, plus ours.

Every key a caller may pass is one of four kinds (ACCEPTANCE §4):

* ``implemented`` -- a ZeMosaic key that changes Phase 5 numbers and that the port supports; it is a
  field of :class:`Phase5Options`, validated and coerced when set;
* ``ours`` -- an option of zemosaic_ooc itself (``--gpu``, ``--memory-budget`` ...), also a field;
* ``ignored`` -- a ZeMosaic key with no effect on Phase 5 numbers here (performance and diagnostics
  keys, keys of other phases, a whole ZeMosaic config's GUI keys); accepted, logged at debug level,
  kept in :attr:`Phase5Options.ignored` and otherwise not read;
* ``refused`` -- a ZeMosaic key whose non-default behaviour the port does not implement; its default
  value is accepted, any other value raises :class:`~zemosaic_ooc.errors.OptionError` ("not supported").

Any other key is an ``OptionError`` naming the closest known key.

Coercion: ``--option KEY=VALUE`` values arrive as JSON (int, float, str, bool, list, null); booleans
also accept ``"true"/"false"/"yes"/"no"/"on"/"off"/"1"/"0"``, integers accept integral floats, pairs
accept a 2-list/tuple or ``"a,b"`` and become 2-tuples of float.  Ranges are the spec's (§9 table):
a value outside them is an ``OptionError``.  Cross-field checks (``tile_weight_v4_min <=
tile_weight_v4_max``) run in :meth:`Phase5Options.validate`, which ``from_mapping`` and the constructor
call; a caller that uses :meth:`Phase5Options.set` key by key should call ``validate()`` at the end.
"""
from __future__ import annotations

import dataclasses
import difflib
import json
import logging
import math
import os
import re
from dataclasses import dataclass
from typing import Any, Callable, Mapping

from .errors import OptionError

log = logging.getLogger(__name__)

IMPLEMENTED = "implemented"
OURS = "ours"
IGNORED = "ignored"
REFUSED = "refused"


# --------------------------------------------------------------------------- sizes

_SIZE_RE = re.compile(r"^\s*([0-9]*\.?[0-9]+(?:[eE][+-]?[0-9]+)?)\s*([A-Za-z]*)\s*$")
_SIZE_UNITS = {
    "": 1, "b": 1,
    "k": 1024, "kib": 1024, "kb": 1000,
    "m": 1024**2, "mib": 1024**2, "mb": 1000**2,
    "g": 1024**3, "gib": 1024**3, "gb": 1000**3,
    "t": 1024**4, "tib": 1024**4, "tb": 1000**4,
}


def parse_size(text: str | int | float) -> int:
    """A memory size in bytes: ``"2GiB"`` -> 2147483648, ``"512MiB"``, ``"1.5G"``, ``"4096"``.

    Units (case-insensitive): none or ``B`` = bytes; ``K``/``KiB``, ``M``/``MiB``, ``G``/``GiB``,
    ``T``/``TiB`` are binary (1024^n); ``KB``/``MB``/``GB``/``TB`` are decimal (1000^n).  A bare
    int is bytes.  The result is rounded down to whole bytes and must be positive.
    """
    if isinstance(text, bool):
        raise OptionError(f"invalid size {text!r} (use e.g. 2GiB, 512MiB, 1.5G or a number of bytes)")
    if isinstance(text, (int, float)):
        if not math.isfinite(text):
            raise OptionError(f"invalid size {text!r}: must be a finite number of bytes")
        value = int(text)
    else:
        match = _SIZE_RE.match(str(text))
        unit = match.group(2).lower() if match else None
        if not match or unit not in _SIZE_UNITS:
            raise OptionError(f"invalid size {text!r} (use e.g. 2GiB, 512MiB, 1.5G or a number of bytes)")
        value = int(float(match.group(1)) * _SIZE_UNITS[unit])
    if value <= 0:
        raise OptionError(f"invalid size {text!r}: must be positive")
    return value


def format_size(n: int) -> str:
    """Bytes as a short binary size (``2147483648`` -> ``"2GiB"``, ``1536`` -> ``"1.5KiB"``)."""
    for unit, factor in (("TiB", 1024**4), ("GiB", 1024**3), ("MiB", 1024**2), ("KiB", 1024)):
        if n >= factor:
            return f"{n / factor:.4g}{unit}"
    return f"{n}B"


# --------------------------------------------------------------------------- value coercers
# A coercer takes (key, value) and returns the stored value or raises OptionError.

Coercer = Callable[[str, Any], Any]

_TRUE = {"true", "yes", "on", "1", "y", "t"}
_FALSE = {"false", "no", "off", "0", "n", "f"}


def _bad(key: str, value: Any, expected: str) -> OptionError:
    return OptionError(f"option {key!r}: expected {expected}, got {value!r}")


def _as_bool(key: str, value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    if isinstance(value, str):
        text = value.strip().lower()
        if text in _TRUE:
            return True
        if text in _FALSE:
            return False
    raise _bad(key, value, "true or false")


def _as_number(key: str, value: Any) -> float:
    if isinstance(value, bool) or value is None:
        raise _bad(key, value, "a number")
    if isinstance(value, (int, float)):
        number = float(value)
    elif isinstance(value, str):
        try:
            number = float(value.strip())
        except ValueError:
            raise _bad(key, value, "a number") from None
    else:
        try:  # numpy scalars and the like
            number = float(value)
        except (TypeError, ValueError):
            raise _bad(key, value, "a number") from None
    if not math.isfinite(number):
        raise _bad(key, value, "a finite number")
    return number


def _interval(lo: float | None, hi: float | None, lo_open: bool, hi_open: bool) -> str:
    left = "(" if lo_open or lo is None else "["
    right = ")" if hi_open or hi is None else "]"
    return f"{left}{'-inf' if lo is None else _fmt(lo)}, {'inf' if hi is None else _fmt(hi)}{right}"


def _fmt(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else repr(float(x))


def _check_range(key: str, value: Any, number: float, lo: float | None, hi: float | None,
                 lo_open: bool = False, hi_open: bool = False) -> None:
    bad = (lo is not None and (number < lo or (lo_open and number == lo))) or \
          (hi is not None and (number > hi or (hi_open and number == hi)))
    if bad:
        raise OptionError(f"option {key!r}: {value!r} is out of range, expected a value in "
                          f"{_interval(lo, hi, lo_open, hi_open)}")


def _float(lo: float | None = None, hi: float | None = None, *, lo_open: bool = False,
           hi_open: bool = False) -> Coercer:
    def coerce(key: str, value: Any) -> float:
        number = _as_number(key, value)
        _check_range(key, value, number, lo, hi, lo_open, hi_open)
        return number
    coerce.type_name = "float"  # type: ignore[attr-defined]
    return coerce


def _as_int(key: str, value: Any) -> int:
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    number = _as_number(key, value)
    if not number.is_integer():
        raise _bad(key, value, "an integer")
    return int(number)


def _int(lo: int | None = None, hi: int | None = None) -> Coercer:
    def coerce(key: str, value: Any) -> int:
        number = _as_int(key, value)
        _check_range(key, value, number, lo, hi)
        return number
    coerce.type_name = "int"  # type: ignore[attr-defined]
    return coerce


def _pair(lo: float | None = None, hi: float | None = None, *, strictly_increasing: bool = False
          ) -> Coercer:
    """A 2-tuple of float (first <= second), each in [lo, hi]."""
    def coerce(key: str, value: Any) -> tuple[float, float]:
        items = value
        if isinstance(value, str):
            text = value.strip().strip("[]()")
            items = [part for part in re.split(r"[,\s;]+", text) if part]
        if isinstance(items, (str, bytes)) or not hasattr(items, "__len__") or len(items) != 2:
            raise _bad(key, value, "a pair of numbers such as [0.85, 1.18]")
        a = _as_number(key, items[0])
        b = _as_number(key, items[1])
        for number in (a, b):
            _check_range(key, value, number, lo, hi)
        if a > b or (strictly_increasing and a == b):
            relation = "<" if strictly_increasing else "<="
            raise OptionError(f"option {key!r}: {value!r} is not a valid pair, the first value must be "
                              f"{relation} the second")
        return (a, b)
    coerce.type_name = "pair"  # type: ignore[attr-defined]
    return coerce


def _bool() -> Coercer:
    def coerce(key: str, value: Any) -> bool:
        return _as_bool(key, value)
    coerce.type_name = "bool"  # type: ignore[attr-defined]
    return coerce


def _choice(choices: tuple[str, ...], *, fallback: str | None = None, empty: str | None = None,
            note: str = "") -> Coercer:
    """One of ``choices`` (case-insensitive).  With ``fallback``, an unknown value is mapped to it with
    a warning, as ZeMosaic does; otherwise it is an error.  ``empty`` replaces an empty value."""
    def coerce(key: str, value: Any) -> str:
        if not isinstance(value, str):
            raise _bad(key, value, "one of " + ", ".join(repr(c) for c in choices))
        text = value.strip().lower()
        if not text and empty is not None:
            return empty
        if text in choices:
            return text
        if fallback is not None:
            log.warning("option %r: unknown value %r, using %r as ZeMosaic does%s (known: %s)",
                        key, value, fallback, note, ", ".join(choices))
            return fallback
        close = difflib.get_close_matches(text, choices, n=1, cutoff=0.0)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise OptionError(f"option {key!r}: {value!r} is not one of "
                          f"{', '.join(repr(c) for c in choices)}{hint}")
    coerce.type_name = "str"  # type: ignore[attr-defined]
    return coerce


def _tile_weight_mode() -> Coercer:
    def coerce(key: str, value: Any) -> str:
        if value is None:
            return "n_frames"
        if not isinstance(value, str):
            raise _bad(key, value, "a string such as 'n_frames'")
        text = value.strip().lower() or "n_frames"
        if text != "n_frames":
            log.warning("option %r=%r: only 'n_frames' weights tiles; any other mode turns tile "
                        "weighting off (spec §2.6)", key, value)
        return text
    coerce.type_name = "str"  # type: ignore[attr-defined]
    return coerce


def _size(optional: bool) -> Coercer:
    def coerce(key: str, value: Any) -> int | None:
        if value is None or (optional and isinstance(value, str)
                             and value.strip().lower() in ("", "none", "null", "auto")):
            if optional:
                return None
            raise _bad(key, value, "a size such as 2GiB or a number of bytes")
        try:
            return parse_size(value)
        except OptionError as exc:
            raise OptionError(f"option {key!r}: {exc}") from None
    coerce.type_name = "size" if not optional else "size or null"  # type: ignore[attr-defined]
    return coerce


def _optional_int(lo: int) -> Coercer:
    def coerce(key: str, value: Any) -> int | None:
        if value is None or (isinstance(value, str)
                             and value.strip().lower() in ("", "none", "null", "auto")):
            return None
        number = _as_int(key, value)
        _check_range(key, value, number, lo, None)
        return number
    coerce.type_name = "int or null"  # type: ignore[attr-defined]
    return coerce


_TCP_RE = re.compile(r"^tcp://(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9_.\-]+):(\d{1,5})/?$")


def _scheduler() -> Coercer:
    def coerce(key: str, value: Any) -> str:
        if not isinstance(value, str):
            raise _bad(key, value, "'local', 'dask' or 'tcp://host:port'")
        text = value.strip()
        if text.lower() in ("local", "dask"):
            return text.lower()
        match = _TCP_RE.match(text)
        if match and 0 < int(match.group(2)) < 65536:
            return text.rstrip("/")
        raise OptionError(f"option {key!r}: {value!r} is not a scheduler; expected 'local', 'dask' "
                          f"or the address of a Dask scheduler as 'tcp://host:port'")
    coerce.type_name = "str"  # type: ignore[attr-defined]
    return coerce


def _path(optional: bool = True) -> Coercer:
    def coerce(key: str, value: Any) -> str | None:
        if value is None or (isinstance(value, str) and not value.strip()):
            if optional:
                return None
            raise _bad(key, value, "a path")
        if isinstance(value, (str, os.PathLike)):
            return os.fspath(value)
        raise _bad(key, value, "a path")
    coerce.type_name = "path or null"  # type: ignore[attr-defined]
    return coerce


def _string(key: str, value: Any) -> str:
    if not isinstance(value, str):
        raise _bad(key, value, "a string")
    return value.strip().lower()


_string.type_name = "str"  # type: ignore[attr-defined]


def _json_value(value: Any) -> Any:
    if isinstance(value, tuple):
        return [_json_value(v) for v in value]
    if isinstance(value, list):
        return [_json_value(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _json_value(v) for k, v in value.items()}
    return value


# --------------------------------------------------------------------------- catalogue

@dataclass(frozen=True)
class _Spec:
    key: str
    kind: str
    coerce: Coercer | None
    meaning: str
    section: str = ""
    default: Any = None     # refused keys only (fields take theirs from the dataclass)
    flag: str | None = None  # ours only: the CLI flag


def _impl(key: str, coerce: Coercer, meaning: str, section: str) -> _Spec:
    return _Spec(key, IMPLEMENTED, coerce, meaning, section)


def _ours(key: str, coerce: Coercer, meaning: str, flag: str) -> _Spec:
    return _Spec(key, OURS, coerce, meaning, "ACCEPTANCE §4", flag=flag)


def _refused(key: str, default: Any, coerce: Coercer, reason: str, section: str) -> _Spec:
    return _Spec(key, REFUSED, coerce, reason, section, default=default)


_FIELD_SPECS: tuple[_Spec, ...] = (
    # --- §2 tile preparation
    _impl("apply_master_tile_crop", _bool(), "crop each tile before reprojection", "2.3"),
    _impl("master_tile_crop_percent", _float(0.0, 50.0, hi_open=True),
          "crop per side in percent (acts when > 1e-3)", "2.3"),
    _impl("quality_crop_enabled", _bool(),
          "if True the master-tile crop is disabled (lecropper acted in Phase 3)", "2.3"),
    _impl("phase5_alpha_soft_weights", _bool(),
          "soft ALPHA weights (True) or ALPHA > 0.5 binarisation (False)", "2.4"),
    _impl("phase5_alpha_weight_floor", _float(0.0, 1.0), "minimum weight where ALPHA > 0", "2.4"),
    _impl("enable_tile_weighting", _bool(), "per-tile weights from frame counts", "2.6"),
    _impl("tile_weight_mode", _tile_weight_mode(),
          "'n_frames' weights tiles; any other mode turns weighting off", "2.6"),
    _impl("tile_weight_v4_enabled", _bool(), "compress tile weights (curve + clip)", "2.6"),
    _impl("tile_weight_v4_curve", _choice(("sqrt", "log", "softcap")),
          "compression curve: sqrt, log or softcap", "2.6"),
    _impl("tile_weight_v4_strength", _float(0.0, 2.0), "curve strength", "2.6"),
    _impl("tile_weight_v4_min", _float(0.0, None, lo_open=True), "lower weight clip", "2.6"),
    _impl("tile_weight_v4_max", _float(0.0, None, lo_open=True), "upper weight clip", "2.6"),
    # --- §3 inter-tile calibration
    _impl("intertile_photometric_match", _bool(),
          "run the inter-tile gain/offset calibration (and its NaN side effect)", "2.8, 3"),
    _impl("intertile_preview_size", _int(1), "pair preview max dimension (values < 128 act as 128); "
          "recenter preview size", "3.2, 3.5"),
    _impl("intertile_overlap_min", _float(0.0, 1.0),
          "minimum overlap / smaller box area (cascade 0.03, 0.02, 0.01)", "3.3"),
    _impl("intertile_sky_percentile", _pair(0.0, 100.0, strictly_increasing=True),
          "sky band (percentiles) of the pair mean", "3.5"),
    _impl("intertile_robust_clip_sigma", _float(0.0, None, lo_open=True),
          "clip of the robust pair fit (values < 1 act as 1)", "3.5"),
    _impl("intertile_prune_k", _int(1), "neighbours kept when pruning (N >= 10 only)", "3.4"),
    _impl("intertile_prune_weight_mode",
          _choice(("area", "strength", "hybrid"), fallback="area", empty="area"),
          "pruning weight: area, strength or hybrid (all act as area)", "3.4"),
    _impl("intertile_global_recenter", _bool(), "P2 median recentering", "3.9 P2"),
    _impl("intertile_recenter_clip", _pair(), "P2 factor clip", "3.9 P2"),
    _impl("intertile_affine_blend", _float(0.0, 1.0), "P4 blend towards identity (0 means 1)", "3.9 P4"),
    _impl("intertile_underconstrained_guard_enabled", _bool(), "P6 under-constrained guard", "3.9 P6"),
    _impl("intertile_underconstrained_max_pairs", _int(), "P6 pair-count threshold", "3.9 P6"),
    _impl("intertile_underconstrained_max_active_tiles", _int(), "P6 active-tile threshold", "3.9 P6"),
    _impl("intertile_underconstrained_force_mode",
          _choice(("offset_only", "disable_photometric"), fallback="offset_only", empty="offset_only"),
          "P6 action: offset_only or disable_photometric", "3.9 P6"),
    _impl("intertile_underconstrained_gain_clip", _pair(), "P6 gain clip", "3.9 P6"),
    _impl("intertile_underconstrained_offset_clip", _pair(), "P6 offset clip", "3.9 P6"),
    # --- §5 coadd
    _impl("crop_follow_signal", _bool(),
          "autocrop on coverage > 0 with a 5 % margin (False: > 1e-6, no margin)", "5.4"),
    # --- §6 two-pass
    _impl("two_pass_coverage_renorm", _bool(), "run the two-pass coverage renormalisation", "6"),
    _impl("two_pass_cov_sigma_px", _float(0.0, None, lo_open=True),
          "coverage blur sigma in pixels (truncate 4)", "6.2"),
    _impl("two_pass_cov_gain_clip", _pair(), "per-tile two-pass gain clip", "6.4"),
    # --- §7 patchwork
    _impl("patchwork_suppressor_enabled", _bool(), "run the patchwork suppressor", "7"),
    _impl("patchwork_suppressor_strength",
          _choice(("low", "normal", "strong"), fallback="normal", empty="normal"),
          "preset: low, normal or strong (unknown acts as normal)", "7.2"),
    _impl("patchwork_suppressor_sigma_px", _float(8.0, 512.0), "base blur sigma", "7.2"),
    _impl("patchwork_suppressor_seam_band_px", _int(16, 1024), "seam band; seam blur sigma = band/64",
          "7.2"),
    _impl("patchwork_suppressor_max_delta", _float(0.02, 0.35),
          "ratio clip before preset scaling (final <= 0.30)", "7.2"),
    _impl("patchwork_suppressor_protect_stars", _bool(), "False multiplies the strength by 1.10", "7.2"),
    _impl("patchwork_suppressor_only_near_seams", _bool(), "no numeric effect (logged only)", "7.2"),
    # --- §8 GPU
    _impl("use_gpu_phase5", _bool(),
          "ZeMosaic's GPU switch: True means gpu='auto' (or keeps 'on'), False means gpu='off'", "8.1"),
    # --- our own
    _ours("gpu", _choice(("auto", "on", "off")),
          "auto: GPU if CuPy and a device are usable; on: require the GPU; off: CPU only", "--gpu"),
    _ours("gpu_memory_budget", _size(optional=True),
          "VRAM budget in bytes (null: derived from the free device memory)", "--gpu-memory-budget"),
    _ours("memory_budget", _size(optional=False),
          "host memory budget in bytes; block size and resident tile regions follow from it",
          "--memory-budget"),
    _ours("block_size", _optional_int(1),
          "block side in output pixels (null: derived from the memory budget)", "--block-size"),
    _ours("scheduler", _scheduler(),
          "'local' (threads), 'dask' (a LocalCluster) or 'tcp://host:port' (a Dask scheduler)",
          "--scheduler"),
    _ours("durable", _bool(), "journal every block write durably (fsync) for crash-safe resume",
          "--durable"),
    _ours("overwrite", _bool(), "replace an existing output store instead of refusing", "--overwrite"),
    _ours("photometry", _choice(("zemosaic", "corrected")),
          "'zemosaic': reproduce ZeMosaic's CPU photometry; 'corrected': per-channel inter-tile gains/offsets from true overlaps (docs/corrected_photometry.md)",
          "--photometry"),
    _ours("grid", _path(optional=True),
          "FITS header file giving the output grid (null: compute it as Phase 4 does)", "--grid"),
    _ours("skip_bad_tiles", _bool(), "skip an unreadable tile with a warning instead of stopping",
          "--skip-bad-tiles"),
)

_M2_ONLY = "only used by solver M2 (intertile_gain_offset_v2), which is not supported"

_REFUSED_SPECS: tuple[_Spec, ...] = (
    _refused("use_existing_master_tiles", False, _bool(),
             "existing-master-tiles mode (extra per-channel gains, forced guard, alpha from coverage) "
             "is not supported; tiles given to zemosaic_ooc are a normal run", "0.6, 2.7, 5.6"),
    _refused("final_assembly_method", "reproject_coadd", _string,
             "only 'reproject_coadd' is supported; the incremental method is out of scope", "0.1"),
    _refused("sds_mode_default", False, _bool(), "the SDS path is out of scope", "0.1"),
    _refused("inter_master_merge_enable", False, _bool(),
             "the Phase 4.5 inter-master merge is out of scope", "0.1"),
    _refused("use_auto_intertile", False, _bool(),
             "automatic inter-tile preview/overlap for > 20 tiles is not supported", "3.3"),
    _refused("intertile_offset_only_v1", False, _bool(),
             "solver M1 (offset only) is not supported; only solver M0", "3.8"),
    _refused("intertile_gain_offset_v2", False, _bool(),
             "solver M2 (robust gain+offset IRLS) is not supported; only solver M0", "3.8"),
    _refused("intertile_gain_prior_lambda", 0.02, _float(), _M2_ONLY, "3.8"),
    _refused("intertile_gain_clip", (0.90, 1.10), _pair(), _M2_ONLY, "3.8"),
    _refused("intertile_offset_clip", (-2000.0, 2000.0), _pair(), _M2_ONLY, "3.8"),
    _refused("intertile_pair_gain_clip", (0.5, 2.0), _pair(), _M2_ONLY, "3.8"),
    _refused("intertile_pair_offset_abs_max", 5000.0, _float(), _M2_ONLY, "3.8"),
    _refused("intertile_max_irls_iters", 3, _int(), _M2_ONLY, "3.8"),
    _refused("intertile_enforce_requested_solver", False, _bool(), _M2_ONLY, "3.8"),
    _refused("intertile_gain_limits", (0.75, 1.25), _pair(),
             "the P8 clamp constants are fixed in the pipeline (not a config key)", "3.9 P8"),
    _refused("intertile_offset_limit_adu", 50.0, _float(),
             "the P8 clamp constants are fixed in the pipeline (not a config key)", "3.9 P8"),
    _refused("tile_weight_v4_residual_penalty_enabled", False, _bool(),
             "the residual penalty needs solver M2's residuals, which is not supported", "2.6"),
    _refused("tile_weight_v4_temporal_penalty_enabled", False, _bool(),
             "the DATE-OBS temporal penalty is not supported", "2.6"),
    _refused("final_mosaic_rgb_equalize_enabled", False, _bool(),
             "the end-of-Phase-5 RGB equalisation is not specified and not supported", "5.8"),
    _refused("final_mosaic_black_point_equalize_enabled", False, _bool(),
             "the end-of-Phase-5 black-point equalisation is not specified and not supported", "5.8"),
)

_PERF = "performance only [PERF]; zemosaic_ooc sizes its work from --memory-budget"
_DIAG = "diagnostics only [DIAG]"
_OTHER = "another phase's key; no effect on Phase 5"
_OUT = "Phase 6 / GUI key; no effect on Phase 5"
_EXISTING = "existing-master-tiles mode only (use_existing_master_tiles is not supported)"

# Explicit ZeMosaic keys (spec §9 and DEFAULT_CONFIG) with no effect on Phase 5 numbers here.
_IGNORED_KEYS: dict[str, str] = {
    # spec §9
    "output_dir": "the port always behaves as a run with a diagnostics folder (ACCEPTANCE §1)",
    "input_dir": _OTHER,
    "phase5_export_graph_debug": "the guard always uses this run's pair counts (ACCEPTANCE §1) " + _DIAG,
    "phase5_export_weight_maps": _DIAG,
    "apply_radial_weight": "not forwarded to Phase 5 by the classic pipeline: no effect (spec §2.9)",
    "radial_feather_fraction": "radial weights are inactive in Phase 5 (spec §2.9)",
    "radial_shape_power": "radial weights are inactive in Phase 5 (spec §2.9)",
    "min_radial_weight_floor": "radial weights are inactive in Phase 5 (spec §2.9)",
    "tile_weight_v4_residual_penalty_strength": "only used with the residual penalty (not supported)",
    "tile_weight_v4_temporal_penalty_strength": "only used with the temporal penalty (not supported)",
    "tile_weight_v4_temporal_penalty_hours": "only used with the temporal penalty (not supported)",
    "intertile_force_safe_mode": _PERF,
    "assembly_process_workers": _PERF,
    "match_background_for_final": "not used by this path (Phase 5 hard-codes True, spec §4.1)",
    "coadd_use_memmap": _PERF,
    "coadd_memmap_dir": _PERF,
    "coadd_cleanup_memmap": _PERF,
    "incremental_feather_parity": "incremental assembly method only",
    "final_mosaic_rgb_equalize_clip_enabled": "only used by the final RGB equalisation (not supported)",
    "final_mosaic_rgb_equalize_gain_clip": "only used by the final RGB equalisation (not supported)",
    "final_mosaic_black_point_percentile": "only used by the black-point equalisation (not supported)",
    "aesthetic_profile_preset": "not read by any ZeMosaic code (spec §7.2)",
    "aesthetic_profile_presets": "not read by any ZeMosaic code (spec §7.2)",
    "gpu_id_phase5": "select the device with CUDA_VISIBLE_DEVICES; " + _PERF,
    "gpu_hybrid_vram_guard": _PERF,
    "gpu_selector": _PERF,
    "phase5_chunk_auto": "use --gpu-memory-budget; " + _PERF,
    "phase5_chunk_mb": "use --gpu-memory-budget; " + _PERF,
    "phase5_force_gpu_on_ac": "no effect (spec §8.1)",
    "use_gpu_global": "legacy GPU switch; use use_gpu_phase5 or gpu",
    "stack_use_gpu": "legacy GPU switch kept in sync by ZeMosaic; use use_gpu_phase5 or gpu",
    "use_gpu_stack": "legacy GPU switch kept in sync by ZeMosaic; use use_gpu_phase5 or gpu",
    "use_gpu_grid": "grid mode only (out of scope)",
    "chunk_profile_mode": _PERF,
    "num_processing_workers": _PERF,
    "grid_workers": "grid mode only (out of scope)",
    "force_resolve_existing_wcs": _OTHER,
    "resume": "ZeMosaic's resume policy; use 'zemosaic-ooc resume'",
    "cache_retention": _OTHER,
    "cleanup_temp_artifacts": _OTHER,
    "enable_resource_telemetry": _DIAG,
    # other phases / GUI (DEFAULT_CONFIG)
    "language": _OUT,
    "preferred_gui_backend": _OUT,
    "preferred_gui_backend_explicit": _OUT,
    "wsc_impl": _OTHER,
    "batch_overlap_pct": _OTHER,
    "allow_batch_duplication": _OTHER,
    "min_safe_stack": _OTHER,
    "target_stack": _OTHER,
    "auto_detect_seestar": _OTHER,
    "force_seestar_mode": _OTHER,
    "solver_method": _OTHER,
    "astrometry_local_path": _OTHER,
    "astrometry_api_key": _OTHER,
    "save_final_as_uint16": _OUT,
    "legacy_rgb_cube": _OUT,
    "save_display_fits": _OUT,
    "auto_limit_frames_per_master_tile": _OTHER,
    "max_raw_per_master_tile": _OTHER,
    "center_out_normalization_p3": _OTHER,
    "center_out_anchor_mode": _OTHER,
    "enable_poststack_anchor_review": "Phase 3.9 (reaches Phase 5 only as the global anchor shift)",
    "enable_early_filter": _OTHER,
    "export_aesthetic_fits": _OUT,
    "scientific_fits_suffix": _OUT,
    "global_coadd_method": "SDS only (out of scope)",
    "global_coadd_k": "SDS only (out of scope)",
}

# Key prefixes of other phases, of ZeMosaic's performance plans, and of Phase 6.
_IGNORED_PREFIXES: dict[str, str] = {
    "sds_": "SDS key (out of scope)",
    "global_wcs_": "SDS global-WCS plan key (out of scope)",
    "quality_gate_": "Phase 3 quality-gate key; reaches Phase 5 only through the tile pixels",
    "altaz_": "Phase 3 alt-az cleanup key; reaches Phase 5 only through the tile pixels",
    "quality_crop_": "Phase 3 lecropper key; reaches Phase 5 only through the tile pixels",
    "existing_master_tiles_": _EXISTING,
    "inter_master_": "Phase 4.5 inter-master merge key (out of scope)",
    "parallel_": _PERF,
    "phase5_vram_": _PERF,
    "phase3_": _OTHER,
    "astap_": _OTHER,
    "stacking_": _OTHER,
    "stack_stat_": _OTHER,
    "winsor_": _OTHER,
    "poststack_": _OTHER,
    "p3_center_": _OTHER,
    "anchor_quality_": _OTHER,
    "cluster_": _OTHER,
    "resource_telemetry_": _DIAG,
    "qt_": _OUT,
    "preview_png_": _OUT,
    "visual_seam_heal_": "Phase 6 preview seam heal; no effect on the Phase 5 mosaic",
    "aesthetic_": _OUT,
    "final_mosaic_dbe_": "Phase 6 DBE (out of scope)",
}

_FIELD_BY_KEY: dict[str, _Spec] = {s.key: s for s in _FIELD_SPECS}
_REFUSED_BY_KEY: dict[str, _Spec] = {s.key: s for s in _REFUSED_SPECS}


def classify_key(key: str) -> str | None:
    """``"implemented"``, ``"ours"``, ``"ignored"``, ``"refused"`` or None for an unknown key."""
    spec = _FIELD_BY_KEY.get(key)
    if spec is not None:
        return spec.kind
    if key in _REFUSED_BY_KEY:
        return REFUSED
    if key in _IGNORED_KEYS or _ignored_prefix(key) is not None:
        return IGNORED
    return None


def _ignored_prefix(key: str) -> str | None:
    for prefix in _IGNORED_PREFIXES:
        if key.startswith(prefix) and len(key) > len(prefix):
            return prefix
    return None


def known_keys() -> list[str]:
    """Every named key (implemented, ours, refused, explicitly ignored); prefixes excluded."""
    return list(_FIELD_BY_KEY) + list(_REFUSED_BY_KEY) + list(_IGNORED_KEYS)


def _unknown_key_error(key: str) -> OptionError:
    candidates = known_keys()
    probe = key.strip().lower().replace("-", "_").lstrip("_")
    close = difflib.get_close_matches(probe, candidates, n=1, cutoff=0.0)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    return OptionError(f"unknown option {key!r}{hint}")


# --------------------------------------------------------------------------- options

@dataclass
class Phase5Options:
    # --- §2 tile preparation
    apply_master_tile_crop: bool = True
    master_tile_crop_percent: float = 3.0
    quality_crop_enabled: bool = False
    phase5_alpha_soft_weights: bool = True
    phase5_alpha_weight_floor: float = 0.02
    enable_tile_weighting: bool = True
    tile_weight_mode: str = "n_frames"
    tile_weight_v4_enabled: bool = True
    tile_weight_v4_curve: str = "sqrt"
    tile_weight_v4_strength: float = 1.0
    tile_weight_v4_min: float = 0.75
    tile_weight_v4_max: float = 1.35
    # --- §3 inter-tile calibration
    intertile_photometric_match: bool = True
    intertile_preview_size: int = 128
    intertile_overlap_min: float = 0.05
    intertile_sky_percentile: tuple[float, float] = (30.0, 70.0)
    intertile_robust_clip_sigma: float = 2.5
    intertile_prune_k: int = 8
    intertile_prune_weight_mode: str = "area"
    intertile_global_recenter: bool = True
    intertile_recenter_clip: tuple[float, float] = (0.85, 1.18)
    intertile_affine_blend: float = 0.30
    intertile_underconstrained_guard_enabled: bool = True
    intertile_underconstrained_max_pairs: int = 1
    intertile_underconstrained_max_active_tiles: int = 2
    intertile_underconstrained_force_mode: str = "offset_only"
    intertile_underconstrained_gain_clip: tuple[float, float] = (0.85, 1.18)
    intertile_underconstrained_offset_clip: tuple[float, float] = (-2000.0, 2000.0)
    # --- §5 coadd
    crop_follow_signal: bool = True
    # --- §6 two-pass
    two_pass_coverage_renorm: bool = True
    two_pass_cov_sigma_px: float = 50
    two_pass_cov_gain_clip: tuple[float, float] = (0.85, 1.18)
    # --- §7 patchwork
    patchwork_suppressor_enabled: bool = True
    patchwork_suppressor_strength: str = "strong"
    patchwork_suppressor_sigma_px: float = 64.0
    patchwork_suppressor_seam_band_px: int = 320
    patchwork_suppressor_max_delta: float = 0.30
    patchwork_suppressor_protect_stars: bool = False
    patchwork_suppressor_only_near_seams: bool = True
    # --- §8 GPU
    use_gpu_phase5: bool = True
    # --- our own
    gpu: str = "auto"
    gpu_memory_budget: int | None = None
    memory_budget: int = 2 * 1024**3
    block_size: int | None = None
    scheduler: str = "local"
    durable: bool = False
    overwrite: bool = False
    photometry: str = "zemosaic"
    grid: str | None = None
    skip_bad_tiles: bool = False

    def __post_init__(self) -> None:
        # Values given to the constructor go through the same coercion as set().
        for f in dataclasses.fields(self):
            spec = _FIELD_BY_KEY[f.name]
            object.__setattr__(self, f.name, spec.coerce(f.name, getattr(self, f.name)))
        object.__setattr__(self, "_ignored", {})
        if self.gpu == "off":
            self.use_gpu_phase5 = False
        elif not self.use_gpu_phase5:
            if self.gpu == "on":
                raise OptionError("options 'gpu'='on' and 'use_gpu_phase5'=False contradict each other")
            self.gpu = "off"
        self.validate()

    # ---------------------------------------------------------------- building

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any] | None = None) -> "Phase5Options":
        """Options from a mapping of keys (ZeMosaic's and ours), e.g. a whole ZeMosaic config.

        ZeMosaic keys are applied first and our own keys after them, so an explicit ``gpu`` wins
        over ``use_gpu_phase5`` whatever the mapping's order.  Cross-field checks run at the end.
        """
        opts = cls()
        items = list((values or {}).items())
        for key, value in items:
            if classify_key(key) != OURS:
                opts.set(key, value)
        for key, value in items:
            if classify_key(key) == OURS:
                opts.set(key, value)
        opts.validate()
        return opts

    def set(self, key: str, value: Any) -> None:
        """Set one key: coerce and range-check an implemented or own key; accept an ignored key (debug
        log); accept a refused key at its default and raise OptionError otherwise; raise OptionError
        naming the closest known key for anything else."""
        if not isinstance(key, str):
            raise OptionError(f"option keys are strings, got {key!r}")
        kind = classify_key(key)
        if kind in (IMPLEMENTED, OURS):
            spec = _FIELD_BY_KEY[key]
            new = spec.coerce(key, value)
            setattr(self, key, new)
            if key == "use_gpu_phase5":
                if not new:
                    self.gpu = "off"
                elif self.gpu == "off":
                    self.gpu = "auto"
            elif key == "gpu":
                self.use_gpu_phase5 = new != "off"
            return
        if kind == REFUSED:
            spec = _REFUSED_BY_KEY[key]
            try:
                coerced = spec.coerce(key, value)
            except OptionError as exc:
                raise OptionError(f"{exc}; this key is not supported: {spec.meaning}") from None
            if coerced != spec.default:
                raise OptionError(f"option {key!r}={value!r} is not supported: {spec.meaning} "
                                  f"(only the default {_json_value(spec.default)!r} is accepted)")
            log.debug("option %r=%r accepted (its default; other values are not supported)", key, value)
            return
        if kind == IGNORED:
            reason = _IGNORED_KEYS.get(key)
            if reason is None:
                reason = _IGNORED_PREFIXES[_ignored_prefix(key)]  # type: ignore[index]
            self._ignored[key] = value
            log.debug("option %r=%r accepted and ignored: %s", key, value, reason)
            return
        raise _unknown_key_error(key)

    def validate(self) -> None:
        """Cross-field checks; raises OptionError."""
        if self.tile_weight_v4_min > self.tile_weight_v4_max:
            raise OptionError(f"options 'tile_weight_v4_min'={self.tile_weight_v4_min!r} and "
                              f"'tile_weight_v4_max'={self.tile_weight_v4_max!r}: min must be <= max")
        if self.gpu == "off" and self.use_gpu_phase5:
            raise OptionError("options 'gpu'='off' and 'use_gpu_phase5'=True contradict each other")
        if self.gpu != "off" and not self.use_gpu_phase5:
            raise OptionError(f"options 'gpu'={self.gpu!r} and 'use_gpu_phase5'=False contradict each other")

    # ---------------------------------------------------------------- reading

    @property
    def ignored(self) -> dict[str, Any]:
        """The ignored keys given so far, with their values (they are not part of to_dict())."""
        return dict(self._ignored)

    def to_dict(self) -> dict[str, Any]:
        """Every field, JSON-serialisable (pairs as lists); ``from_mapping(to_dict())`` round-trips."""
        return {f.name: _json_value(getattr(self, f.name)) for f in dataclasses.fields(self)}

    def non_default(self) -> dict[str, Any]:
        """The fields whose values differ from the defaults, JSON-serialisable."""
        default = _DEFAULTS
        return {k: v for k, v in self.to_dict().items() if v != default[k]}


_DEFAULTS: dict[str, Any] = {
    f.name: _json_value(f.default) for f in dataclasses.fields(Phase5Options)
}

assert set(_FIELD_BY_KEY) == set(_DEFAULTS), "every Phase5Options field needs a catalogue entry"


# --------------------------------------------------------------------------- description

def describe_options() -> list[dict[str, Any]]:
    """One dict per key: ``key``, ``default`` (JSON), ``kind`` (implemented / ours / refused /
    ignored), ``type``, ``meaning``, ``section`` (spec §) and, for our options, ``flag``.

    Ignored key families appear with their prefix and a ``*`` (e.g. ``"sds_*"``).
    """
    rows: list[dict[str, Any]] = []
    for spec in _FIELD_SPECS:
        row = {"key": spec.key, "default": _DEFAULTS[spec.key], "kind": spec.kind,
               "type": getattr(spec.coerce, "type_name", "str"), "meaning": spec.meaning,
               "section": spec.section}
        if spec.flag:
            row["flag"] = spec.flag
        rows.append(row)
    for spec in _REFUSED_SPECS:
        rows.append({"key": spec.key, "default": _json_value(spec.default), "kind": REFUSED,
                     "type": getattr(spec.coerce, "type_name", "str"),
                     "meaning": "not supported unless default: " + spec.meaning, "section": spec.section})
    for key, reason in _IGNORED_KEYS.items():
        rows.append({"key": key, "default": None, "kind": IGNORED, "type": "any", "meaning": reason,
                     "section": ""})
    for prefix, reason in _IGNORED_PREFIXES.items():
        rows.append({"key": prefix + "*", "default": None, "kind": IGNORED, "type": "any",
                     "meaning": reason, "section": ""})
    return rows


def options_markdown() -> str:
    """The option reference as Markdown (docs/options.md is this text)."""
    def cell(value: Any) -> str:
        text = "—" if value is None else json.dumps(value) if not isinstance(value, str) else value
        return text.replace("|", "\\|")

    rows = describe_options()
    out = [
        "# zemosaic_ooc options",
        "",
        "Generated from `zemosaic_ooc.options.describe_options()` (regenerate with",
        "`python -c \"from zemosaic_ooc.options import options_markdown; print(options_markdown(), end='')\" > docs/options.md`).",
        "",
        "Keys are ZeMosaic's (PHASE5_SPEC §9) plus our own. Pass them to the API as a mapping",
        "(`Phase5Options.from_mapping`, a whole ZeMosaic config is accepted) or on the command line as",
        "`--option KEY=VALUE` (VALUE is JSON, else a string). Sizes accept `2GiB`, `512MiB`, `1.5G`",
        "(K/M/G/T and KiB/MiB/GiB/TiB are binary, KB/MB/GB/TB decimal) or a number of bytes.",
        "",
        "* **implemented** and **ours**: validated, stored and used;",
        "* **refused**: the default value is accepted, any other is an error (\"not supported\");",
        "* **ignored**: accepted and logged at debug level, no effect;",
        "* anything else is an error naming the closest known key.",
        "",
    ]
    titles = {OURS: "Our own options", IMPLEMENTED: "Implemented ZeMosaic keys",
              REFUSED: "Refused unless default", IGNORED: "Accepted and ignored"}
    for kind in (OURS, IMPLEMENTED, REFUSED, IGNORED):
        out += [f"## {titles[kind]}", ""]
        if kind == OURS:
            out += ["| key | flag | default | type | meaning |", "|---|---|---|---|---|"]
            for r in rows:
                if r["kind"] == kind:
                    out.append(f"| `{r['key']}` | `{r['flag']}` | {cell(r['default'])} | {r['type']} | "
                               f"{cell(r['meaning'])} |")
        elif kind == IGNORED:
            out += ["| key | why |", "|---|---|"]
            for r in rows:
                if r["kind"] == kind:
                    out.append(f"| `{r['key']}` | {cell(r['meaning'])} |")
        else:
            out += ["| key | default | type | meaning | spec § |", "|---|---|---|---|---|"]
            for r in rows:
                if r["kind"] == kind:
                    meaning = r["meaning"].removeprefix("not supported unless default: ")
                    out.append(f"| `{r['key']}` | {cell(r['default'])} | {r['type']} | {cell(meaning)} | "
                               f"{r['section']} |")
        out.append("")
    return "\n".join(out)


def parse_option_value(text: str) -> Any:
    """``--option KEY=VALUE`` values are JSON, falling back to a plain string."""
    try:
        return json.loads(text)
    except (json.JSONDecodeError, ValueError):
        return text
