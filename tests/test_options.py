"""Phase5Options: ZeMosaic keys (implemented / ignored / refused), our options, validation."""
from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

from zemosaic_ooc.errors import OptionError
from zemosaic_ooc.options import (
    Phase5Options,
    classify_key,
    describe_options,
    options_markdown,
    parse_option_value,
    parse_size,
)

GiB = 1024**3
MiB = 1024**2

# PHASE5_SPEC §9, column "pipeline" (the values of a default classic run).
SPEC_PIPELINE_VALUES = {
    "apply_master_tile_crop": True,
    "master_tile_crop_percent": 3.0,
    "quality_crop_enabled": False,
    "phase5_alpha_soft_weights": True,
    "phase5_alpha_weight_floor": 0.02,
    "enable_tile_weighting": True,
    "tile_weight_mode": "n_frames",
    "tile_weight_v4_enabled": True,
    "tile_weight_v4_curve": "sqrt",
    "tile_weight_v4_strength": 1.0,
    "tile_weight_v4_min": 0.75,
    "tile_weight_v4_max": 1.35,
    "intertile_photometric_match": True,
    "intertile_preview_size": 128,
    "intertile_overlap_min": 0.05,
    "intertile_sky_percentile": (30.0, 70.0),
    "intertile_robust_clip_sigma": 2.5,
    "intertile_prune_k": 8,
    "intertile_prune_weight_mode": "area",
    "intertile_global_recenter": True,
    "intertile_recenter_clip": (0.85, 1.18),
    "intertile_affine_blend": 0.30,
    "intertile_underconstrained_guard_enabled": True,
    "intertile_underconstrained_max_pairs": 1,
    "intertile_underconstrained_max_active_tiles": 2,
    "intertile_underconstrained_force_mode": "offset_only",
    "intertile_underconstrained_gain_clip": (0.85, 1.18),
    "intertile_underconstrained_offset_clip": (-2000.0, 2000.0),
    "crop_follow_signal": True,
    "two_pass_coverage_renorm": True,
    "two_pass_cov_sigma_px": 50,
    "two_pass_cov_gain_clip": (0.85, 1.18),
    "patchwork_suppressor_enabled": True,
    "patchwork_suppressor_strength": "strong",
    "patchwork_suppressor_sigma_px": 64.0,
    "patchwork_suppressor_seam_band_px": 320,
    "patchwork_suppressor_max_delta": 0.30,
    "patchwork_suppressor_protect_stars": False,
    "patchwork_suppressor_only_near_seams": True,
    "use_gpu_phase5": True,
}

# A slice of ZeMosaic's DEFAULT_CONFIG (zemosaic_config.py at 271f109): one or more keys of every
# family a worker config carries, with their default values.
ZEMOSAIC_CONFIG_SLICE = {
    "astap_executable_path": "", "language": "en", "preferred_gui_backend": "qt",
    "qt_main_window_geometry": None, "input_dir": "", "output_dir": "/tmp/out",
    "use_existing_master_tiles": False, "num_processing_workers": -1, "grid_workers": 0,
    "stacking_normalize_method": "linear_fit", "stacking_winsor_limits": "0.05,0.05",
    "wsc_impl": "pixinsight", "poststack_equalize_rgb": False,
    "final_mosaic_rgb_equalize_enabled": False, "final_mosaic_rgb_equalize_gain_clip": [0.80, 1.25],
    "preview_png_p_low": 1.0, "visual_seam_heal_enabled": False,
    "existing_master_tiles_rgb_balance_gain_clip": [0.90, 1.10],
    "sds_enable_final_rgb_equalize": False, "apply_radial_weight": False,
    "radial_feather_fraction": 0.8, "use_gpu_phase5": True, "use_gpu_grid": True, "gpu_id_phase5": 0,
    "gpu_selector": "", "gpu_hybrid_vram_guard": True, "phase5_chunk_auto": True, "phase5_chunk_mb": 128,
    "enable_tile_weighting": True, "tile_weight_mode": "n_frames", "tile_weight_v4_enabled": True,
    "tile_weight_v4_curve": "sqrt", "tile_weight_v4_strength": 1.0, "tile_weight_v4_min": 0.75,
    "tile_weight_v4_max": 1.35, "tile_weight_v4_residual_penalty_enabled": False,
    "tile_weight_v4_residual_penalty_strength": 0.35, "tile_weight_v4_temporal_penalty_enabled": False,
    "tile_weight_v4_temporal_penalty_strength": 0.20, "tile_weight_v4_temporal_penalty_hours": 6.0,
    "final_assembly_method": "reproject_coadd", "global_wcs_res_override": None,
    "sds_mode_default": False, "sds_coverage_threshold": 0.92, "inter_master_merge_enable": False,
    "inter_master_overlap_threshold": 0.60, "two_pass_coverage_renorm": True,
    "two_pass_cov_sigma_px": 50, "two_pass_cov_gain_clip": [0.85, 1.18], "solver_method": "ansvr",
    "coadd_use_memmap": True, "coadd_memmap_dir": "", "coadd_cleanup_memmap": True,
    "parallel_autotune_enabled": True, "parallel_target_ram_fraction": 0.9,
    "chunk_profile_mode": "safe_dynamic", "phase3_ram_high_pct": 82.0, "resume": "auto",
    "assembly_process_workers": 0, "winsor_worker_limit": 0, "anchor_quality_span_range": [0.02, 6.0],
    "poststack_anchor_probe_limit": 8, "p3_center_sky_percentile": [25.0, 60.0],
    "intertile_photometric_match": True, "intertile_preview_size": 128, "intertile_overlap_min": 0.05,
    "intertile_sky_percentile": [30.0, 70.0], "intertile_robust_clip_sigma": 2.5,
    "intertile_prune_k": 8, "intertile_prune_weight_mode": "area", "intertile_offset_only_v1": False,
    "intertile_gain_offset_v2": False, "intertile_gain_prior_lambda": 0.02,
    "intertile_gain_clip": [0.90, 1.10], "intertile_offset_clip": [-2000.0, 2000.0],
    "intertile_pair_gain_clip": [0.5, 2.0], "intertile_pair_offset_abs_max": 5000.0,
    "intertile_max_irls_iters": 3, "intertile_enforce_requested_solver": False,
    "intertile_underconstrained_guard_enabled": True, "intertile_underconstrained_max_pairs": 1,
    "intertile_underconstrained_max_active_tiles": 2,
    "intertile_underconstrained_force_mode": "offset_only",
    "intertile_underconstrained_gain_clip": [0.85, 1.18],
    "intertile_underconstrained_offset_clip": [-2000.0, 2000.0], "intertile_global_recenter": True,
    "force_resolve_existing_wcs": False, "intertile_recenter_clip": [0.85, 1.18],
    "intertile_affine_blend": 0.30, "use_auto_intertile": False, "match_background_for_final": True,
    "incremental_feather_parity": False, "patchwork_suppressor_enabled": True,
    "patchwork_suppressor_strength": "strong", "patchwork_suppressor_sigma_px": 64.0,
    "patchwork_suppressor_seam_band_px": 320, "patchwork_suppressor_max_delta": 0.30,
    "patchwork_suppressor_protect_stars": False, "patchwork_suppressor_only_near_seams": True,
    "phase5_alpha_soft_weights": True, "phase5_alpha_weight_floor": 0.02,
    "export_aesthetic_fits": True, "aesthetic_profile_preset": "strong",
    "aesthetic_profile_presets": {"strong": {"patchwork_suppressor_strength": "strong"}},
    "final_mosaic_dbe_enabled": True, "final_mosaic_black_point_equalize_enabled": False,
    "final_mosaic_black_point_percentile": 0.1, "enable_early_filter": True,
    "apply_master_tile_crop": True, "master_tile_crop_percent": 3.0, "quality_crop_enabled": False,
    "quality_crop_band_px": 32, "quality_gate_enabled": False,
    "existing_master_tiles_quality_gate_mode": "warn", "altaz_cleanup_enabled": False,
    "crop_follow_signal": True, "stack_stat_min_finite_frac": 0.02,
}


# --------------------------------------------------------------------------- defaults

def test_defaults_equal_the_spec_pipeline_values():
    opts = Phase5Options()
    for key, value in SPEC_PIPELINE_VALUES.items():
        assert getattr(opts, key) == value, key
    assert opts.gpu == "auto"
    assert opts.memory_budget == 2 * GiB
    assert opts.gpu_memory_budget is None and opts.block_size is None and opts.grid is None
    assert opts.scheduler == "local" and opts.photometry == "zemosaic"
    assert not (opts.durable or opts.overwrite or opts.skip_bad_tiles)
    assert opts.non_default() == {}


def test_a_zemosaic_default_config_passes_through_and_changes_nothing():
    opts = Phase5Options.from_mapping(ZEMOSAIC_CONFIG_SLICE)
    assert opts.non_default() == {}
    assert opts == Phase5Options()
    assert opts.ignored["phase5_chunk_mb"] == 128
    assert "use_existing_master_tiles" not in opts.ignored  # refused key at its default


# --------------------------------------------------------------------------- the four kinds

@pytest.mark.parametrize("typo, suggestion", [
    ("intertile_prev_size", "intertile_preview_size"),
    ("memory-budget", "memory_budget"),
    ("use_gpu_phase_5", "use_gpu_phase5"),
    ("patchwork_supressor_strength", "patchwork_suppressor_strength"),
    ("two_pass_cov_sigma", "two_pass_cov_sigma_px"),
])
def test_unknown_key_is_an_error_suggesting_the_closest_known_key(typo, suggestion):
    with pytest.raises(OptionError, match=rf"unknown option '{typo}'.*did you mean '{suggestion}'"):
        Phase5Options().set(typo, 1)
    with pytest.raises(OptionError, match="did you mean"):
        Phase5Options.from_mapping({typo: 1})


@pytest.mark.parametrize("key, value", [
    ("phase5_chunk_mb", 512), ("phase5_vram_reserve_mb", 2048), ("assembly_process_workers", 4),
    ("coadd_use_memmap", False), ("coadd_memmap_dir", "/scratch"), ("parallel_max_cpu_workers", 3),
    ("gpu_id_phase5", 1), ("gpu_hybrid_vram_guard", False), ("phase5_export_graph_debug", False),
    ("phase5_export_weight_maps", False), ("output_dir", "/elsewhere"),
    ("match_background_for_final", False), ("apply_radial_weight", True),
    ("aesthetic_profile_preset", "balanced"), ("sds_coverage_threshold", 0.5),
    ("global_wcs_orientation", "free"), ("quality_gate_enabled", True), ("altaz_decay", 0.3),
    ("intertile_force_safe_mode", True), ("existing_master_tiles_rgb_balance_min_pixels", 9),
])
def test_ignored_key_is_accepted_logged_and_has_no_effect(key, value, caplog):
    opts = Phase5Options()
    with caplog.at_level(logging.DEBUG, logger="zemosaic_ooc.options"):
        opts.set(key, value)
    assert classify_key(key) == "ignored"
    assert opts.ignored == {key: value}
    assert opts == Phase5Options() and opts.non_default() == {}
    assert key not in opts.to_dict()
    assert any(key in r.getMessage() and "ignored" in r.getMessage() for r in caplog.records)


REFUSED_NON_DEFAULT = [
    ("use_existing_master_tiles", True, False),
    ("intertile_offset_only_v1", True, False),
    ("intertile_gain_offset_v2", True, False),
    ("intertile_gain_prior_lambda", 0.1, 0.02),
    ("intertile_gain_clip", [0.8, 1.2], [0.90, 1.10]),
    ("intertile_offset_clip", [-100, 100], [-2000, 2000]),
    ("intertile_pair_gain_clip", [0.4, 2.0], [0.5, 2.0]),
    ("intertile_pair_offset_abs_max", 100, 5000),
    ("intertile_max_irls_iters", 5, 3),
    ("intertile_enforce_requested_solver", True, False),
    ("final_mosaic_rgb_equalize_enabled", True, False),
    ("final_mosaic_black_point_equalize_enabled", True, False),
    ("final_assembly_method", "incremental", "reproject_coadd"),
    ("sds_mode_default", True, False),
    ("inter_master_merge_enable", True, False),
    ("use_auto_intertile", True, False),
    ("tile_weight_v4_residual_penalty_enabled", True, False),
    ("tile_weight_v4_temporal_penalty_enabled", True, False),
]


@pytest.mark.parametrize("key, bad, default", REFUSED_NON_DEFAULT, ids=[r[0] for r in REFUSED_NON_DEFAULT])
def test_refused_key_fails_when_not_default_and_passes_at_default(key, bad, default):
    assert classify_key(key) == "refused"
    with pytest.raises(OptionError, match=rf"'{key}'.*not supported"):
        Phase5Options().set(key, bad)
    opts = Phase5Options.from_mapping({key: default})
    assert opts == Phase5Options() and opts.ignored == {}


def test_refused_key_with_a_malformed_value_says_not_supported():
    with pytest.raises(OptionError, match="not supported"):
        Phase5Options().set("use_existing_master_tiles", "maybe")


def test_default_accepts_spelling_variants_of_a_refused_string():
    Phase5Options().set("final_assembly_method", " Reproject_Coadd ")
    Phase5Options().set("use_auto_intertile", "false")


# --------------------------------------------------------------------------- our options

@pytest.mark.parametrize("text, expected", [
    ("2GiB", 2 * GiB), ("512MiB", 512 * MiB), ("1.5G", int(1.5 * GiB)), ("4096", 4096),
    ("1 GB", 10**9), ("64kb", 64_000), ("64k", 65536), ("2t", 2 * 1024**4), ("100B", 100),
    (" 3 MiB ", 3 * MiB), (1024, 1024), ("1e3", 1000),
])
def test_parse_size_reads_binary_and_decimal_units(text, expected):
    assert parse_size(text) == expected


@pytest.mark.parametrize("text", ["", "GiB", "2 parsecs", "-1G", "0", "1.5.2G", True, float("inf")])
def test_parse_size_rejects_garbage_and_non_positive_sizes(text):
    with pytest.raises(OptionError, match="size"):
        parse_size(text)


def test_memory_budgets_take_size_strings():
    opts = Phase5Options.from_mapping({"memory_budget": "1.5G", "gpu_memory_budget": "512MiB"})
    assert opts.memory_budget == int(1.5 * GiB) and opts.gpu_memory_budget == 512 * MiB
    opts.set("gpu_memory_budget", None)
    assert opts.gpu_memory_budget is None
    with pytest.raises(OptionError, match="memory_budget"):
        opts.set("memory_budget", None)
    with pytest.raises(OptionError, match="memory_budget"):
        opts.set("memory_budget", "lots")


def test_use_gpu_phase5_maps_to_gpu_and_back():
    opts = Phase5Options()
    opts.set("use_gpu_phase5", False)
    assert opts.gpu == "off"
    opts.set("use_gpu_phase5", True)
    assert opts.gpu == "auto"
    opts.set("gpu", "on")
    assert opts.use_gpu_phase5 is True
    opts.set("use_gpu_phase5", True)  # a ZeMosaic config's True does not downgrade an explicit "on"
    assert opts.gpu == "on"
    opts.set("gpu", "OFF")
    assert opts.gpu == "off" and opts.use_gpu_phase5 is False
    assert Phase5Options(use_gpu_phase5=False).gpu == "off"
    assert Phase5Options(gpu="off").use_gpu_phase5 is False
    with pytest.raises(OptionError, match="contradict"):
        Phase5Options(gpu="on", use_gpu_phase5=False)


def test_explicit_gpu_wins_over_use_gpu_phase5_whatever_the_order():
    assert Phase5Options.from_mapping({"gpu": "on", "use_gpu_phase5": False}).gpu == "on"
    assert Phase5Options.from_mapping({"use_gpu_phase5": False, "gpu": "auto"}).gpu == "auto"
    assert Phase5Options.from_mapping({"use_gpu_phase5": False}).gpu == "off"


@pytest.mark.parametrize("value, expected", [
    ("local", "local"), ("Dask", "dask"), ("tcp://10.0.0.5:8786", "tcp://10.0.0.5:8786"),
    ("tcp://scheduler.example:8786/", "tcp://scheduler.example:8786"),
])
def test_scheduler_accepts_local_dask_and_tcp_addresses(value, expected):
    opts = Phase5Options()
    opts.set("scheduler", value)
    assert opts.scheduler == expected


@pytest.mark.parametrize("value", ["threads", "tcp://host", "tcp://host:99999", "http://h:1", 3])
def test_scheduler_rejects_other_values(value):
    with pytest.raises(OptionError, match="scheduler"):
        Phase5Options().set("scheduler", value)


def test_our_other_options_are_validated(tmp_path):
    opts = Phase5Options.from_mapping({
        "block_size": 512, "durable": "yes", "overwrite": True, "photometry": "corrected",
        "grid": tmp_path / "grid.hdr", "skip_bad_tiles": 1,
    })
    assert opts.block_size == 512 and opts.durable and opts.overwrite and opts.skip_bad_tiles
    assert opts.photometry == "corrected" and opts.grid == str(tmp_path / "grid.hdr")
    for key, value in [("block_size", 0), ("block_size", 12.5), ("photometry", "raw"),
                       ("gpu", "yes"), ("grid", 3), ("durable", "sometimes")]:
        with pytest.raises(OptionError, match=key):
            Phase5Options().set(key, value)
    assert Phase5Options.from_mapping({"block_size": None}).block_size is None


# --------------------------------------------------------------------------- coercion and ranges

def test_option_values_from_json_are_coerced_to_the_field_types():
    items = ["intertile_sky_percentile=[25, 75]", "patchwork_suppressor_seam_band_px=256.0",
             "apply_master_tile_crop=false", "crop_follow_signal=False", "tile_weight_v4_curve=LOG",
             "intertile_preview_size=256", "master_tile_crop_percent=5", "two_pass_cov_gain_clip=0.9,1.1",
             "tile_weight_v4_strength=\"0.5\""]
    opts = Phase5Options()
    for item in items:
        key, _, text = item.partition("=")
        opts.set(key, parse_option_value(text))
    assert opts.intertile_sky_percentile == (25.0, 75.0)
    assert all(isinstance(v, float) for v in opts.intertile_sky_percentile)
    assert opts.patchwork_suppressor_seam_band_px == 256
    assert isinstance(opts.patchwork_suppressor_seam_band_px, int)
    assert opts.apply_master_tile_crop is False and opts.crop_follow_signal is False
    assert opts.tile_weight_v4_curve == "log"
    assert opts.intertile_preview_size == 256 and isinstance(opts.master_tile_crop_percent, float)
    assert opts.two_pass_cov_gain_clip == (0.9, 1.1) and opts.tile_weight_v4_strength == 0.5
    assert Phase5Options(memory_budget="1GiB").memory_budget == GiB  # the constructor coerces too


@pytest.mark.parametrize("key, value, message", [
    ("tile_weight_v4_strength", 2.5, r"out of range.*\[0, 2\]"),
    ("phase5_alpha_weight_floor", -0.1, r"out of range.*\[0, 1\]"),
    ("master_tile_crop_percent", 50, r"out of range.*\[0, 50\)"),
    ("patchwork_suppressor_sigma_px", 4, r"out of range.*\[8, 512\]"),
    ("patchwork_suppressor_seam_band_px", 2048, r"out of range.*\[16, 1024\]"),
    ("patchwork_suppressor_max_delta", 0.5, r"out of range.*\[0.02, 0.35\]"),
    ("intertile_affine_blend", 1.5, "out of range"),
    ("intertile_sky_percentile", [70, 30], "first value must be <"),
    ("intertile_sky_percentile", [30, 170], "out of range"),
    ("intertile_sky_percentile", [30], "pair"),
    ("intertile_recenter_clip", [1.2, 0.8], "first value must be <="),
    ("two_pass_cov_sigma_px", 0, "out of range"),
    ("intertile_preview_size", 12.5, "integer"),
    ("intertile_preview_size", True, "number"),
    ("tile_weight_v4_curve", "sqr", r"not one of.*did you mean 'sqrt'"),
    ("apply_master_tile_crop", "perhaps", "true or false"),
    ("intertile_overlap_min", "lots", "number"),
    ("intertile_overlap_min", float("nan"), "finite"),
    ("two_pass_coverage_renorm", None, "true or false"),
])
def test_bad_values_raise_option_errors_naming_the_key(key, value, message):
    with pytest.raises(OptionError, match=rf"'{key}'.*{message}"):
        Phase5Options().set(key, value)


def test_unknown_strength_is_mapped_to_normal_with_a_warning_as_zemosaic_does(caplog):
    opts = Phase5Options()
    with caplog.at_level(logging.WARNING, logger="zemosaic_ooc.options"):
        opts.set("patchwork_suppressor_strength", "extreme")
    assert opts.patchwork_suppressor_strength == "normal"
    assert any("extreme" in r.getMessage() for r in caplog.records)
    opts.set("patchwork_suppressor_strength", "LOW")
    assert opts.patchwork_suppressor_strength == "low"


def test_cross_field_checks_run_in_validate_and_from_mapping():
    with pytest.raises(OptionError, match="min must be <= max"):
        Phase5Options.from_mapping({"tile_weight_v4_min": 2.0})
    opts = Phase5Options()
    opts.set("tile_weight_v4_min", 2.0)  # key by key: checked at the end
    opts.set("tile_weight_v4_max", 3.0)
    opts.validate()


# --------------------------------------------------------------------------- serialisation and docs

def test_to_dict_is_json_serialisable_and_round_trips():
    opts = Phase5Options.from_mapping({"intertile_sky_percentile": [20, 80], "gpu": "off",
                                       "memory_budget": "3GiB", "block_size": 256})
    data = json.loads(json.dumps(opts.to_dict()))
    assert Phase5Options.from_mapping(data) == opts
    assert opts.non_default() == {"intertile_sky_percentile": [20.0, 80.0], "gpu": "off",
                                  "use_gpu_phase5": False, "memory_budget": 3 * GiB,
                                  "block_size": 256}


def test_parse_option_value_is_json_else_string():
    assert parse_option_value("[1, 2]") == [1, 2]
    assert parse_option_value("true") is True
    assert parse_option_value("0.5") == 0.5
    assert parse_option_value("null") is None
    assert parse_option_value("strong") == "strong"
    assert parse_option_value("2GiB") == "2GiB"


def test_describe_options_lists_every_field_and_every_kind():
    rows = describe_options()
    by_key = {r["key"]: r for r in rows}
    for name in Phase5Options().to_dict():
        assert by_key[name]["kind"] in ("implemented", "ours")
        assert by_key[name]["meaning"]
    assert {r["kind"] for r in rows} == {"implemented", "ours", "ignored", "refused"}
    assert by_key["gpu"]["flag"] == "--gpu" and by_key["memory_budget"]["default"] == 2 * GiB
    assert by_key["use_existing_master_tiles"]["kind"] == "refused"
    assert by_key["sds_*"]["kind"] == "ignored"
    json.dumps(rows)


def test_docs_options_md_is_generated_from_describe_options():
    path = Path(__file__).resolve().parents[1] / "docs" / "options.md"
    if not path.is_file():
        pytest.skip("docs/options.md not present")
    assert path.read_text(encoding="utf-8") == options_markdown(), (
        "docs/options.md is stale: regenerate it with options_markdown()")
