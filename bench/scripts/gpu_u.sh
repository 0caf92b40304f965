#!/usr/bin/env bash
# Device call U (H100, < 10 min): compiled quantization traced for inductor (`--compiled-quantize inductor`) vs
# lowbit's quantize kernels, side by side. 1) its CUDA tests (bit-identical codes from inductor's Triton), 2) the
# ViT-H MLP block compiled both ways, 3) the ViT-H step with CUDA graphs both ways (about 550 s with the limits
# below: each compiled row costs 20-60 s). Run with the GPU to itself.
set -uo pipefail
FINAL=${OUT:-/tmp/lowbit-out}; export OUT=/tmp/res; mkdir -p "$OUT" "$FINAL"
trap 'tar czf "$FINAL/res.tgz" -C "$OUT" --exclude="*.pt" .' EXIT
export PYTHONPATH=$PWD/src PYTHONUNBUFFERED=1 HYPOTHESIS_PROFILE=gpu
B="python3 -m lowbit bench"
LOWBIT_AUTOTUNE=0 timeout 90 python3 -m pytest -q -p no:cacheprovider tests/kernels/test_compiled_quantize.py \
  > "$OUT/gpu-tests-compiled-quantize.txt" 2>&1; echo "rc=$?" >> "$OUT/gpu-tests-compiled-quantize.txt"
tail -3 "$OUT/gpu-tests-compiled-quantize.txt"
timeout 170 $B mlp --shapes vit-h-14 --recipes fp8-switchback switchback --compile \
  --compiled-quantize kernel inductor --out "$OUT/mlp" > "$OUT/mlp.log" 2>&1; grep -E "^\|" "$OUT/mlp/mlp.md" | cut -c1-160
timeout 290 $B step --preset vit-h-14 --batch-size 96 --compile --cudagraphs --steps 8 --warmup 3 --no-anchors \
  --compiled-quantize kernel inductor --recipe bf16 fp8-switchback switchback --out "$OUT/step" > "$OUT/step.log" 2>&1
grep -E "^\|" "$OUT/step/step.md" | cut -c1-200
