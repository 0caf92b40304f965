#!/usr/bin/env bash
# Next device call for #7 (H100, < 10 min): the five w768 int8 runs of seed 1 that the first accuracy call's
# budget cut (docs/results/accuracy/jobs.tsv), 5 at a time. Merge with docs/results/accuracy/summary.json by hand
# (the earlier run directories are not committed, only their summary).
set -uo pipefail
FINAL=${OUT:-/tmp/lowbit-out}; export OUT=/tmp/res; mkdir -p "$OUT" "$FINAL"
trap 'tar czf "$FINAL/res.tgz" -C "$OUT" --exclude="*.pt" --exclude="*.dcp" --exclude=tensorboard --exclude="events.*" .' EXIT
export PYTHONPATH=$PWD/src PYTHONUNBUFFERED=1
RECIPES="switchback switchback-q switchback-m int8-all llm-int8" WIDTHS=768 SEEDS=1 PARALLEL=5 BUDGET=${BUDGET:-480} \
  JOB_TIMEOUT=450 bash experiments/run_accuracy.sh
