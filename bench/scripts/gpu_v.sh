#!/usr/bin/env bash
# Device call V (H100, < 10 min): after call U found inductor's fp8 scales a few ulp off on the GPU (its Triton
# lowers a float32 `/` to the approximate div.full), the reference quantizers divide in float64 when compiled.
# 1) the compiled-quantize tests on the GPU again, 2) the ViT-H step with CUDA graphs, kernel vs inductor
# quantization, both int8 and fp8 SwitchBack (U's run ended before the switchback/inductor row).
set -uo pipefail
FINAL=${OUT:-/tmp/lowbit-out}; export OUT=/tmp/res; mkdir -p "$OUT" "$FINAL"
trap 'tar czf "$FINAL/res.tgz" -C "$OUT" --exclude="*.pt" .' EXIT
export PYTHONPATH=$PWD/src PYTHONUNBUFFERED=1 HYPOTHESIS_PROFILE=gpu
LOWBIT_AUTOTUNE=0 timeout 120 python3 -m pytest -q -p no:cacheprovider tests/kernels/test_compiled_quantize.py \
  > "$OUT/gpu-tests-compiled-quantize.txt" 2>&1; echo "rc=$?" >> "$OUT/gpu-tests-compiled-quantize.txt"
tail -3 "$OUT/gpu-tests-compiled-quantize.txt"
timeout 430 python3 -m lowbit bench step --preset vit-h-14 --batch-size 96 --compile --cudagraphs --steps 8 \
  --warmup 3 --no-anchors --compiled-quantize kernel inductor --recipe bf16 fp8-switchback switchback \
  --out "$OUT/step" > "$OUT/step.log" 2>&1
grep -E "^\|" "$OUT/step/step.md" | cut -c1-200
