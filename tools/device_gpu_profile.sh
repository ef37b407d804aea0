#!/usr/bin/env bash
# Where the time goes on a lent device (issue 4): the 16×2048² set, first pass, on the GPU (after
# a small full run that compiles the kernels) and on the CPU, each with gpu_diag's stack
# sampler; the CPU run also prints its parity with the GPU's.  Logs to $OUT; about 2 minutes.
# Carry .whl and device_fixtures as for tools/device_gpu_run.sh (and .cupy_cache when unpacked).
# GIL=1 (with py-spy's wheel in .whl): each run is recorded by py-spy --gil instead of the stack
# sampler, and tools/gil_report.py prints how long the run held the GIL (BENCHMARKS.md §9): the
# host's serial floor on that machine.  FULL=1: the full default pipeline instead of the first
# pass (the issue's speed figure; two-pass and patchwork included, about twice the time).
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
SPY=/tmp/site/bin/py-spy
gil_run() {  # gil_run NAME ARGS...: the run under py-spy --gil when asked and possible
  local name=$1; shift
  if [ "${GIL:-0}" = 1 ] && [ -x "$SPY" ]; then
    "$SPY" record --gil -r 100 -f raw -o "$OUT/gil_$name.txt" -- $D "$@" > "$OUT/$name.log" 2>&1
    local rc=$?
    if [ -s "$OUT/gil_$name.txt" ]; then
      python3 tools/gil_report.py "$OUT/gil_$name.txt" --top 15 > "$OUT/gil_$name.report"
    else
      echo "py-spy could not record (ptrace not allowed?); running without it"
      $D "$@" > "$OUT/$name.log" 2>&1; rc=$?
    fi
    return $rc
  fi
  $D "$@" --sample-stacks ${SAMPLE_MS:-10} > "$OUT/$name.log" 2>&1
}
timeout 150 $D /tmp/warm /tmp/warm_gpu.zarr --gpu on --dump-every 100 > "$OUT/warm.log" 2>&1
echo "warm-up rc $?"; tail -2 "$OUT/warm.log"
PASS=--first-pass; [ "${FULL:-0}" = 1 ] && PASS=""
export -f gil_run; export D SPY OUT PASS
timeout 150 bash -c 'gil_run gpu_fp /tmp/syn44 /tmp/gpu.zarr --gpu on $PASS --dump-every 120'
echo "gpu rc $?"
timeout 150 bash -c 'gil_run cpu_fp /tmp/syn44 /tmp/cpu.zarr --gpu off $PASS --dump-every 120 --compare /tmp/gpu.zarr'
echo "cpu rc $?"
for f in gpu_fp cpu_fp; do
  echo "=== $f"; grep -E "^(RESULT|stages|block stages|PARITY|STACKS|zarr|    )|start \(|finished" "$OUT/$f.log" | cut -c1-150
  [ -f "$OUT/gil_$f.report" ] && cat "$OUT/gil_$f.report"
done
