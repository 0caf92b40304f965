#!/usr/bin/env bash
# Next device call for #7 (H100, < 10 min; carry .whl for the torchao anchors): the step table's missing rows with
# CUDA graphs: torchao anchors at ViT-H, then ViT-L/14 and ViT-B/32.
set -uo pipefail
FINAL=${OUT:-/tmp/lowbit-out}; export OUT=/tmp/res; mkdir -p "$OUT" "$FINAL"
trap 'tar czf "$FINAL/res.tgz" -C "$OUT" .' EXIT
export PYTHONUNBUFFERED=1
STAGES="vit-h-14-anchors vit-b-32" OUT=$OUT bash experiments/gpu_step.sh
