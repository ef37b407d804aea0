"""VRAM budgeting: how large a device block may be, and how many block tasks the device holds.

A block task on the device holds, per output pixel of the block (chunks on a GPU are the
whole block, see :data:`~zemosaic_ooc.backend.GPU_CHUNK_PIXELS`):

* per tile that reaches the block: its samples (d_R, d_G, d_B, ω float32: 16 B), its
  prepared region packed for the gathers (16 B, about one block's area), its coordinate maps
  (u, v float64: 16 B) and the stencil of a chunk (flat index int64, fractions float64,
  inside flag: 25 B), with the bilinear temporaries: :data:`BYTES_PER_PIXEL_PER_TILE`;
* once: the float64 sums and weights (48 B), the float32 mosaic, coverage and alpha union
  (20 B) and their temporaries: :data:`BYTES_PER_PIXEL`.

The budget is shared: :data:`RESIDENT_SHARE` for the prepared whole tiles kept on the device
(:mod:`~zemosaic_ooc.phase5.resident`), :data:`SAMPLES_SHARE` for the block samples handed from
the background walk to pass 1, :data:`HANDOVER_SHARE` for the stage arrays' blocks handed from
one block stage to the next (:mod:`~zemosaic_ooc.phase5.handover`), and the rest
(:func:`task_budget`) for the block tasks.

The budget (``--gpu-memory-budget``, default a share of the device's free memory, see
:func:`~zemosaic_ooc.backend.cupy_backend`) is also the memory pool's limit, so an
estimate that is too low shows as out-of-memory errors that the OOM guard replays on the
CPU, never as a wrong mosaic.
"""
from __future__ import annotations

import math
import os
from typing import Sequence

from .phase5.grid import Box, intersect

BYTES_PER_PIXEL_PER_TILE = 112
BYTES_PER_PIXEL = 96
#: share of the task budget that block tasks may plan on (the rest: CuPy's pool rounding,
#: kernels' own scratch)
USABLE_SHARE = 0.6
#: share of the device budget for resident prepared tiles (20 B per tile pixel)
RESIDENT_SHARE = 0.25
#: share of the device budget for block samples kept from the background walk for pass 1
SAMPLES_SHARE = 0.15
#: share of the device budget for stage arrays' blocks kept for the next block stages (the
#: 16×2048² set's largest need, in pass 2 and merge: 33 B per output pixel, 1.77 GB); the
#: samples' share is added to it once pass 1 has used the samples
HANDOVER_SHARE = 0.10
#: share of the device budget left to block tasks
TASK_SHARE = 1.0 - RESIDENT_SHARE - SAMPLES_SHARE - HANDOVER_SHARE
#: tiles assumed to reach a block before the plan knows (a 2×2 corner of a mosaic)
ASSUMED_TILES_PER_BLOCK = 4


#: worker threads that run a device run's block tasks (its other host work keeps every
#: worker).  A device block task is mostly host calls that launch kernels and wait for
#: them, so more threads than this contend for the GIL and the CUDA driver instead of
#: keeping the device busier, and the host memory budget then holds fewer but larger
#: blocks (fewer calls for the same pixels).  Measured on an H100, 16×2048² full pipeline,
#: 16 workers, 2 GiB host budget, after a warm-up (tools/gpu_sweep.py; BENCHMARKS.md §13):
#: 16 block threads (816 px blocks) 8.62 s, 8 (1232 px) 6.18 s, 4 (1472 px) 5.28 s,
#: 2 (2448 px) 6.94 s.
DEVICE_BLOCK_WORKERS = 4


def device_block_workers(workers: int) -> int:
    """Threads for a device run's block tasks: :data:`DEVICE_BLOCK_WORKERS` (or
    ``ZEMOSAIC_OOC_DEVICE_BLOCK_WORKERS``, for measurements), at most ``workers``."""
    wanted = int(os.environ.get("ZEMOSAIC_OOC_DEVICE_BLOCK_WORKERS", DEVICE_BLOCK_WORKERS))
    return max(1, min(int(workers), wanted))


def task_budget(budget_bytes: int) -> int:
    """The part of the device budget left to block tasks (the budget less the resident tiles',
    the kept samples' and the handed-over blocks' shares)."""
    return int(budget_bytes * TASK_SHARE)


def resident_capacity(budget_bytes: int, needed_bytes: int) -> int:
    """Bytes for resident tiles: what the tiles need, within :data:`RESIDENT_SHARE` of the budget."""
    return int(min(int(needed_bytes), RESIDENT_SHARE * budget_bytes))


def samples_capacity(budget_bytes: int) -> int:
    """Bytes of block samples the device keeps from the background walk for pass 1."""
    return int(SAMPLES_SHARE * budget_bytes)


def handover_capacity(budget_bytes: int) -> int:
    """Bytes of stage-array blocks the device keeps for later block stages."""
    return int(HANDOVER_SHARE * budget_bytes)


def task_bytes(block_pixels: int, tiles_per_block: int) -> int:
    """Estimated device bytes of one block task (see the module docstring)."""
    return int(block_pixels) * (BYTES_PER_PIXEL + BYTES_PER_PIXEL_PER_TILE * max(1, int(tiles_per_block)))


def max_block_side(budget_bytes: int, tiles_per_block: int = ASSUMED_TILES_PER_BLOCK) -> int:
    """The largest square block (a multiple of 16 px, at least 128) one task can hold in
    ``budget_bytes`` (a task budget, :func:`task_budget`)."""
    per_pixel = task_bytes(1, tiles_per_block)
    side = int(math.sqrt(max(1.0, USABLE_SHARE * budget_bytes / per_pixel)))
    return max(128, (side // 16) * 16)


def device_slots(budget_bytes: int, block_pixels: int, tiles_per_block: int, workers: int) -> int:
    """How many block tasks may run on the device at once (1 … ``workers``) within
    ``budget_bytes`` (a task budget, :func:`task_budget`)."""
    fits = int(USABLE_SHARE * budget_bytes // max(1, task_bytes(block_pixels, tiles_per_block)))
    return max(1, min(int(workers), fits))


def tiles_per_block(tile_boxes: Sequence[Box | None], blocks: Sequence[Box]) -> int:
    """The most tiles whose (data or union) box reaches any one block (at least 1)."""
    return max([1] + [sum(1 for box in tile_boxes if intersect(box, block) is not None)
                      for block in blocks])
