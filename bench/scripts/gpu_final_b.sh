#!/usr/bin/env bash
# Device call B: GPU tests, compiled MLP block, optimizer step. Results under $OUT.
set -uo pipefail
OUT=${OUT:-/tmp/lowbit-out}; mkdir -p "$OUT"
export PYTHONPATH=$PWD/src PYTHONUNBUFFERED=1
LOWBIT_AUTOTUNE=0 HYPOTHESIS_PROFILE=gpu timeout 150 python3 -m pytest tests/kernels tests/functional tests/nn -q -p no:cacheprovider 2>&1 | tail -6 | tee "$OUT/gpu_tests.txt"
B="python3 -m lowbit bench"
timeout 120 $B optim --preset vit-h-14 --dtype fp32 bf16 --l2-budget-mb 12 24 40 --out "$OUT" > "$OUT/optim.log" 2>&1; grep -E "^\||^##" "$OUT/optim.log" | tail -24
timeout 170 $B mlp --shapes vit-h-14 --recipes switchback fp8-switchback --compile --out "$OUT/compiled" > "$OUT/mlp_compiled.log" 2>&1; grep -E "^\|" "$OUT/compiled/mlp.md" | cut -c1-130
