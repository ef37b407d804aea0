"""The Phase-5 stage sequence: the only module that knows the order of stages.

ingest → plan (grid, tile scalars, §2.8 thresholds, boxes) → calibrate (§3) →
alpha-union bboxes (§5.3) → background offsets (§4) → pass-1 blocks (§5.1–5.3)
→ autocrop window (§5.4) → finish blocks (§5.5) → two-pass renormalisation (§6:
coverage blur, tile gains, pass-2 background offsets and blocks, P5, merge) →
patchwork suppressor (§7: statistics, blurs, correction) → export.  Each block
stage runs through :class:`BlockRunner` (threads or Dask, the OOM guard, the
journal); a stage the options switch off, or that ZeMosaic skips (§6.8), is named
in the run's summary.
"""
from __future__ import annotations

import concurrent.futures as cf
import logging
import math
import os
import shutil
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import numpy as np
import psutil

from ..backend import Backend, numpy_backend, select_backend
from ..concurrency import ordered_map
from ..device_budget import (device_block_workers, device_slots, handover_capacity, max_block_side,
                             resident_capacity, samples_capacity, task_budget, task_bytes, tiles_per_block)
from ..memory import MemoryShelf, release_memory, strip_pixels
from ..errors import InputError, StoreError
from ..options import Phase5Options
from ..progress import NullProgress, ProgressSink
from ..store.journal import Journal
from ..fallback.guard import OomGuard
from ..store.mosaic import MosaicStore
from ..store.tiles import TileCache, TileStore, ingest_tiles
from .background import background_offsets
from .calibrate import CalibrationResult, calibrate
from .channels import channel_mean, count_all_finite
from .corrected import corrected_calibration, corrected_to_json
from .coadd import BlockResult, coadd_block, union_bbox
from .finish import alpha_source_index, alpha_u8, autocrop_window, finish_values
from .handover import StageHandover
from .grid import (Box, compute_output_grid, grid_from_header, halo_superblocks, intersect, iter_blocks,
                   reproject_box)
from .mapping import OutputGrid
from .plan import StoreCalibrationSource, build_tile_plans, geometry, nan_threshold
from .prep import TilePlan
from .resident import ResidentTiles, resident_bytes

log = logging.getLogger(__name__)

BYTES_PER_BLOCK_PIXEL = 220   # working set of a pass-1 block task per output pixel (measured)
#: host working set per block pixel of a run whose block stages are on a device: the host
#: holds a block's results and writes them (commits 12–28 B/px), finishes and merges blocks
#: (29–62 B/px; tracemalloc, full blocks of 256 and 512 px), the samples stay on the device
DEVICE_HOST_BYTES_PER_BLOCK_PIXEL = 80
MEMORY_SHARE = 4  # each in-memory hand-over (tile cache, background differences, block samples,
                  # pass-1 blocks for finish) may hold up to 1/4 of the memory budget


@dataclass
class RunSummary:
    """What a run did, for the CLI's one-screen summary, the API and the report."""

    output: str
    shape_hw: tuple[int, int]
    window: Box
    n_tiles: int
    backend: str
    block_size: int
    workers: int
    stages: list[tuple[str, float]] = field(default_factory=list)
    #: wall seconds of each block stage within ``stages`` (coverage blur, pass2, merge, …)
    block_stages: list[tuple[str, float]] = field(default_factory=list)
    calibration: dict[str, Any] = field(default_factory=dict)
    background_offsets: list[list[float]] = field(default_factory=list)
    tile_weights: list[float] = field(default_factory=list)
    autocrop_fired: bool = False
    valid_fraction: float = 0.0
    peak_rss_bytes: int = 0
    steps_run: list[str] = field(default_factory=list)
    steps_skipped: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    fits_path: str | None = None
    preview_path: str | None = None
    two_pass: dict[str, Any] = field(default_factory=dict)
    device: dict[str, Any] = field(default_factory=dict)

    def format(self) -> str:
        y0, y1, x0, x1 = self.window
        lines = [
            f"zemosaic-ooc: Phase 5 finished -> {self.output}",
            f"  mosaic      {y1 - y0} x {x1 - x0} px (H x W) from {self.n_tiles} tiles"
            + (f", autocrop window rows {y0}:{y1} cols {x0}:{x1} of the {self.shape_hw[0]} x "
               f"{self.shape_hw[1]} grid" if self.autocrop_fired else ""),
            f"  valid       {100.0 * self.valid_fraction:.1f} % of pixels",
            f"  backend     {self.backend}, blocks of {self.block_size} px, {self.workers} worker(s)",
            f"  steps run   {', '.join(self.steps_run)}",
        ]
        if self.steps_skipped:
            lines.append(f"  not run     {', '.join(self.steps_skipped)}")
        cal = self.calibration
        if cal and cal.get("mode") == "corrected":
            per_tile = "; ".join("(" + ", ".join(f"{g:.4f}" for g in gs) + " | "
                                 + ", ".join(f"{o:+.2f}" for o in os_) + ")"
                                 for gs, os_ in zip(cal.get("gains_rgb", []), cal.get("offsets_rgb", [])))
            lines.append(f"  inter-tile  corrected photometry, {cal.get('status')}: per tile "
                         f"(gain R, G, B | offset R, G, B ADU): {per_tile}")
            if len(cal.get("components", [])) > 1 or cal.get("isolated"):
                lines.append(f"              {len(cal.get('components', []))} component(s) calibrated "
                             f"separately; uncalibrated: {', '.join(cal.get('isolated_tile_ids', [])) or 'none'}")
        elif cal:
            gains = ", ".join(f"{g:.4f}" for g in cal.get("gains", []))
            offsets = ", ".join(f"{o:+.3f}" for o in cal.get("offsets", []))
            lines.append(f"  inter-tile  {cal.get('status')}: gains [{gains}] offsets [{offsets}] ADU")
            if cal.get("guard_reasons"):
                lines.append(f"              under-constrained guard: {', '.join(cal['guard_reasons'])}")
        if self.background_offsets:
            rows = "; ".join("(" + ", ".join(f"{v:+.2f}" for v in row) + ")" for row in self.background_offsets)
            lines.append(f"  background  per tile R,G,B: {rows}")
        lines.append("  stages      " + ", ".join(f"{name} {seconds:.1f}s" for name, seconds in self.stages))
        lines.append(f"  peak RSS    {self.peak_rss_bytes / 2**20:.0f} MiB")
        if self.fits_path:
            lines.append(f"  FITS        {self.fits_path}")
        if self.preview_path:
            lines.append(f"  preview     {self.preview_path}")
        dev = self.device
        if dev.get("device"):
            name = f"{dev['device']} ({dev['device_name']})" if dev.get("device_name") else dev["device"]
            moved = (dev.get("bytes_to_device", 0) + dev.get("bytes_to_host", 0)) / 1e9
            lines.append(f"  device      {name}: {dev.get('replays', 0)} block(s) replayed on CPU, "
                         f"{dev.get('oom_strikes', 0)} OOM(s), {moved:.2f} GB moved host<->device"
                         + (f"; disabled: {dev['disabled_reason']}" if dev.get("disabled_reason") else ""))
        tp = self.two_pass
        if tp.get("ran"):
            gains = ", ".join(f"{g:.4f}" for g in tp.get("gains", []))
            lines.append(f"  two-pass    gains [{gains}], {100.0 * tp.get('fraction_pass2', 0.0):.1f} % "
                         "of pixels from pass 2")
        for warning in self.warnings:
            lines.append(f"  warning     {warning}")
        return "\n".join(lines)


class _PeakRss:
    """Samples the process RSS; psutil's peak where the platform has it."""

    def __init__(self) -> None:
        self.process = psutil.Process()
        self.peak = 0

    def sample(self) -> int:
        release_memory()
        rss = self.process.memory_info().rss
        self.peak = max(self.peak, rss)
        return self.peak


def choose_block_size(opts: Phase5Options, workers: int, shape_hw: tuple[int, int] | None = None,
                      device_budget: int | None = None) -> int:
    """Blocks equal the output chunks: from ``--block-size`` or the memory budget.

    With the grid shape, the budget's side is lowered to split the grid into blocks of
    even size (a multiple of 16): edge chunks are stored whole, so a 2176 px block on a
    2467 px grid would write 3× the mosaic, and uneven blocks leave workers idle.  With a
    device, a block must also fit its VRAM budget (:func:`~..device_budget.max_block_side`),
    and the host holds less of it (:data:`DEVICE_HOST_BYTES_PER_BLOCK_PIXEL`): device blocks
    are larger (a device task has a fixed host cost, so small blocks cost it more; measured
    on an H100, 16×2048² first pass, 16 threads: 496 px blocks 12.0 s, 1472 px 9.6 s).  CPU
    replays of such blocks then run fewer at a time (:func:`host_replay_slots`).
    """
    if opts.block_size:
        return int(opts.block_size)
    budget = int(opts.memory_budget)
    per_pixel = BYTES_PER_BLOCK_PIXEL if device_budget is None else DEVICE_HOST_BYTES_PER_BLOCK_PIXEL
    pixels = budget / (max(1, workers) * per_pixel * 2)
    side = int(math.sqrt(max(pixels, 1)))
    side = max(128, min(4096, (side // 128) * 128))
    if device_budget is not None:
        side = min(side, max_block_side(int(device_budget)))
    if shape_hw is not None:
        even = max(math.ceil(n / math.ceil(n / side)) for n in shape_hw)
        side = max(128, min(side, math.ceil(even / 16) * 16))
    return side


def run_percentiles(boxes: Sequence[Box], values_of: Callable[[Box], np.ndarray], qs: list[float],
                    opts: Phase5Options, workers: int) -> list[float]:
    """Exact percentiles of block values (phase5/stats.py) on the run's threads, their keys kept
    within a share of the budget."""
    from .stats import exact_percentiles

    return exact_percentiles(boxes, values_of, qs, workers=workers,
                             cache_bytes=int(opts.memory_budget) // MEMORY_SHARE)


def halo_stage_bytes(opts: Phase5Options) -> int:
    """What a halo stage's groups in flight may hold: the budget less the tile cache's share."""
    budget = int(opts.memory_budget)
    return budget - budget // MEMORY_SHARE


def host_replay_slots(opts: Phase5Options, block: int, workers: int) -> int:
    """How many block tasks may run on the CPU at once in a device run (replays, and every
    task once the device is off): what half the memory budget holds of the CPU's working set
    (:data:`BYTES_PER_BLOCK_PIXEL`), 1 … ``workers``."""
    fits = int(opts.memory_budget) // (2 * BYTES_PER_BLOCK_PIXEL * block * block)
    return max(1, min(int(workers), int(fits)))


def _store_differences(output: Path, tile_paths: Sequence[str | Path], opts: Phase5Options) -> str:
    """How an existing store's recorded run differs from this one (names the option keys)."""
    try:
        store = MosaicStore.open(output, mode="r")
        request = (store.attrs.get("run_state") or {}).get("run_request")
    except Exception:
        return ""
    if not request:
        return ""
    old, new = request.get("options", {}), opts.to_dict()
    ignore = {"overwrite", "durable"}
    keys = sorted(k for k in set(old) | set(new) if k not in ignore and old.get(k) != new.get(k))
    parts = []
    if keys:
        parts.append("made with other options: " + ", ".join(keys))
    old_tiles = [Path(p).resolve() for p in request.get("tile_paths", [])]
    new_tiles = [Path(p).resolve() for p in tile_paths]
    if old_tiles != new_tiles:
        parts.append("made from other input tiles")
    else:
        try:
            records = TileStore.open(output / "tiles").records
            from ..store.tiles import _file_checksum
            changed = [r.source for r in records
                       if Path(r.source).exists() and _file_checksum(Path(r.source)) != r.checksum]
            if changed:
                parts.append("input tiles changed since: " + ", ".join(Path(c).name for c in changed))
        except Exception:
            pass
    if not parts:
        parts.append("made with the same options and tiles")
    return " (" + "; ".join(parts) + ")"


def _coverage_extent(coverage: np.ndarray, box: Box, threshold: float):
    """Rows and columns (half-open, grid coordinates) where a block's coverage exceeds the threshold."""
    y0, _, x0, _ = box
    covered = coverage > threshold
    rows = np.nonzero(covered.any(axis=1))[0]
    cols = np.nonzero(covered.any(axis=0))[0]
    if not rows.size:
        return None, None
    return (int(rows[0]) + y0, int(rows[-1]) + y0 + 1), (int(cols[0]) + x0, int(cols[-1]) + x0 + 1)


def _block_key(box: Box) -> str:
    return "{}:{},{}:{}".format(*box)


def _kill_point(stage: str, count: int) -> None:
    """Test hook: ``ZEMOSAIC_OOC_TEST_KILL_AT=stage:n`` SIGKILLs the process after n blocks/units."""
    target = os.environ.get("ZEMOSAIC_OOC_TEST_KILL_AT")
    if target and target == f"{stage}:{count}":
        import signal
        os.kill(os.getpid(), signal.SIGKILL)


def _retire_samples(samples: MemoryShelf | None, handover: StageHandover) -> None:
    """After the coadd that used a background walk's block samples: let go of those left
    (blocks resumed as done leave theirs; nothing reads them now), detach the shelf from the
    device, and give its share of the VRAM budget to the handover."""
    if samples is None:
        return
    samples.clear()
    device = handover.device
    if device is not None and samples in device.shelves:
        device.shelves.remove(samples)
    handover.grow(samples.device_capacity)


def _release_device_caches(device: Backend) -> None:
    """At the run's end: what :meth:`Backend.free_memory` lets go of (resident tiles, handed-over
    blocks, kept block samples, CuPy's pools), and the run's caches detached from the device
    (the VRAM is the caller's again)."""
    device.free_memory()
    device.resident = None
    device.handover = None
    device.shelves = []


def _cluster_call(task: Callable[..., Any], box: Box, backend: Backend, guarded: bool) -> tuple[Any, float]:
    started = time.perf_counter()
    result = task(box, backend) if guarded else task(box)
    release_memory()
    return result, time.perf_counter() - started


@dataclass
class _Committed:
    """A block task followed by its commit, as one callable (what a Dask worker runs)."""

    task: Callable[..., Any]
    commit: Callable[[Box, Any], Any]
    guarded: bool

    def __call__(self, box: Box, backend: Backend | None = None) -> Any:
        result = self.task(box, backend) if self.guarded else self.task(box)
        return self.commit(box, result)


@dataclass
class BlockRunner:
    """Runs a stage's block tasks on a thread pool, through the OOM guard, and journals them."""

    workers: int
    progress: ProgressSink
    rss: _PeakRss
    journal: Journal | None
    guard: OomGuard

    resume: bool = False
    durable: bool = False
    client: Any = None           # a dask.distributed Client: tasks run on its workers
    #: threads of the block tasks when fewer than ``workers`` (a device run, see
    #: :func:`~..device_budget.device_block_workers`); the scans of a stage keep ``workers``
    block_workers: int | None = None
    #: wall seconds of each block stage this runner ran, by stage label, in order (a label run
    #: twice adds up): the finer breakdown of a pipeline stage (e.g. "two-pass")
    block_stage_seconds: dict[str, float] = field(default_factory=dict)

    def run(self, stage: str, boxes: Sequence[Box], task: Callable[..., Any], *,
            guarded: bool = True, recover: Callable[[Box], Any] | None = None,
            commit: Callable[[Box, Any], Any] | None = None) -> list[Any]:
        """``task(box, backend)`` when ``guarded`` (device first, CPU replay on OOM), else ``task(box)``.

        ``commit(box, task result)``, when given, runs after the task on the same worker,
        outside the guard: the host work of a block (writing its arrays) then does not hold
        a device slot, nor the stage's first-task gate; its return value is the block's
        result.  On resume, blocks the journal marks done are skipped (their result comes
        from ``recover(box)``, which reads what the block wrote; a chunk whose checksum
        fails makes the block run again).
        """
        done = self.journal.done_blocks(stage) if (self.resume and self.journal is not None) else set()

        def call(box: Box) -> tuple[Any, str, float, bool]:
            started = time.perf_counter()
            if guarded:
                result, outcome = self.guard.run(stage, box, task)
                backend_name, replay = outcome.backend, outcome.replay
            else:
                result, backend_name, replay = task(box), self.guard.host.name, False
            if commit is not None:
                result = commit(box, result)
            return result, backend_name, time.perf_counter() - started, replay

        stage_started = time.perf_counter()
        self.progress.start(stage, len(boxes))
        results: list[Any] = [None] * len(boxes)
        todo = []
        for k, box in enumerate(boxes):
            if _block_key(box) in done:
                try:
                    results[k] = recover(box) if recover is not None else None
                    self.progress.advance(stage)
                    continue
                except Exception as exc:  # a damaged chunk (checksum) or a missing array
                    log.warning("%s block %s: stored result unreadable (%s); recomputing it",
                                stage, _block_key(box), exc)
            todo.append(k)
        remote_task = task if commit is None else _Committed(task, commit, guarded)
        for completed, (k, (result, backend_name, seconds, replay)) in enumerate(
                self._execute(stage, boxes, todo, call, remote_task, guarded), start=1):
            results[k] = result
            if self.durable:
                os.sync()          # --durable: the block's chunks reach the disk before "done"
            if self.journal is not None:
                self.journal.block_done(stage, _block_key(boxes[k]), backend_name, seconds, replay)
            self.rss.sample()
            self.progress.advance(stage)
            _kill_point(stage, completed)
        self.progress.finish(stage)
        self._add_seconds(stage, time.perf_counter() - stage_started)
        return results

    @property
    def task_workers(self) -> int:
        """Threads that run a stage's block tasks."""
        return min(self.workers, self.block_workers or self.workers)

    def _add_seconds(self, stage: str, seconds: float) -> None:
        self.block_stage_seconds[stage] = self.block_stage_seconds.get(stage, 0.0) + seconds

    @contextmanager
    def timed(self, stage: str) -> Iterator[None]:
        """Adds the wall time of the ``with`` body to ``block_stage_seconds[stage]`` (a stage
        that is not one :meth:`run`: the tile gains, the percentile scans)."""
        started = time.perf_counter()
        try:
            yield
        finally:
            self._add_seconds(stage, time.perf_counter() - started)

    def guarded_values(self, stage: str, values_of: Callable[[Box, Backend], np.ndarray]
                       ) -> Callable[[Box], np.ndarray]:
        """``values_of(box, backend)`` through the OOM guard (device first, CPU replay), as the
        ``values_of(box)`` of a percentile scan: the values are computed where the blocks are,
        and only they come back to the host."""
        return lambda box: self.guard.call(stage, box, values_of)

    def _execute(self, stage: str, boxes: Sequence[Box], todo: list[int],
                 call: Callable[[Box], tuple[Any, str, float, bool]], task: Callable[..., Any],
                 guarded: bool):
        """Yield (index, (result, backend, seconds, replay)) as blocks finish, wherever they run."""
        if self.client is not None and todo:
            from distributed import as_completed

            futures = {self.client.submit(_cluster_call, task, boxes[k], self.guard.host, guarded,
                                          retries=3, pure=False,
                                          key=f"{stage}-{_block_key(boxes[k])}-{id(task)}"): k
                       for k in todo}
            for future in as_completed(list(futures)):
                result, seconds = future.result()
                yield futures[future], (result, f"dask:{self.guard.host.name}", seconds, False)
        elif self.task_workers <= 1:
            for k in todo:
                yield k, call(boxes[k])
        else:
            with cf.ThreadPoolExecutor(max_workers=self.task_workers) as pool:
                futures = {pool.submit(call, boxes[k]): k for k in todo}
                for future in cf.as_completed(futures):
                    yield futures[future], future.result()


def run_pipeline(tile_paths: Sequence[str | Path], output: str | Path,
                 options: Phase5Options | None = None, **kwargs: Any) -> RunSummary:
    """Run Phase 5 from master-tile FITS files to a MosaicStore (and optional FITS/PNG).

    Holds the store's lock (``OUT.zarr.lock``) for the whole run; see
    :func:`_run_pipeline` for the keyword arguments.
    """
    from ..store.lock import RunLock

    import contextlib

    from ..store.codecs import threaded_checksums

    with RunLock(output), contextlib.ExitStack() as cleanup, threaded_checksums():
        return _run_pipeline(tile_paths, output, options, _cleanup=cleanup, **kwargs)


def resume_pipeline(output: str | Path, **kwargs: Any) -> RunSummary:
    """Continue an interrupted run: done stages and blocks are skipped (damaged chunks recomputed)."""
    output = Path(output)
    if not (output / "zarr.json").exists():
        raise StoreError(f"{output}: no output store to resume here")
    store = MosaicStore.open(output, mode="r")
    state = dict(store.attrs.get("run_state") or {})
    request = state.get("run_request")
    if not request:
        raise StoreError(f"{output}: this store holds no run to resume")
    opts = Phase5Options.from_mapping(request["options"])
    if "plan" not in state.get("stages_done", []):
        # stopped during ingest or planning: start the same run again from its recorded request
        log.warning("%s: the run stopped before its plan was saved; starting it again", output)
        opts.overwrite = True
        return run_pipeline(request["tile_paths"], output, opts, **kwargs)
    return run_pipeline(request["tile_paths"], output, opts, resume=True, **kwargs)


def _run_pipeline(tile_paths: Sequence[str | Path], output: str | Path,
                 options: Phase5Options | None = None, *,
                 fits_path: str | Path | None = None, preview_path: str | Path | None = None,
                 progress: ProgressSink | None = None, backend: Backend | None = None,
                 workers: int | None = None, grid: tuple[Any, tuple[int, int]] | None = None,
                 device: Backend | None = None, max_oom: int = 3,
                 fault_injector: Any = None, resume: bool = False,
                 _cleanup: Any = None) -> RunSummary:
    """Run Phase 5 from master-tile FITS files to a MosaicStore (and optional FITS/PNG).

    ``backend`` is the host (CPU) backend.  ``device`` runs the block stages on a
    device backend through the OOM guard (replays on the CPU, disabled after
    ``max_oom`` out-of-memory errors or any other device error);
    ``fault_injector(stage, box, device)`` may raise to simulate device failures
    (tests run the device path with numpy standing in for the device).

    ``grid`` = (WCS, (H, W)) overrides the computed output grid (else ``options.grid``,
    a FITS header file, else spec §1).
    """
    opts = options or Phase5Options()
    progress = progress or NullProgress()
    if device is None:
        chosen = select_backend(str(getattr(opts, "gpu", "auto")),
                                host_budget_bytes=int(opts.memory_budget),
                                gpu_budget_bytes=getattr(opts, "gpu_memory_budget", None))
        if chosen.is_device:  # pragma: no cover - needs a GPU
            device = chosen
    if backend is None:
        backend = numpy_backend(int(opts.memory_budget))
    kwargs_workers = workers
    workers = workers or min(os.cpu_count() or 1, 8)
    scheduler = str(getattr(opts, "scheduler", "local") or "local")
    # a device run's block tasks run on fewer threads, with larger blocks (device_budget.py);
    # with a Dask scheduler they run on its workers, as many as it has
    block_workers = device_block_workers(workers) if device is not None and scheduler == "local" else workers
    rss = _PeakRss()
    tile_cache = TileCache(int(opts.memory_budget) // MEMORY_SHARE)
    stages: list[tuple[str, float]] = []
    warnings_list: list[str] = []
    output = Path(output)
    if resume:
        store = MosaicStore.open(output, mode="r+")
        state = dict(store.attrs.get("run_state") or {})
        tile_store = TileStore.open(output / "tiles", tile_cache)
        for orphan in list(output.rglob("*.partial")):
            if orphan.is_dir():
                shutil.rmtree(orphan, ignore_errors=True)
            else:
                orphan.unlink(missing_ok=True)
    else:
        state = {}
        if not tile_paths:
            raise InputError(None, "no input tiles were given")
        if output.exists() and not output.is_dir():
            raise StoreError(f"{output}: exists and is not a folder (a Zarr store is a folder); "
                             "choose another output path")
        if output.exists() and any(output.iterdir()) and not getattr(opts, "overwrite", False):
            raise StoreError(f"{output}: output store already exists{_store_differences(output, tile_paths, opts)}"
                             f"; use --overwrite to replace it, or zemosaic-ooc resume {output} to "
                             "continue an interrupted run")
        parent = output.parent if str(output.parent) else Path(".")
        if parent.exists() and not os.access(parent, os.W_OK):
            raise StoreError(f"{output}: output folder is not writable")

    def stage_done(name: str) -> bool:
        return name in state.get("stages_done", [])

    def save_state(name: str | None = None, **values: Any) -> None:
        state.update(values)
        if name and name not in state.setdefault("stages_done", []):
            state["stages_done"].append(name)
        store.attrs_update(run_state=state)
        _kill_point(f"after-{name}", 1)

    # ---- ingest (validates every tile before writing anything)
    t0 = time.perf_counter()
    if not resume:
        # the store records the request first, so a run killed during ingest can be resumed;
        # bad input removes it again (never a half-made store)
        if output.exists():
            shutil.rmtree(output)
        store = MosaicStore.create(output, (0, 0), 0, overwrite=True)
        state["run_request"] = {"tile_paths": [str(p) for p in tile_paths], "options": opts.to_dict()}
        store.attrs_update(run_state=state)
        progress.start("ingest", len(tile_paths), unit="tile")
        try:
            # ingest builds tiles.partial and renames it to tiles once every tile passed its checks
            tile_store = ingest_tiles(list(tile_paths), output / "tiles", skip_bad=bool(opts.skip_bad_tiles),
                                      cache=tile_cache, workers=workers,
                                      memory_budget=int(opts.memory_budget),
                                      progress=lambda k, n, p: (progress.advance("ingest"), rss.sample(),
                                                                _kill_point("ingest", k)))
        except BaseException:
            shutil.rmtree(output, ignore_errors=True)
            raise
        progress.finish("ingest")
    for record in tile_store.records:
        warnings_list += [f"{Path(record.source).name}: {w}" for w in record.warnings]
    warnings_list += list(tile_store.group.attrs.get("skipped", []))
    stages.append(("ingest", time.perf_counter() - t0))
    rss.sample()

    # ---- plan
    t0 = time.perf_counter()
    if resume:
        from astropy.io import fits
        tiles = [TilePlan.from_json(d) for d in state["tiles"]]
        from astropy.wcs import WCS
        shape_hw = tuple(int(v) for v in state["shape_hw"])
        out_wcs = WCS(fits.Header.fromstring(state["grid_header"]), naxis=2)
        out_wcs.pixel_shape = (shape_hw[1], shape_hw[0])
        block = int(state["block"])
    else:
        tiles = build_tile_plans(tile_store.records, opts)
        if grid is not None:
            out_wcs, shape_hw = grid
        elif getattr(opts, "grid", None):
            from astropy.io import fits
            try:
                out_wcs, shape_hw = grid_from_header(fits.getheader(str(opts.grid)))
            except Exception as exc:
                shutil.rmtree(output, ignore_errors=True)
                raise InputError(opts.grid, f"cannot use as output grid ({exc})") from exc
        else:
            out_wcs, shape_hw = compute_output_grid([geometry(t) for t in tiles])
        block = choose_block_size(opts, block_workers, shape_hw,
                                  device_budget=None if device is None else task_budget(device.budget_bytes))
        store.attrs_update(shape_hw=list(shape_hw), block=int(block))
    out_grid = OutputGrid(out_wcs, shape_hw)
    journal = Journal(output / "journal.sqlite", durable=bool(getattr(opts, "durable", False)))
    guard = OomGuard(device, backend, max_oom=max_oom, inject=fault_injector)
    runner = BlockRunner(workers, progress, rss, journal, guard, resume=resume,
                         durable=bool(getattr(opts, "durable", False)), block_workers=block_workers)
    cluster = None
    if scheduler != "local":
        from ..schedule.dask import close, make_client
        runner.client, cluster = make_client(scheduler, workers=kwargs_workers,
                                             memory_budget=int(opts.memory_budget))
        if _cleanup is not None:
            _cleanup.callback(close, runner.client, cluster)

    calibration_runs = bool(opts.intertile_photometric_match) and len(tiles) >= 2
    if not stage_done("plan"):
        for tile in tiles:
            tile.box = reproject_box(geometry(tile), out_grid, shape_hw)
        if calibration_runs:
            # each scan holds a strip of one tile (256 rows): the tiles are scanned side by side
            scans = ordered_map(lambda t: nan_threshold(backend, tile_store, t), tiles, workers)
            for tile, theta in scans:
                if isinstance(theta, BaseException):
                    raise theta
                tile.nan_threshold = theta
                rss.sample()
        store.attrs_update(output_wcs_header=out_grid.header_text, options=opts.to_dict())
        save_state("plan", tiles=[t.to_json() for t in tiles], grid_header=out_grid.header_text,
                   shape_hw=list(shape_hw), block=block)
    stages.append(("plan", time.perf_counter() - t0))
    rss.sample()

    blocks = list(iter_blocks(shape_hw, block))      # the output chunks: every block stage's boxes
    # stage arrays' blocks handed to the next block stages on the device (phase5/handover.py;
    # in process only: none on the CPU path or with a Dask client)
    handover = (StageHandover(device, handover_capacity(device.budget_bytes), shape_hw, block)
                if device is not None and runner.client is None else StageHandover.store_only(shape_hw, block))
    if device is not None:
        device.handover = handover
        # VRAM budget: how many block tasks the device holds at once
        most_tiles = tiles_per_block([t.box for t in tiles], blocks)
        guard.limit_device_tasks(device_slots(task_budget(device.budget_bytes), block * block, most_tiles,
                                              block_workers),
                                 task_bytes=task_bytes(block * block, most_tiles), tiles_per_block=most_tiles)
        guard.limit_host_tasks(host_replay_slots(opts, block, block_workers))
        # the prepared tiles stay on the device while they fit their share (phase5/resident.py)
        device.resident = ResidentTiles(resident_capacity(device.budget_bytes,
                                                          sum(resident_bytes(t) for t in tiles)))
        if _cleanup is not None:
            _cleanup.callback(_release_device_caches, device)     # the VRAM is the caller's again after the run
        log.info("device %s: budget %.2f GiB, blocks of %d px reached by up to %d tiles: %d task(s) at once "
                 "on %d thread(s); %.2f GiB for resident tiles", device.name, device.budget_bytes / 2**30, block,
                 most_tiles, guard.device_slots, runner.task_workers, device.resident.capacity / 2**30)

    # ---- inter-tile calibration (§3)
    t0 = time.perf_counter()
    if stage_done("calibrate"):
        calibration_json = state["calibration"]
    else:
        calibration = CalibrationResult(gains=[1.0] * len(tiles), offsets=[0.0] * len(tiles),
                                        applied=False, status="disabled")
        calibration_json = None
        if calibration_runs and str(opts.photometry) == "corrected":
            progress.start("calibrate", 1, unit="pair")
            corrected = corrected_calibration(
                backend, tile_store, tiles, out_grid, strip_pixels=strip_pixels(int(opts.memory_budget)),
                progress=lambda k, n: (progress.advance("calibrate", 0), rss.sample(),
                                       _kill_point("calibrate", k)), workers=workers)
            progress.finish("calibrate")
            if corrected.applied:
                for tile, g, o in zip(tiles, corrected.gains_rgb, corrected.offsets_rgb):
                    tile.gain_rgb, tile.offset_rgb = [float(v) for v in g], [float(v) for v in o]
            calibration_json = corrected_to_json(corrected, [t.tile_id for t in tiles])
        elif calibration_runs:
            source = StoreCalibrationSource(backend, tile_store, tiles, int(opts.intertile_preview_size))
            progress.start("calibrate", 1, unit="pair")
            calibration = calibrate(backend, [geometry(t) for t in tiles], [t.tile_id for t in tiles],
                                    [t.tau for t in tiles], out_wcs, shape_hw, opts, source,
                                    progress=lambda k, n: (progress.advance("calibrate", 0), rss.sample()),
                                    workers=workers)
            progress.finish("calibrate")
            for tile, g, o in zip(tiles, calibration.gains, calibration.offsets):
                tile.gain, tile.offset = float(g), float(o)
        if calibration_json is None:
            calibration_json = calibration.to_json()
        save_state("calibrate", calibration=calibration_json, tiles=[t.to_json() for t in tiles])
    stages.append(("calibrate", time.perf_counter() - t0))
    rss.sample()

    # ---- alpha-union bboxes (§5.3) and background offsets (§4)
    t0 = time.perf_counter()
    # the background stage resamples the pass-1 blocks; pass 1 reuses them (in process only)
    samples_cache = MemoryShelf(int(opts.memory_budget) // MEMORY_SHARE,
                                device_capacity=0 if device is None else samples_capacity(device.budget_bytes)
                                ) if runner.client is None else None
    if device is not None and samples_cache is not None:
        device.shelves.append(samples_cache)          # an OOM lets go of its device values
    if not stage_done("background"):
        # each scan holds a band of one tile: the tiles are scanned side by side
        with runner.timed("union bboxes"):
            bboxes = ordered_map(lambda t: union_bbox(backend, tile_store, t, out_grid,
                                                      strip_pixels=strip_pixels(int(opts.memory_budget))),
                                 tiles, workers)
            for tile, bbox in bboxes:
                if isinstance(bbox, BaseException):
                    raise bbox
                tile.union_bbox = bbox
                rss.sample()
        progress.start("background", 1, unit="pair")
        strip = strip_pixels(int(opts.memory_budget))
        with runner.timed("background offsets"):
            offsets, _ = background_offsets(
                backend, tile_store, tiles, out_grid, strip_pixels=strip, workers=runner.task_workers,
                blocks=blocks, cache=samples_cache,
                diff_bytes=int(opts.memory_budget) // MEMORY_SHARE, run_on=guard.call,
                progress=lambda k, n: (progress.advance("background", 0), rss.sample()))
        progress.finish("background")
        for tile, row in zip(tiles, offsets):
            tile.bg_offsets = [float(v) for v in row]
        store.attrs_update(plan={"tiles": [t.to_json() for t in tiles], "calibration": calibration_json})
        save_state("background", tiles=[t.to_json() for t in tiles])
    stages.append(("background", time.perf_counter() - t0))
    rss.sample()

    # ---- pass 1 (§5.1–5.3)
    t0 = time.perf_counter()
    height, width = shape_hw
    p1 = store.require("stages/pass1_mosaic", (height, width, 3), "float32", (block, block, 3))
    p1_cov = store.require("stages/pass1_coverage", (height, width), "float32", (block, block))
    p1_union = store.require("stages/alpha_union", (height, width), "float32", (block, block))
    threshold = 0.0 if opts.crop_follow_signal else 1e-6
    # pass-1 blocks also kept in memory (within a share of the budget) for finish to use
    # instead of reading the stage arrays back
    held = MemoryShelf(int(opts.memory_budget) // MEMORY_SHARE)

    def pass1_task(box: Box, be: Backend) -> BlockResult:
        samples = samples_cache.pop(box) if samples_cache is not None else None
        return coadd_block(be, tile_store, tiles, out_grid, box, samples=samples,
                           keep_on_backend=handover.takes(be))

    def pass1_commit(box: Box, result: BlockResult) -> tuple[tuple[int, int] | None, tuple[int, int] | None]:
        y0, y1, x0, x1 = box
        p1[y0:y1, x0:x1, :] = result.mosaic
        p1_cov[y0:y1, x0:x1] = result.coverage
        p1_union[y0:y1, x0:x1] = result.union
        kept = result.on_backend is not None and all(
            handover.keep(array, box, value) for array, value in zip((p1, p1_cov, p1_union), result.on_backend))
        if not kept:
            handover.drop((p1, p1_cov, p1_union), box)
            arrays = (result.mosaic, result.coverage, result.union)
            held.put(box, arrays, sum(a.nbytes for a in arrays))
        return _coverage_extent(result.coverage, box, threshold)

    def pass1_recover(box: Box):
        y0, y1, x0, x1 = box
        p1[y0:y1, x0:x1, :]
        p1_union[y0:y1, x0:x1]
        return _coverage_extent(p1_cov[y0:y1, x0:x1], box, threshold)

    extents = runner.run("pass1", blocks, pass1_task, recover=pass1_recover, commit=pass1_commit)
    stages.append(("pass1", time.perf_counter() - t0))
    _retire_samples(samples_cache, handover)

    # ---- autocrop (§5.4) and finish (§5.5)
    t0 = time.perf_counter()
    row_ext = [e[0] for e in extents if e[0] is not None]
    col_ext = [e[1] for e in extents if e[1] is not None]
    covered_rows = (min(r[0] for r in row_ext), max(r[1] for r in row_ext)) if row_ext else None
    covered_cols = (min(c[0] for c in col_ext), max(c[1] for c in col_ext)) if col_ext else None
    window, fired = autocrop_window(covered_rows, covered_cols, shape_hw, bool(opts.crop_follow_signal))
    wy0, wy1, wx0, wx1 = window
    if fired and opts.crop_follow_signal:
        src_rows = alpha_source_index(wy1 - wy0, wy0, wy1)
        src_cols = alpha_source_index(wx1 - wx0, wx0, wx1)
    else:
        src_rows = np.arange(wy0, wy1)
        src_cols = np.arange(wx0, wx1)
    alpha_dropped = src_rows is None or src_cols is None
    if alpha_dropped:
        warnings_list.append("alpha union dropped after the autocrop (ZeMosaic's fallback)")
    two_pass_runs = bool(opts.two_pass_coverage_renorm) and not fired
    two_pass_note = None
    if opts.two_pass_coverage_renorm and fired:
        two_pass_note = ("two-pass renormalisation kept pass 1: the autocrop changed the grid "
                         "(ZeMosaic's shape check, spec §6.8)")
    # every stage writes its own arrays (a re-run block overwrites the same bytes); the last
    # stage that changes the mosaic / the coverage writes the final ``mosaic`` / ``coverage``
    patchwork_runs = bool(opts.patchwork_suppressor_enabled)
    pass1_mosaic_name = "stages/pass1_final_mosaic" if (two_pass_runs or patchwork_runs) else "mosaic"
    pass1_coverage_name = "stages/pass1_final_coverage" if two_pass_runs else "coverage"
    mosaic_arr = store.require(pass1_mosaic_name, (height, width, 3), "float32", (block, block, 3),
                               fill_value=float("nan"))
    coverage_arr = store.require(pass1_coverage_name, (height, width), "float32", (block, block))
    alpha_arr = store.require("alpha", (height, width), "uint8", (block, block))

    def finish_task(box: Box, be: Backend) -> tuple[np.ndarray, np.ndarray, np.ndarray, int, Any] | None:
        """§5.5 on the block's part of the window, on ``be``: (mosaic, coverage, A8, valid
        pixels, the three arrays on ``be`` when they are handed over, else None)."""
        part = intersect(box, window)
        if part is None:
            return None
        y0, _, x0, _ = box
        iy0, iy1, ix0, ix1 = part
        kept = held.get(box)                  # taken off the shelf by the commit (a replay reads it again)
        inner = (slice(iy0 - y0, iy1 - y0), slice(ix0 - x0, ix1 - x0))
        own = (slice(iy0, iy1), slice(ix0, ix1))
        mos = handover.region(be, p1, *own) if kept is None else be.asarray(kept[0][inner])
        cov = handover.region(be, p1_cov, *own) if kept is None else be.asarray(kept[1][inner])
        if alpha_dropped:
            a8 = None
        else:
            rows = src_rows[iy0 - wy0:iy1 - wy0]
            cols = src_cols[ix0 - wx0:ix1 - wx0]
            if not fired:                                    # rows and cols are the block's own
                union = handover.region(be, p1_union, *own) if kept is None else be.asarray(kept[2][inner])
            else:
                region = p1_union[int(rows.min()):int(rows.max()) + 1,
                                  int(cols.min()):int(cols.max()) + 1]
                union = be.asarray(region[np.ix_(rows - rows.min(), cols - cols.min())])
            a8 = alpha_u8(union, be.xp)
        mos, cov, a8 = finish_values(mos, cov, a8, be.xp)
        valid = count_all_finite(be.xp, mos)
        on_backend = (mos, cov, a8) if handover.takes(be) else None
        return be.to_host(mos), be.to_host(cov), be.to_host(a8), valid, on_backend

    def finish_commit(box: Box, result: tuple[np.ndarray, np.ndarray, np.ndarray, int, Any] | None) -> int:
        held.pop(box)
        handover.drop((p1, p1_cov, p1_union), box)
        if result is None:
            return 0
        iy0, iy1, ix0, ix1 = intersect(box, window)
        mos, cov, a8, valid, on_backend = result
        mosaic_arr[iy0:iy1, ix0:ix1, :] = mos
        coverage_arr[iy0:iy1, ix0:ix1] = cov
        alpha_arr[iy0:iy1, ix0:ix1] = a8
        if on_backend is not None:           # kept only where the block is whole (handover.keep)
            for array, value, read_later in zip((mosaic_arr, coverage_arr, alpha_arr), on_backend,
                                                (two_pass_runs or patchwork_runs,) * 2 + (patchwork_runs,)):
                if read_later:
                    handover.keep(array, (iy0, iy1, ix0, ix1), value)
        return valid

    def finish_recover(box: Box) -> int:
        part = intersect(box, window)
        if part is None:
            return 0
        iy0, iy1, ix0, ix1 = part
        coverage_arr[iy0:iy1, ix0:ix1]
        alpha_arr[iy0:iy1, ix0:ix1]
        return count_all_finite(np, mosaic_arr[iy0:iy1, ix0:ix1, :])

    valid_counts = runner.run("finish", blocks, finish_task, recover=finish_recover, commit=finish_commit)
    window_pixels = max(1, (wy1 - wy0) * (wx1 - wx0))
    stages.append(("finish", time.perf_counter() - t0))
    two_pass_info: dict[str, Any] = {"enabled": bool(opts.two_pass_coverage_renorm), "ran": False}
    if two_pass_note:
        warnings_list.append(two_pass_note)
        two_pass_info["note"] = two_pass_note
    if two_pass_runs:
        t0 = time.perf_counter()
        two_pass_info = run_two_pass(backend, store, tile_store, tiles, out_grid, opts, blocks, runner,
                                     output_name="stages/twopass_mosaic" if patchwork_runs else "mosaic",
                                     state=state, save_state=save_state, handover=handover,
                                     hand_over_result=patchwork_runs, keep_samples=runner.client is None,
                                     samples_device_bytes=0 if device is None
                                     else samples_capacity(device.budget_bytes))
        stages.append(("two-pass", time.perf_counter() - t0))
        valid_counts = [two_pass_info.pop("valid_pixels")]
    patchwork_info: dict[str, Any] = {"enabled": bool(opts.patchwork_suppressor_enabled), "ran": False}
    if opts.patchwork_suppressor_enabled:
        t0 = time.perf_counter()
        source_name = "stages/twopass_mosaic" if two_pass_info.get("ran") else pass1_mosaic_name
        patchwork_info = run_patchwork(backend, store, opts, blocks, window, runner, source_name,
                                       handover=handover)
        stages.append(("patchwork", time.perf_counter() - t0))
    handover.clear()
    store.attrs_update(window=list(window), autocrop_fired=bool(fired), patchwork=patchwork_info,
                       steps_run=["intertile" if calibration_json.get("applied") else "intertile (not applied)",
                                  "background", "coadd", "alpha union", "autocrop", "masking"],
                       two_pass=two_pass_info,
                       steps_skipped=([] if patchwork_info.get("ran") else ["patchwork suppressor (§7)"])
                       + ([] if two_pass_info.get("ran") else ["two-pass renormalisation (§6)"]))

    summary = RunSummary(
        output=str(output), shape_hw=tuple(shape_hw), window=window, n_tiles=len(tiles),
        backend=backend.name if device is None else f"{device.name} (replays on {backend.name})",
        block_size=block, workers=workers, stages=stages, device=guard.summary(),
        block_stages=list(runner.block_stage_seconds.items()),
        calibration=calibration_json, background_offsets=[list(t.bg_offsets) for t in tiles],
        tile_weights=[t.tau for t in tiles], autocrop_fired=bool(fired),
        valid_fraction=sum(valid_counts) / window_pixels,
        steps_run=["first pass (inter-tile calibration, background matching, coadd, alpha union, "
                   "autocrop, masking)"] + (["two-pass coverage renormalisation"]
                                             if two_pass_info.get("ran") else [])
        + (["patchwork suppressor"] if patchwork_info.get("ran") else []),
        steps_skipped=(["two-pass coverage renormalisation"] if not two_pass_info.get("ran") else [])
        + ([] if patchwork_info.get("ran") else ["patchwork suppressor"]),
        warnings=warnings_list, two_pass=two_pass_info)
    if patchwork_info.get("note"):
        summary.warnings.append("patchwork suppressor: " + patchwork_info["note"])

    # ---- export
    if fits_path or preview_path:
        t0 = time.perf_counter()
        from ..store.export import export_fits, write_preview_png
        if fits_path:
            export_fits(output, fits_path, overwrite=True)
            summary.fits_path = str(fits_path)
            _kill_point("export", 1)
        if preview_path:
            write_preview_png(output, preview_path)
            summary.preview_path = str(preview_path)
        stages.append(("export", time.perf_counter() - t0))
    journal.stage_done("run", sum(s for _, s in stages))
    journal.close()
    summary.peak_rss_bytes = rss.sample()
    store.attrs_update(summary={"stages": stages, "block_stages": summary.block_stages,
                                "peak_rss_bytes": summary.peak_rss_bytes,
                                "valid_fraction": summary.valid_fraction})
    return summary


def run_two_pass(backend: Backend, store: MosaicStore, tile_store: TileStore, tiles: list[TilePlan],
                 out_grid: OutputGrid, opts: Phase5Options, blocks: list[Box],
                 runner: BlockRunner, output_name: str = "mosaic", state: dict | None = None,
                 save_state: Callable[..., None] | None = None, handover: StageHandover | None = None,
                 hand_over_result: bool = False, keep_samples: bool = False,
                 samples_device_bytes: int = 0) -> dict[str, Any]:
    """§6: coverage blur (halo), tile gains (exact medians), pass-2 background offsets, pass 2,
    P5, merge.

    ``handover`` serves the stage arrays' regions to device tasks (and keeps what this
    computes on the device for the later block stages); ``hand_over_result``: keep the merged
    mosaic and coverage there too (a later stage reads them).  ``keep_samples``: the pass-2
    offsets' walk over the blocks keeps each block's pass-2 samples for pass 2 (in process
    only), within a share of the host budget and, on the device, up to
    ``samples_device_bytes`` borrowed from the handover's free room until pass 2 is done."""
    from .renorm import blur_radius, blurred_coverage_block, merge_block, tile_gain

    height, width = out_grid.shape_hw
    block = int(store.attrs["block"])
    if handover is None:
        handover = StageHandover.store_only((height, width), block)
    sigma = float(opts.two_pass_cov_sigma_px)
    radius = blur_radius(sigma)
    c1 = store.array("stages/pass1_final_coverage")
    m1 = store.array("stages/pass1_final_mosaic")
    cov_blur = store.require("stages/coverage_blur", (height, width), "float32", (block, block))
    scale_map = store.require("stages/scale_map", (height, width), "float32", (block, block))

    progress, rss = runner.progress, runner.rss

    def blur_task(box: Box, be: Backend) -> None:
        y0, y1, x0, x1 = box
        gy0, gy1 = max(0, y0 - radius), min(height, y1 + radius)
        gx0, gx1 = max(0, x0 - radius), min(width, x1 + radius)
        region = handover.region(be, c1, slice(gy0, gy1), slice(gx0, gx1))
        # the group's rows only (their halo rows serve the blur's first axis)
        cb, scale = blurred_coverage_block(be, region, sigma, rows=slice(y0 - gy0, y1 - gy0))
        sx = slice(x0 - gx0, x1 - gx0)
        cov_blur[y0:y1, x0:x1] = be.to_host(cb[:, sx])
        scale_map[y0:y1, x0:x1] = be.to_host(scale[:, sx])
        if handover.takes(be):              # the group's blocks, for the tile gains
            for by0, by1, bx0, bx1 in iter_blocks((y1 - y0, x1 - x0), block):
                part = (by0 + y0, by1 + y0, bx0 + x0, bx1 + x0)
                own = (slice(part[0] - y0, part[1] - y0), slice(part[2] - gx0, part[3] - gx0))
                handover.keep(cov_blur, part, cb[own])
                handover.keep(scale_map, part, scale[own])

    blur_groups = halo_superblocks((height, width), block, radius, halo_stage_bytes(opts),
                                   workers=runner.workers)
    def blur_recover(box: Box) -> None:
        y0, y1, x0, x1 = box
        cov_blur[y0:y1, x0:x1]
        scale_map[y0:y1, x0:x1]

    runner.run("coverage blur", blur_groups, blur_task, recover=blur_recover)

    def read_maps(box: Box, be: Backend):
        rows, cols = slice(box[0], box[1]), slice(box[2], box[3])
        return tuple(handover.region(be, array, rows, cols) for array in (c1, cov_blur, scale_map))

    state = state if state is not None else {}
    samples: MemoryShelf | None = None          # the pass-2 walk's block samples, for pass 2
    if "two_pass_tiles" in state:
        handover.drop((cov_blur, scale_map))          # the gains are known: nothing reads them
        for tile, saved in zip(tiles, state["two_pass_tiles"]):
            tile.two_pass_gain = float(saved["gain"])
            tile.bg_offsets_pass2 = [float("nan") if v is None else float(v) for v in saved["bg2"]]
        gains = [t.two_pass_gain for t in tiles]
    else:
        gains = []
        with runner.timed("two-pass gains"):
            progress.start("two-pass gains", len(tiles), unit="tile")

            def gain_of(tile: TilePlan) -> tuple[float, int, int]:
                return runner.guard.call(
                    "two-pass gains", tile.index,
                    lambda _, be: tile_gain(be, tile_store, tile, out_grid, read_maps, opts.two_pass_cov_gain_clip,
                                            strip_pixels=strip_pixels(int(opts.memory_budget))))

            # each tile's median scans its own box strip by strip: the tiles run side by side
            for tile, found in ordered_map(gain_of, tiles, runner.workers):
                if isinstance(found, BaseException):
                    raise found
                rss.sample()
                tile.two_pass_gain = found[0]
                gains.append(found[0])
                progress.advance("two-pass gains")
            progress.finish("two-pass gains")
        handover.drop((cov_blur, scale_map))          # read by the tile gains alone
        if keep_samples:     # on the device, within room borrowed from the handover (given back after pass 2)
            samples = MemoryShelf(int(opts.memory_budget) // MEMORY_SHARE,
                                  device_capacity=handover.lend(samples_device_bytes))
        if samples is not None and handover.device is not None:
            handover.device.shelves.append(samples)          # an OOM lets go of its device values
        strip = strip_pixels(int(opts.memory_budget))
        with runner.timed("pass-2 background offsets"):
            # by a walk over pass 2's blocks (when the differences fit), which keeps the samples
            progress.start("pass-2 background", 1, unit="pair")
            offsets, _ = background_offsets(backend, tile_store, tiles, out_grid, two_pass=True,
                                            strip_pixels=strip, workers=runner.task_workers,
                                            blocks=blocks, cache=samples,
                                            diff_bytes=int(opts.memory_budget) // MEMORY_SHARE,
                                            run_on=runner.guard.call,
                                            progress=lambda k, n: (progress.advance("pass-2 background", 0),
                                                                   rss.sample()))
            progress.finish("pass-2 background")
        for tile, row in zip(tiles, offsets):
            tile.bg_offsets_pass2 = [float(v) for v in row]

        if save_state is not None:
            save_state("two-pass gains", two_pass_tiles=[
                {"gain": t.two_pass_gain,
                 "bg2": [None if not math.isfinite(v) else v for v in t.bg_offsets_pass2]} for t in tiles])
    m2 = store.require("stages/pass2_mosaic", (height, width, 3), "float32", (block, block, 3),
                       fill_value=float("nan"))
    c2 = store.require("stages/pass2_coverage", (height, width), "float32", (block, block))

    def pass2_task(box: Box, be: Backend) -> tuple[np.ndarray, np.ndarray, Any]:
        """Pass 2 on ``be``: (mosaic NaN where not covered, coverage 0 where not finite, the two
        on ``be`` when they are handed over, else None)."""
        kept = samples.pop(box) if samples is not None else None
        result = coadd_block(be, tile_store, tiles, out_grid, box, offsets_attr="bg_offsets_pass2",
                             with_union=False, two_pass=True, samples=kept, keep_on_backend=True,
                             host_copies=False)
        xp = be.xp
        mos, cov = result.on_backend[:2]
        cov = xp.where(xp.isfinite(cov), cov, xp.float32(0.0))
        mos = xp.where(xp.isfinite(mos) & (cov > 0)[..., None], mos, xp.float32(np.nan))
        return be.to_host(mos), be.to_host(cov), (mos, cov) if handover.takes(be) else None

    def pass2_commit(box: Box, result: tuple[np.ndarray, np.ndarray, Any]) -> None:
        y0, y1, x0, x1 = box
        mos, cov, on_backend = result
        m2[y0:y1, x0:x1, :] = mos
        c2[y0:y1, x0:x1] = cov
        if on_backend is not None:
            handover.keep(m2, box, on_backend[0])
            handover.keep(c2, box, on_backend[1])

    def pass2_recover(box: Box) -> None:
        y0, y1, x0, x1 = box
        m2[y0:y1, x0:x1, :]
        c2[y0:y1, x0:x1]

    runner.run("pass2", blocks, pass2_task, recover=pass2_recover, commit=pass2_commit)
    _retire_samples(samples, handover)

    def luminance_values(box: Box, be: Backend) -> np.ndarray:
        own = (slice(box[0], box[1]), slice(box[2], box[3]))
        valid = (handover.region(be, c1, *own) > 0) & (handover.region(be, c2, *own) > 0)
        lum = channel_mean(be.xp, handover.region(be, m1, *own))[valid]
        return be.to_host(lum[be.xp.isfinite(lum)])

    with runner.timed("two-pass P5"):
        p5 = run_percentiles(blocks, runner.guarded_values("two-pass P5", luminance_values), [5.0], opts,
                             runner.workers)[0]
    info: dict[str, Any] = {"enabled": True, "ran": True, "gains": gains, "p5": p5,
                            "background_offsets_pass2": [list(t.bg_offsets_pass2) for t in tiles]}
    if not math.isfinite(p5):
        eps = None
    else:
        eps = max(p5 * 0.1, 1e-6)
    info["merge_eps"] = eps
    mosaic_arr = store.require(output_name, (height, width, 3), "float32", (block, block, 3),
                               fill_value=float("nan"))
    coverage_arr = store.require("coverage", (height, width), "float32", (block, block))
    pass2_mask = store.require("pass2_mask", (height, width), "uint8", (block, block))

    def merge_task(box: Box, be: Backend) -> tuple[np.ndarray, np.ndarray, np.ndarray, int, int, Any]:
        """§6.6 on ``be``: (mosaic, coverage, pass-2 mask, pixels from pass 2, valid pixels, the
        mosaic and coverage on ``be`` when they are handed over, else None)."""
        y0, y1, x0, x1 = box
        own = (slice(y0, y1), slice(x0, x1))
        if eps is None:                      # pass 1 kept as it is: nothing to compute on ``be``
            mos, cov = m1[y0:y1, x0:x1, :], c1[y0:y1, x0:x1]
            return mos, cov, np.zeros(cov.shape, dtype=np.uint8), 0, count_all_finite(np, mos), None
        mos, cov, use = merge_block(be, handover.region(be, m1, *own), handover.region(be, c1, *own),
                                    handover.region(be, m2, *own), handover.region(be, c2, *own), eps)
        used, valid = int(be.xp.count_nonzero(use)), count_all_finite(be.xp, mos)
        on_backend = (mos, cov) if hand_over_result and handover.takes(be) else None
        return (be.to_host(mos), be.to_host(cov), be.to_host(use.astype(be.xp.uint8)), used, valid,
                on_backend)

    def merge_commit(box: Box, result: tuple[np.ndarray, np.ndarray, np.ndarray, int, int, Any]
                     ) -> tuple[int, int]:
        y0, y1, x0, x1 = box
        mos, cov, use, used, valid, on_backend = result
        mosaic_arr[y0:y1, x0:x1, :] = mos
        coverage_arr[y0:y1, x0:x1] = cov
        pass2_mask[y0:y1, x0:x1] = use
        handover.drop((m1, c1, m2, c2), box)          # merge is their last reader
        if on_backend is not None:
            handover.keep(mosaic_arr, box, on_backend[0])
            handover.keep(coverage_arr, box, on_backend[1])
        return used, valid

    def merge_recover(box: Box) -> tuple[int, int]:
        y0, y1, x0, x1 = box
        coverage_arr[y0:y1, x0:x1]
        use = pass2_mask[y0:y1, x0:x1]
        mos = mosaic_arr[y0:y1, x0:x1, :]
        return int(use.sum()), count_all_finite(np, mos)

    counts = runner.run("merge", blocks, merge_task, recover=merge_recover, commit=merge_commit)
    handover.drop((m1, c1, m2, c2))                   # blocks resumed as done, or not merged
    used = sum(c[0] for c in counts)
    info["fraction_pass2"] = used / float(height * width)
    info["valid_pixels"] = sum(c[1] for c in counts)
    if used == 0:
        info["note"] = "no pixel passed the merge rule: pass 1 kept"
    return info


def run_patchwork(backend: Backend, store: MosaicStore, opts: Phase5Options, blocks: list[Box],
                  window: Box, runner: BlockRunner, source_name: str,
                  handover: StageHandover | None = None) -> dict[str, Any]:
    """§7, writing ``mosaic``; where the suppressor is a no-op the input is copied unchanged.
    ``handover`` serves the mosaic, coverage and alpha regions to device tasks."""
    if handover is None:
        handover = StageHandover.store_only(tuple(store.attrs["shape_hw"]), int(store.attrs["block"]))
    info = _patchwork(backend, store, opts, blocks, window, runner, source_name, handover)
    if not info.get("ran"):
        source = store.array(source_name)
        output = store.array("mosaic")

        def copy_task(box: Box) -> None:
            y0, y1, x0, x1 = box
            # the same chunk files, linked where the file system allows (store/chunks.py)
            output.copy_from(source, (slice(y0, y1), slice(x0, x1), slice(None)))

        runner.run("patchwork (no-op copy)", blocks, copy_task, guarded=False,
                   recover=lambda box: output[box[0]:box[1], box[2]:box[3], :])
    return info


def _patchwork(backend: Backend, store: MosaicStore, opts: Phase5Options, blocks: list[Box],
               window: Box, runner: BlockRunner, source_name: str, handover: StageHandover) -> dict[str, Any]:
    """§7 on the finished mosaic (within the autocrop window), block by block with halos."""
    from . import patchwork as pw

    params = pw.resolve_params(opts)
    info: dict[str, Any] = {"enabled": True, "ran": False, "k": params.k,
                            "sigma_small": params.sigma_small, "sigma_large": params.sigma_large,
                            "sigma_seam": params.sigma_seam, "max_delta": params.delta}
    wy0, wy1, wx0, wx1 = window
    height, width = wy1 - wy0, wx1 - wx0
    block = int(store.attrs["block"])
    mosaic = store.array(source_name)
    grid_h, grid_w = (int(v) for v in store.attrs["shape_hw"])
    output = store.require("mosaic", (grid_h, grid_w, 3), "float32", (block, block, 3),
                           fill_value=float("nan"))
    coverage = store.array("coverage")
    alpha = store.array("alpha")
    # blocks in window coordinates (the suppressor sees the cropped mosaic, as ZeMosaic's does)
    grid_hw = (int(store.attrs["shape_hw"][0]), int(store.attrs["shape_hw"][1]))
    groups = halo_superblocks(grid_hw, block, params.halo, halo_stage_bytes(opts), workers=runner.workers)

    def in_window(boxes: list[Box]) -> list[Box]:
        clipped = [(max(b[0], wy0) - wy0, min(b[1], wy1) - wy0, max(b[2], wx0) - wx0, min(b[3], wx1) - wx0)
                   for b in boxes]
        return [b for b in clipped if b[1] > b[0] and b[3] > b[2]]

    wblocks = in_window(blocks)
    wgroups = in_window(groups)

    def percentiles(boxes: list[Box], values_of: Callable[[Box], np.ndarray], qs: list[float]) -> list[float]:
        return run_percentiles(boxes, values_of, qs, opts, runner.workers)

    def haloed(box: Box, halo: int) -> tuple[tuple[slice, slice], tuple[slice, slice]]:
        """(the box grown by ``halo`` within the window, in grid coordinates; the box within it)."""
        y0, y1, x0, x1 = box
        gy0, gy1, gx0, gx1 = max(0, y0 - halo), min(height, y1 + halo), max(0, x0 - halo), min(width, x1 + halo)
        return ((slice(wy0 + gy0, wy0 + gy1), slice(wx0 + gx0, wx0 + gx1)),
                (slice(y0 - gy0, y1 - gy0), slice(x0 - gx0, x1 - gx0)))

    def read(box: Box, halo: int = 0, be: Backend = backend):
        region, inner = haloed(box, halo)
        return (handover.region(be, mosaic, *region), handover.region(be, coverage, *region),
                handover.region(be, alpha, *region), inner)

    def y_values(box: Box, be: Backend) -> np.ndarray:
        m, c, a, _ = read(box, 0, be)
        valid = pw.valid_mask(be, m, c, a)
        return be.to_host(pw.luminance(be, m)[valid])

    # The statistics are independent of each other: the cheap ones that can stop the suppressor
    # come first, so a no-op (no valid pixel, or a seam gradient whose P99 is zero: a seam
    # line is a few pixels wide, under 1 % of most mosaics) never scans the mosaic for median(Y)
    def coverage_max(box: Box, be: Backend) -> float:
        own, _ = haloed(box, 0)
        return float(be.xp.nanmax(be.xp.nan_to_num(handover.region(be, coverage, *own))))

    block_maxima = ordered_map(lambda b: runner.guard.call("patchwork statistics", b, coverage_max),
                               wblocks, runner.workers)
    max_c = -np.inf
    for _, block_max in block_maxima:
        if isinstance(block_max, BaseException):
            raise block_max
        max_c = max(max_c, block_max)
    if not max_c > 0:                      # a valid pixel has a coverage > 0
        info["note"] = "no valid pixel (no-op)"
        return info

    def seam_gradient(box: Box, halo: int, be: Backend):
        """(G = |∇Z| over the box grown by ``halo``, the box within it, the box's mosaic, its
        valid mask), each array read once.  Z comes from the coverage alone, so only the
        coverage is read with the halo (a halo reads the neighbouring chunks whole, as their
        checksums cover them whole, and the mosaic's are three times the coverage's)."""
        region, inner = haloed(box, halo)
        c = handover.region(be, coverage, *region)
        g = pw.gradient_magnitude(be, pw.seam_source(be, c, max_c))
        own, _ = haloed(box, 0)
        m = handover.region(be, mosaic, *own)
        return g, inner, m, pw.valid_mask(be, m, c[inner], handover.region(be, alpha, *own))

    def g_values(box: Box, be: Backend) -> np.ndarray:
        g, inner, _, valid = seam_gradient(box, 1, be)
        return be.to_host(g[inner][valid])

    g99 = percentiles(wblocks, runner.guarded_values("patchwork statistics", g_values), [99.0])[0]
    if not np.isfinite(g99):               # no value at all: G is finite wherever C is
        info["note"] = "no valid pixel (no-op)"
        return info
    if not g99 > 1e-9:
        info["note"] = "seam gradient P99 is zero (no-op)"
        return info
    median_y = percentiles(wblocks, runner.guarded_values("patchwork statistics", y_values), [50.0])[0]
    if not np.isfinite(median_y):
        info["note"] = "no valid pixel (no-op)"
        return info
    # on the full grid, so block writes stay inside one chunk (concurrent writes to one chunk race)
    delta_store = store.require("stages/patchwork_delta", (grid_h, grid_w), "float32", (block, block))

    def delta_task(box: Box, be: Backend) -> None:
        m, c, a, inner = read(box, params.halo, be)
        valid = pw.valid_mask(be, m, c, a)
        y_f = pw.filled_luminance(be, m, valid, median_y)
        # the box's rows only (the halo rows serve the blurs' first axis)
        delta = (pw.blur(be, y_f, params.sigma_small, rows=inner[0])
                 - pw.blur(be, y_f, params.sigma_large, rows=inner[0]))
        y0, y1, x0, x1 = box
        delta_store[wy0 + y0:wy0 + y1, wx0 + x0:wx0 + x1] = be.to_host(delta[:, inner[1]])

    runner.run("patchwork blur", wgroups, delta_task,
               recover=lambda b: delta_store[wy0 + b[0]:wy0 + b[1], wx0 + b[2]:wx0 + b[3]])

    def abs_delta_values(box: Box, be: Backend) -> np.ndarray:
        m, c, a, _ = read(box, 0, be)
        valid = pw.valid_mask(be, m, c, a)
        y0, y1, x0, x1 = box
        delta = be.asarray(delta_store[wy0 + y0:wy0 + y1, wx0 + x0:wx0 + x1])
        return be.to_host(be.xp.abs(delta[valid]))

    def abs_y_values(box: Box, be: Backend) -> np.ndarray:
        m, c, a, _ = read(box, 0, be)
        valid = pw.valid_mask(be, m, c, a)
        return be.to_host(be.xp.abs(pw.filled_luminance(be, m, valid, median_y)[valid]))

    cap = percentiles(wblocks, runner.guarded_values("patchwork statistics", abs_delta_values), [99.5])[0]
    if not (np.isfinite(cap) and cap > 1e-9):
        info["note"] = "|delta| P99.5 is zero (no-op)"
        return info
    eps = max(1e-6, 0.05 * percentiles(wblocks, runner.guarded_values("patchwork statistics", abs_y_values),
                                       [5.0])[0])
    info.update(median_y=median_y, max_coverage=max_c, g99=g99, cap=cap, eps=eps)

    def correct_task(box: Box, be: Backend) -> None:
        g, inner_h, m, valid = seam_gradient(box, params.seam_halo, be)
        w_seam = pw.seam_weight(be, g, g99, params.sigma_seam)[inner_h]
        y_f = pw.filled_luminance(be, m, valid, median_y)
        y0, y1, x0, x1 = box
        delta = be.asarray(delta_store[wy0 + y0:wy0 + y1, wx0 + x0:wx0 + x1])
        out = pw.apply_correction(be, m, y_f, valid, w_seam, delta, cap, eps, params)
        output[wy0 + y0:wy0 + y1, wx0 + x0:wx0 + x1, :] = be.to_host(out)

    runner.run("patchwork", wgroups, correct_task,
               recover=lambda b: output[wy0 + b[0]:wy0 + b[1], wx0 + b[2]:wx0 + b[3], :])
    info["ran"] = True
    return info
