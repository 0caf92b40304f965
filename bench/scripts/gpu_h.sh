#!/usr/bin/env bash
# Device call H (2×H200; #4, #8): the fp8 CUDA tests after the quantize_dual fix, then the multi-GPU scaling runs
# (bench/scripts/gpu_multi.sh). Small outputs only (no checkpoints / TensorBoard) are packed into $OUT/res.tgz.
set -uo pipefail
FINAL=${OUT:-/tmp/lowbit-out}; export OUT=/tmp/res; mkdir -p "$OUT" "$FINAL"
trap 'tar czf "$FINAL/res.tgz" -C "$OUT" --exclude="*.pt" --exclude="*.dcp" --exclude=tensorboard --exclude="events.*" .' EXIT
export PYTHONPATH=$PWD/src PYTHONUNBUFFERED=1 PYTHON=python3
nvidia-smi --query-gpu=name,memory.total --format=csv | tee "$OUT/gpus.txt"
CUDA_VISIBLE_DEVICES=0 LOWBIT_AUTOTUNE=0 HYPOTHESIS_PROFILE=gpu timeout 80 python3 -m pytest -q -p no:cacheprovider -rf \
  tests/functional/test_linear.py tests/kernels/test_matmul.py tests/kernels/test_quantize.py \
  -k "cuda or gpu or auto_fp8 or dual or tensorwise" 2>&1 | tail -8 | tee "$OUT/gpu-tests-fp8.txt"
BUDGET=${BUDGET:-390} bash bench/scripts/gpu_multi.sh
