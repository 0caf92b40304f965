#!/usr/bin/env bash
# Device call A: GPU tests (kernels, functional, nn), then linear and mlp tables. Results under $OUT.
set -uo pipefail
OUT=${OUT:-/tmp/lowbit-out}; mkdir -p "$OUT"
export PYTHONPATH=$PWD/src PYTHONUNBUFFERED=1
python3 -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__, torch.cuda.get_device_name())"
LOWBIT_AUTOTUNE=0 timeout 170 python3 -m pytest tests/kernels tests/functional tests/nn -q -p no:cacheprovider -x 2>&1 | tail -4 | tee "$OUT/gpu_tests.txt"
B="python3 -m lowbit bench"
timeout 230 $B linear --shapes vit-b-32 vit-h-14 llm --out "$OUT" > "$OUT/linear.log" 2>&1; grep -E "^\|" "$OUT/linear.md" | cut -c1-130
timeout 120 $B mlp --shapes vit-b-32 vit-h-14 --recipes switchback switchback-m fp8-switchback fp8-tensorwise --out "$OUT" > "$OUT/mlp.log" 2>&1; grep -E "^\|" "$OUT/mlp.md" | cut -c1-130
