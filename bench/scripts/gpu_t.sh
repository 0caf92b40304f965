#!/usr/bin/env bash
# Device call T (H100, < 10 min; #7): the ViT-L/14 and ViT-B/32 step rows with CUDA graphs (all five recipes).
set -uo pipefail
FINAL=${OUT:-/tmp/lowbit-out}; export OUT=/tmp/res; mkdir -p "$OUT" "$FINAL"
trap 'tar czf "$FINAL/res.tgz" -C "$OUT" .' EXIT
export PYTHONUNBUFFERED=1
STAGES="vit-l-14 vit-b-32" bash experiments/gpu_step.sh
