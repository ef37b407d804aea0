#!/usr/bin/env bash
# The gpu-marked tests, then gpu_check.py on the fixtures only (parity + forced OOM replays),
# on a cold device machine; logs to $OUT.  PYTEST_TESTS picks (and orders) the tests;
# SKIP_CHECK=1 stops after them.  Carry .whl and device_fixtures (see device_gpu_run.sh).
set -u
source tools/device_env.sh
timeout "${PYTEST_TIMEOUT:-200}" python3 -m pytest -v -o addopts="" -m gpu -p no:cacheprovider --durations=0 \
  -o faulthandler_timeout=150 \
  ${PYTEST_TESTS:-tests/test_gpu.py} > "$OUT/pytest_gpu.log" 2>&1; echo "pytest rc $?" >> "$OUT/pytest_gpu.log"
grep -E "PASS|FAIL|ERROR|rc |passed|failed|s call" "$OUT/pytest_gpu.log"
[ -n "${SKIP_CHECK:-}" ] && exit 0
timeout "${CHECK_TIMEOUT:-60}" python3 tools/gpu_check.py --fixtures device_fixtures --synthetic "" \
  --json "$OUT/gpu_check_fixtures.json" > "$OUT/gpu_check.log" 2>&1; echo "gpu_check rc $?" >> "$OUT/gpu_check.log"
grep -E "GPU  |small pool|speed|parity|rc |bus" "$OUT/gpu_check.log"
