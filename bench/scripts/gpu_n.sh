#!/usr/bin/env bash
# Device call N (H100; #4, #7): the ViT-H step with --cudagraphs and --layers auto (vision tower converted),
# then the ViT-H MLP block in CUDA graphs (make_graphed_callables) vs eager.
set -uo pipefail
FINAL=${OUT:-/tmp/lowbit-out}; export OUT=/tmp/res; mkdir -p "$OUT" "$FINAL"
trap 'tar czf "$FINAL/res.tgz" -C "$OUT" --exclude="*.pt" --exclude="*.dcp" --exclude=tensorboard --exclude="events.*" .' EXIT
export PYTHONPATH=$PWD/src PYTHONUNBUFFERED=1
B="python3 -m lowbit bench"
timeout 215 $B step --preset vit-h-14 --batch-size 96 --compile --cudagraphs --steps 8 --warmup 3 --no-anchors \
  --layers auto --recipe bf16 switchback fp8-switchback fp8-tensorwise --out "$OUT/step-auto" > "$OUT/step-auto.log" 2>&1
grep -E "^\|" "$OUT/step-auto/step.md" | cut -c1-200
timeout 95 $B mlp --shapes vit-h-14 --recipes fp8-switchback fp8-tensorwise switchback --cudagraphs \
  --out "$OUT/mlp" > "$OUT/mlp.log" 2>&1; grep -E "^\|" "$OUT/mlp/mlp.md" | cut -c1-150; tail -3 "$OUT/mlp.log" | cut -c1-300
