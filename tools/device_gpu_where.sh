#!/usr/bin/env bash
# Where a GPU run's wall time goes (issue 4), full default pipeline on the 16×2048² set, one
# process per variant after a warm-up run: (A) every thread's stack sampled each 5 ms, with the
# GPU's utilization logged by nvidia-smi each 100 ms; then plain runs that change one thing each
# (workers, block size, streams).  Logs to $OUT; about 2 minutes on a warm kernel cache.
# Carry .whl, device_fixtures and .cupy_cache as for tools/device_gpu_run.sh.
set -u
source tools/device_env.sh
which nsys ncu nvprof 2>&1 | head -3
python3 - <<'PY'
import os
from zemosaic_ooc.demo import make_demo_tiles
make_demo_tiles("/tmp/warm", nx=2, ny=2, tile_hw=(512, 544), seed=1, workers=os.cpu_count())
make_demo_tiles("/tmp/syn44", nx=4, ny=4, tile_hw=(2048, 2048), overlap=0.15, seed=2,
                workers=os.cpu_count())
PY
D="python3 tools/gpu_diag.py"
timeout 100 $D /tmp/warm /tmp/warm_gpu.zarr --gpu on --dump-every 100 > "$OUT/warm.log" 2>&1
echo "warm-up rc $?"
nvidia-smi --query-gpu=timestamp,utilization.gpu,utilization.memory --format=csv,noheader -lms 100 \
  > "$OUT/util_A.csv" 2>&1 &
SMI=$!
timeout 60 $D /tmp/syn44 /tmp/a.zarr --gpu on --workers 16 --sample-stacks 5 --dump-every 50 > "$OUT/A.log" 2>&1
echo "A rc $?"; kill $SMI 2>/dev/null
variant() {  # variant NAME ENV ARGS...
  local name=$1 env=$2; shift 2
  env $env timeout 60 $D /tmp/syn44 /tmp/$name.zarr --gpu on --dump-every 50 "$@" > "$OUT/$name.log" 2>&1
  echo "== $name ($env $*) rc $?"; grep -E "^(RESULT|stages|block stages)" "$OUT/$name.log" | cut -c1-400
}
variant B X=1 --workers 16
variant C X=1 --workers 16 --block-size 2464
variant D X=1 --workers 8
variant E ZEMOSAIC_OOC_GPU_STREAMS=none --workers 16
variant F X=1 --workers 32
variant G X=1 --workers 16
echo "== A"; grep -E "^(RESULT|stages|block stages|    )|start \(|finished" "$OUT/A.log" | cut -c1-200 | head -60
python3 - "$OUT/util_A.csv" "$OUT/A.log" <<'PY'
import sys
rows = [l.split(", ") for l in open(sys.argv[1]) if l.count(",") == 2]
u = [float(r[1].split()[0]) for r in rows if r[1].split()[0].replace('.', '').isdigit()]
print(f"GPU utilization during A: {len(u)} samples, mean {sum(u)/max(1,len(u)):.0f} %,"
      f" >50 % in {sum(x > 50 for x in u)}; series:", " ".join(str(int(x)) for x in u))
PY
