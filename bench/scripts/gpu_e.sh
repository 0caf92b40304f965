#!/usr/bin/env bash
# Device call E (#4, #7): CUDA tests of the fp8 paths (quantize_dual, the auto/cuBLAS/Triton fp8 matmul), then the
# end-to-end training-step benchmark (experiments/gpu_step.sh). Everything is packed into $OUT/res.tgz.
set -uo pipefail
FINAL=${OUT:-/tmp/lowbit-out}; export OUT=/tmp/res; mkdir -p "$OUT" "$FINAL"
trap 'tar czf "$FINAL/res.tgz" -C "$OUT" .' EXIT
export PYTHONPATH=$PWD/src PYTHONUNBUFFERED=1
LOWBIT_AUTOTUNE=0 HYPOTHESIS_PROFILE=gpu timeout 100 python3 -m pytest -q -p no:cacheprovider \
  tests/functional/test_linear.py tests/kernels/test_matmul.py tests/kernels/test_quantize.py \
  -k "cuda or gpu or auto_fp8 or dual or tensorwise" 2>&1 | tail -4 | tee "$OUT/gpu-tests-fp8.txt"
bash experiments/gpu_step.sh
