#!/usr/bin/env bash
# Device call F: debug the fp8-tensorwise CUDA test failure (quantize_dual), then #7 (a) int8 accuracy runs.
set -uo pipefail
FINAL=${OUT:-/tmp/lowbit-out}; export OUT=/tmp/res; mkdir -p "$OUT" "$FINAL"
trap 'tar czf "$FINAL/res.tgz" -C "$OUT" .' EXIT
export PYTHONPATH=$PWD/src PYTHONUNBUFFERED=1
timeout 60 python3 bench/scripts/debug_dual.py 2>&1 | tee "$OUT/debug_dual.txt"
LOWBIT_AUTOTUNE=0 timeout 60 python3 -m pytest -q -x -p no:cacheprovider tests/functional/test_linear.py \
  -k "cuda and triton-fp8-tensorwise-sim" 2>&1 | grep -E "^E |assert|passed|failed" | head -30 | tee "$OUT/debug_test.txt"
BUDGET=${BUDGET:-450} bash experiments/run_accuracy.sh
