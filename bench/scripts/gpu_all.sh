#!/usr/bin/env bash
# One device call: GPU tests, then kernel / linear / mlp / sweep / memory / optim benchmarks. Results in $OUT.
set -uo pipefail
OUT=${OUT:-/tmp/lowbit-out}; mkdir -p "$OUT"
export PYTHONPATH=$PWD/src PYTHONUNBUFFERED=1
python3 -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__, torch.cuda.get_device_name())"
B="timeout 120 python3 -m lowbit bench"
$B matmul --out "$OUT" > "$OUT/matmul.log" 2>&1; grep -E "breakdown|config|8192×8192×8192" "$OUT/matmul.md" | head -40
$B linear --out "$OUT" > "$OUT/linear.log" 2>&1; grep -E "^\|" "$OUT/linear.md" | cut -c1-150
$B mlp --shapes vit-b-32 vit-h-14 --recipes switchback switchback-m fp8-switchback fp8-tensorwise --out "$OUT" > "$OUT/mlp.log" 2>&1; grep -E "^\|" "$OUT/mlp.md" | cut -c1-150
$B sweep --recipes switchback fp8-switchback --widths 256 384 512 768 1024 --out "$OUT" > "$OUT/sweep.log" 2>&1; grep -E "^\|" "$OUT/sweep.md"
$B memory --shapes vit-h-14 --out "$OUT" > /dev/null 2>&1
timeout 100 python3 -m lowbit bench optim --out "$OUT" > "$OUT/optim.log" 2>&1; tail -15 "$OUT/optim.log"
LOWBIT_AUTOTUNE=0 timeout 150 python3 -m pytest tests/kernels tests/functional tests/nn -q -x -p no:cacheprovider 2>&1 | tail -4 | tee "$OUT/gpu_tests.txt"
