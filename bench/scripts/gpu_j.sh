#!/usr/bin/env bash
# Device call J (H100; #4, #7): fp8 CUDA tests (cuBLAS rule, dual quantizer), the ViT-H MLP block with the fp8
# changes (quantize_dual, per-shape Triton/cuBLAS choice), and the ViT-H training step incl. fp8-tensorwise.
set -uo pipefail
FINAL=${OUT:-/tmp/lowbit-out}; export OUT=/tmp/res; mkdir -p "$OUT" "$FINAL"
trap 'tar czf "$FINAL/res.tgz" -C "$OUT" .' EXIT
export PYTHONPATH=$PWD/src PYTHONUNBUFFERED=1
LOWBIT_AUTOTUNE=0 HYPOTHESIS_PROFILE=gpu timeout 90 python3 -m pytest -q -p no:cacheprovider -rf \
  tests/functional/test_linear.py tests/kernels/test_matmul.py tests/kernels/test_quantize.py \
  -k "cuda or gpu or auto_fp8 or dual or tensorwise or cublas" 2>&1 | tail -6 | tee "$OUT/gpu-tests-fp8.txt"
B="python3 -m lowbit bench"
timeout 170 $B mlp --shapes vit-h-14 --recipes switchback fp8-switchback fp8-tensorwise fp8-rowwise --compile \
  --out "$OUT/mlp" > "$OUT/mlp.log" 2>&1; grep -E "^\|" "$OUT/mlp/mlp.md" | cut -c1-120
timeout 190 $B step --preset vit-h-14 --batch-size 96 --compile --steps 8 --warmup 2 --no-anchors \
  --recipe bf16 fp8-tensorwise fp8-switchback --out "$OUT/step" > "$OUT/step.log" 2>&1; grep -E "^\|" "$OUT/step/step.md" | cut -c1-200
