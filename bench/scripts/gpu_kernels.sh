#!/usr/bin/env bash
# One device call: GPU tests of the kernels, then the kernel / linear benchmarks. Results under $OUT.
set -uo pipefail
OUT=${OUT:-/tmp/lowbit-out}; mkdir -p "$OUT"
export PYTHONPATH=$PWD/src PYTHONUNBUFFERED=1
python3 -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__, torch.cuda.get_device_name())"
timeout 200 python3 -m lowbit bench matmul --out "$OUT" > "$OUT/matmul.log" 2>&1; grep -v "^{" "$OUT/matmul.log" | tail -60
timeout 150 python3 -m lowbit bench linear --shapes vit-b-32 vit-h-14 --recipes switchback switchback-m fp8-switchback --out "$OUT" > "$OUT/linear.log" 2>&1; grep -v "^{" "$OUT/linear.log" | tail -16
LOWBIT_AUTOTUNE=0 HYPOTHESIS_PROFILE=ci timeout 200 python3 -m pytest tests/kernels -q -x -p no:cacheprovider 2>&1 | tail -5 | tee "$OUT/gpu_tests.txt"
