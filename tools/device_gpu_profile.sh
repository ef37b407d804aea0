#!/usr/bin/env bash
# Where the time goes on a lent device (issue 4): the 16×2048² set, first pass, on the GPU (after
# a small full run that compiles the kernels) and on the CPU, each with gpu_diag's stack
# sampler; the CPU run also prints its parity with the GPU's.  Logs to $OUT; about 2 minutes.
# Carry .whl and device_fixtures as for tools/device_gpu_run.sh (and .cupy_cache when unpacked).
set -u
source tools/device_env.sh
python3 - <<'PY'
import os
from zemosaic_ooc.demo import make_demo_tiles
make_demo_tiles("/tmp/warm", nx=2, ny=2, tile_hw=(512, 544), seed=1, workers=os.cpu_count())
make_demo_tiles("/tmp/syn44", nx=4, ny=4, tile_hw=(2048, 2048), overlap=0.15, seed=2,
                workers=os.cpu_count())
PY
D="python3 tools/gpu_diag.py"
timeout 150 $D /tmp/warm /tmp/warm_gpu.zarr --gpu on --dump-every 100 > "$OUT/warm.log" 2>&1
echo "warm-up rc $?"; tail -2 "$OUT/warm.log"
timeout 150 $D /tmp/syn44 /tmp/gpu.zarr --gpu on --first-pass --sample-stacks ${SAMPLE_MS:-10} \
  --dump-every 120 > "$OUT/gpu_fp.log" 2>&1
echo "gpu rc $?"
timeout 150 $D /tmp/syn44 /tmp/cpu.zarr --gpu off --first-pass --sample-stacks ${SAMPLE_MS:-10} \
  --dump-every 120 --compare /tmp/gpu.zarr > "$OUT/cpu_fp.log" 2>&1
echo "cpu rc $?"
for f in gpu_fp cpu_fp; do
  echo "=== $f"; grep -E "^(RESULT|stages|PARITY|STACKS|    )|start \(|finished" "$OUT/$f.log" | cut -c1-150
done
