#!/usr/bin/env bash
# Device call G: re-check the fp8 dual quantizer and the fp8 CUDA tests after the fix, then #7 (a) int8 accuracy.
set -uo pipefail
FINAL=${OUT:-/tmp/lowbit-out}; export OUT=/tmp/res; mkdir -p "$OUT" "$FINAL"
trap 'tar czf "$FINAL/res.tgz" -C "$OUT" .' EXIT
export PYTHONPATH=$PWD/src PYTHONUNBUFFERED=1
timeout 40 python3 bench/scripts/debug_dual.py 2>&1 | tee "$OUT/debug_dual.txt" | grep -c "False"
LOWBIT_AUTOTUNE=0 HYPOTHESIS_PROFILE=gpu timeout 100 python3 -m pytest -q -p no:cacheprovider -rf \
  tests/functional/test_linear.py tests/kernels/test_matmul.py tests/kernels/test_quantize.py \
  -k "cuda or gpu or auto_fp8 or dual or tensorwise" 2>&1 | tail -12 | tee "$OUT/gpu-tests-fp8.txt"
BUDGET=${BUDGET:-400} bash experiments/run_accuracy.sh
