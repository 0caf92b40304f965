#!/usr/bin/env bash
# Next device call for #7 (H100, < 10 min): w768, seeds 1 and 2 of every recipe (seed 1 of five recipes was cut by
# the first accuracy call's budget, docs/results/accuracy/jobs.tsv; bf16 itself varied a lot over 2 seeds), 6 at a
# time: two waves of about 150 s each (the first call: 136-153 s per w768 run, 6 at a time). Merge with seed 0 from
# docs/results/accuracy/summary.json by hand (the earlier run directories are not committed, only their summary).
set -uo pipefail
FINAL=${OUT:-/tmp/lowbit-out}; export OUT=/tmp/res; mkdir -p "$OUT" "$FINAL"
trap 'tar czf "$FINAL/res.tgz" -C "$OUT" --exclude="*.pt" --exclude="*.dcp" --exclude=tensorboard --exclude="events.*" .' EXIT
export PYTHONPATH=$PWD/src PYTHONUNBUFFERED=1
WIDTHS=768 SEEDS="1 2" PARALLEL=6 BUDGET=${BUDGET:-480} JOB_TIMEOUT=300 bash experiments/run_accuracy.sh
