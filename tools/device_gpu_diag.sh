#!/usr/bin/env bash
# Diagnostic GPU runs on a lent device (see tools/gpu_diag.py): a 3x3 set with 1 and 8 workers,
# then 16 tiles of 2048² (first pass), each in its own process under a timeout, thread dumps on.
set -u
source tools/device_env.sh
D="python3 tools/gpu_diag.py"
L=$OUT/diag.log
python3 -c "
from zemosaic_ooc.demo import make_demo_tiles as m
m('/tmp/t33', nx=3, ny=3, tile_hw=(384, 416), seed=4)
m('/tmp/s44', nx=4, ny=4, tile_hw=(2048, 2048), overlap=0.15, seed=2, workers=16)" >> $L 2>&1
echo "== generated $(date +%T)" >> $L
timeout 30 $D /tmp/t33 /tmp/c33.zarr --gpu off --dump-every 20 >> $L 2>&1; echo "rc $?" >> $L
timeout 40 $D /tmp/t33 /tmp/g33.zarr --dump-every 10 --compare /tmp/c33.zarr >> $L 2>&1; rc=$?; echo "rc $rc" >> $L
if [ $rc -ne 0 ]; then
  ZEMOSAIC_OOC_GPU_STREAMS=none timeout 30 $D /tmp/t33 /tmp/n33.zarr --dump-every 10 --compare /tmp/c33.zarr >> $L 2>&1; echo "rc streams none $?" >> $L
  timeout 30 $D /tmp/t33 /tmp/w33.zarr --workers 1 --dump-every 10 --compare /tmp/c33.zarr >> $L 2>&1; echo "rc w1 $?" >> $L
fi
timeout 60 $D /tmp/s44 /tmp/c44.zarr --gpu off --workers 16 --first-pass --dump-every 30 >> $L 2>&1; echo "rc $?" >> $L
timeout 60 $D /tmp/s44 /tmp/g44.zarr --first-pass --dump-every 15 --compare /tmp/c44.zarr >> $L 2>&1; echo "rc $?" >> $L
grep -E "^(RESULT|PARITY|stages|rc|==)" $L
