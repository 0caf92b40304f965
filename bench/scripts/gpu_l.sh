#!/usr/bin/env bash
# Device call L (H100; #4, #7): quantize tests on the GPU (single-pass two-layout kernel, fp32 and bf16 input),
# fp8 layer tests, CPU-overhead check of the MLP, the ViT-H MLP table, then the ViT-H step stage.
set -uo pipefail
FINAL=${OUT:-/tmp/lowbit-out}; export OUT=/tmp/res; mkdir -p "$OUT" "$FINAL"
trap 'tar czf "$FINAL/res.tgz" -C "$OUT" --exclude="*.pt" --exclude="*.dcp" --exclude=tensorboard --exclude="events.*" .' EXIT
export PYTHONPATH=$PWD/src PYTHONUNBUFFERED=1
python3 -c "import torch, triton; print(torch.__version__, triton.__version__, torch.cuda.get_device_name())" > "$OUT/env.txt"
LOWBIT_AUTOTUNE=0 HYPOTHESIS_PROFILE=gpu timeout 110 python3 -m pytest -q -p no:cacheprovider -rf -x \
  tests/kernels/test_quantize.py tests/functional/test_linear.py tests/kernels/test_matmul.py \
  -k "not compile" 2>&1 | tail -6 | tee "$OUT/gpu-tests-quant-fp8.txt"
timeout 70 python3 bench/scripts/overhead_mlp.py fp8-tensorwise fp8-switchback > "$OUT/overhead.txt" 2>&1
grep -v Warn "$OUT/overhead.txt" | tail -6
timeout 200 python3 -m lowbit bench mlp --shapes vit-h-14 vit-b-32 --recipes switchback fp8-switchback fp8-tensorwise \
  --compile --out "$OUT/mlp" > "$OUT/mlp.log" 2>&1; grep -E "^\|" "$OUT/mlp/mlp.md" | cut -c1-120

