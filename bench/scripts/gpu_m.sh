#!/usr/bin/env bash
# Device call M (H100; #4, #7): CPU launch cost removed with CUDA graphs (torch.compile mode="reduce-overhead"):
# the ViT-H and ViT-B MLP tables eager / compiled / cudagraphs, then the ViT-H training step with --cudagraphs.
set -uo pipefail
FINAL=${OUT:-/tmp/lowbit-out}; export OUT=/tmp/res; mkdir -p "$OUT" "$FINAL"
trap 'tar czf "$FINAL/res.tgz" -C "$OUT" --exclude="*.pt" --exclude="*.dcp" --exclude=tensorboard --exclude="events.*" .' EXIT
export PYTHONPATH=$PWD/src PYTHONUNBUFFERED=1
python3 -c "import torch, triton; print(torch.__version__, triton.__version__, torch.cuda.get_device_name())" > "$OUT/env.txt"
timeout 40 python3 -m pytest -q -p no:cacheprovider -rf tests/kernels/test_quantize.py -k multi_program 2>&1 | tail -2 \
  | tee "$OUT/gpu-tests-transposed.txt"
B="python3 -m lowbit bench"
timeout 230 $B mlp --shapes vit-h-14 vit-b-32 --recipes switchback fp8-switchback fp8-tensorwise \
  --compile --cudagraphs --out "$OUT/mlp" > "$OUT/mlp.log" 2>&1; grep -E "^\|" "$OUT/mlp/mlp.md" | cut -c1-150
timeout 300 $B step --preset vit-h-14 --batch-size 96 --compile --cudagraphs --steps 8 --warmup 3 --no-anchors \
  --recipe bf16 switchback fp8-switchback fp8-tensorwise switchback-m --out "$OUT/step" > "$OUT/step.log" 2>&1
grep -E "^\|" "$OUT/step/step.md" | cut -c1-220; grep -E "Error|error" "$OUT/step.log" | head -5
