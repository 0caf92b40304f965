#!/usr/bin/env bash
# Device call I (H100; #4, #7): the fp8 CUDA tests after the quantize_dual fix, then #7 (b) fp8 + layer-scale runs.
set -uo pipefail
FINAL=${OUT:-/tmp/lowbit-out}; export OUT=/tmp/res; mkdir -p "$OUT" "$FINAL"
trap 'tar czf "$FINAL/res.tgz" -C "$OUT" --exclude="*.pt" --exclude="*.dcp" --exclude=tensorboard --exclude="events.*" .' EXIT
export PYTHONPATH=$PWD/src PYTHONUNBUFFERED=1
LOWBIT_AUTOTUNE=0 HYPOTHESIS_PROFILE=gpu timeout 80 python3 -m pytest -q -p no:cacheprovider -rf \
  tests/functional/test_linear.py tests/kernels/test_matmul.py tests/kernels/test_quantize.py \
  -k "cuda or gpu or auto_fp8 or dual or tensorwise" 2>&1 | tail -8 | tee "$OUT/gpu-tests-fp8.txt"
PARALLEL=7 BUDGET=${BUDGET:-400} JOB_TIMEOUT=300 bash experiments/run_fp8.sh
