#!/usr/bin/env bash
# Device call S (H100, < 10 min; carry .whl; #7): w768 seeds 1 and 2 of every int8 recipe (two waves of 6), then,
# with the GPU to itself, the ViT-H/14 step's torchao anchors with CUDA graphs beside a bf16 row.
set -uo pipefail
FINAL=${OUT:-/tmp/lowbit-out}; export OUT=/tmp/res; mkdir -p "$OUT" "$FINAL"
trap 'tar czf "$FINAL/res.tgz" -C "$OUT" --exclude="*.pt" --exclude="*.dcp" --exclude=tensorboard --exclude="events.*" .' EXIT
export PYTHONPATH=$PWD/src PYTHONUNBUFFERED=1
WIDTHS=768 SEEDS="1 2" PARALLEL=6 BUDGET=${BUDGET:-320} JOB_TIMEOUT=300 bash experiments/run_accuracy.sh
STAGES="vit-h-14-anchors" bash experiments/gpu_step.sh
