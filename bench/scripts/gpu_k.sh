#!/usr/bin/env bash
# Device call K (H100; #4): fp8 CUDA tests (cuBLAS bf16 rule), where the ViT-H MLP's time goes (profile),
# quantize micro-benchmark (transposed-store candidates), the MLP table with LOWBIT_FP8_MATMUL=auto.
set -uo pipefail
FINAL=${OUT:-/tmp/lowbit-out}; export OUT=/tmp/res; mkdir -p "$OUT" "$FINAL"
trap 'tar czf "$FINAL/res.tgz" -C "$OUT" .' EXIT
export PYTHONPATH=$PWD/src PYTHONUNBUFFERED=1
python3 -c "import torch, triton; print(torch.__version__, triton.__version__, torch.cuda.get_device_name())" > "$OUT/env.txt"
LOWBIT_AUTOTUNE=0 HYPOTHESIS_PROFILE=gpu timeout 100 python3 -m pytest -q -p no:cacheprovider -rf \
  tests/functional/test_linear.py tests/kernels/test_matmul.py tests/kernels/test_quantize.py \
  -k "cuda or gpu or auto_fp8 or dual or tensorwise or cublas" 2>&1 | tail -6 | tee "$OUT/gpu-tests-fp8.txt"
timeout 100 python3 bench/scripts/quant_micro.py > "$OUT/quant_micro.md" 2>&1; grep -v "x64\|x128" "$OUT/quant_micro.md" | head -30
timeout 150 python3 bench/scripts/profile_mlp.py switchback fp8-switchback fp8-tensorwise > "$OUT/profile.txt" 2>&1
LOWBIT_FP8_MATMUL=auto timeout 170 python3 -m lowbit bench mlp --shapes vit-h-14 \
  --recipes switchback fp8-switchback fp8-tensorwise fp8-rowwise --compile --out "$OUT/mlp" > "$OUT/mlp.log" 2>&1
grep -E "^\|" "$OUT/mlp/mlp.md" | cut -c1-120
