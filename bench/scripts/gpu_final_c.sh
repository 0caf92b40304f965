#!/usr/bin/env bash
# Device call C: CUDA tests of the fused optimizer and the int8 quantize rounding, the optimizer step benchmark,
# and the ViT-H MLP block eager + compiled with torchao's training linears as anchors (wheel carried in .whl/).
set -uo pipefail
OUT=${OUT:-/tmp/lowbit-out}; mkdir -p "$OUT"
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .whl/*.whl
export PYTHONPATH=$PWD/src:/tmp/site PYTHONUNBUFFERED=1
python3 -c "import torch, triton, torchao; print('torch', torch.__version__, 'triton', triton.__version__, 'torchao', torchao.__version__, torch.cuda.get_device_name())"
timeout 120 python3 -m pytest tests/optim -q -x -p no:cacheprovider 2>&1 | tail -3 | tee "$OUT/gpu_tests_optim.txt"
LOWBIT_AUTOTUNE=0 HYPOTHESIS_PROFILE=gpu timeout 80 python3 -m pytest tests/kernels/test_quantize.py -q -p no:cacheprovider -k "wide or (triton_matches and int8)" 2>&1 | tail -2 | tee "$OUT/gpu_tests_quantize.txt"
B="python3 -m lowbit bench"
timeout 90 $B optim --preset vit-h-14 --dtype fp32 bf16 --out "$OUT" > "$OUT/optim.log" 2>&1; grep -E "^\||^##" "$OUT/optim.log" | tail -20
timeout 200 $B mlp --shapes vit-h-14 --recipes switchback fp8-switchback --compile --out "$OUT/anchors" > "$OUT/mlp_anchors.log" 2>&1; grep -E "^\|" "$OUT/anchors/mlp.md" | cut -c1-140
