#!/usr/bin/env bash
# One device call after a change to the device block tasks (issue 4), about 4-5 minutes warm:
#   1. gpu_check without the anchor (the 16×2048² set first pass and in full, then every
#      fixture with forced OOM replays): parity and the speed figure;
#   2. tools/gpu_sweep.py on the same set: the device block-task threads K against speed, in
#      one process after a warm-up (K sizes the blocks too);
#   3. two fresh processes of the full pipeline, the first-task gate on and off (what a
#      user's single run pays for it on a warm kernel cache);
#   4. the gpu-marked tests.
# Carry .whl, device_fixtures and .cupy_cache as for tools/device_gpu_run.sh; logs to $OUT.
set -u
SKIP_PYTEST=1 ANCHOR= CHECK_TIMEOUT=${CHECK_TIMEOUT:-200} bash tools/device_gpu_run.sh > /dev/null 2>&1
source tools/device_env.sh
grep -E "speed|max/|seam|stages|rc |parity|ERROR|host:|bus|handover" "$OUT/gpu_check.log" | cut -c1-330
SET=/tmp/gpu_check_work/synthetic_4x4x2048
timeout "${SWEEP_TIMEOUT:-70}" python3 tools/gpu_sweep.py $SET --values "${SWEEP_VALUES:-16,8,4,2}" > "$OUT/sweep.log" 2>&1
echo "sweep rc $?"; cut -c1-330 "$OUT/sweep.log"
for gate in 1 0; do
  ZEMOSAIC_OOC_GPU_FIRST_TASK_ALONE=$gate timeout 40 python3 tools/gpu_diag.py $SET /tmp/gate$gate.zarr \
    --gpu on --workers 16 --dump-every 30 > "$OUT/gate$gate.log" 2>&1
  echo "== fresh process, first-task gate $gate: rc $?"; grep -E "^(RESULT|stages)" "$OUT/gate$gate.log" | cut -c1-160
done
PYTEST_TIMEOUT=${PYTEST_TIMEOUT:-100} SKIP_CHECK=1 bash tools/device_gpu_tests.sh
