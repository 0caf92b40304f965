#!/usr/bin/env bash
# Device call T (H100, < 10 min; #7): the ViT-B/32 step rows with CUDA graphs (all five recipes). Its ViT-L/14
# stage ran on 2026-11-23 (bench/results/h100/step-vit-l-14-cudagraphs.md).
set -uo pipefail
FINAL=${OUT:-/tmp/lowbit-out}; export OUT=/tmp/res; mkdir -p "$OUT" "$FINAL"
trap 'tar czf "$FINAL/res.tgz" -C "$OUT" .' EXIT
export PYTHONUNBUFFERED=1
STAGES="vit-b-32" bash experiments/gpu_step.sh
