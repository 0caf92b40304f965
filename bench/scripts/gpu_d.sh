#!/usr/bin/env bash
# Device call D (#5, #4): CUDA tests of the fused optimizer, the optimizer step benchmark, the matmul table with
# tensor-wise fp8 rows, and the ViT-H MLP block eager + compiled with torchao's training linears as anchors.
set -uo pipefail
FINAL=${OUT:-/tmp/lowbit-out}; OUT=/tmp/res; mkdir -p "$OUT" "$FINAL"
trap 'tar czf "$FINAL/res.tgz" -C "$OUT" .' EXIT
[ -d .whl ] && python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .whl/*.whl
export PYTHONPATH=$PWD/src:/tmp/site PYTHONUNBUFFERED=1
python3 -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__, torch.cuda.get_device_name())
try:
    import torchao; print('torchao', torchao.__version__)
except Exception as e: print('no torchao', e)" | tee "$OUT/env.txt"
timeout 150 python3 -m pytest tests/optim -q -x -p no:cacheprovider 2>&1 | tail -3 | tee "$OUT/gpu_tests_optim.txt"
B="python3 -m lowbit bench"
timeout 100 $B optim --preset vit-h-14 --dtype fp32 bf16 --out "$OUT/optim" > "$OUT/optim.log" 2>&1; grep -E "^\||^##" "$OUT/optim.log" | tail -20
timeout 150 $B matmul --out "$OUT/matmul" > "$OUT/matmul.log" 2>&1; grep -E "tensorwise|bf16 cuBLAS" "$OUT/matmul/matmul.md" | head -30
timeout 200 $B mlp --shapes vit-h-14 --recipes switchback fp8-switchback fp8-tensorwise fp8-rowwise --compile --out "$OUT/anchors" > "$OUT/mlp_anchors.log" 2>&1; grep -E "^\|" "$OUT/anchors/mlp.md" | cut -c1-150
tail -5 "$OUT/mlp_anchors.log"
