#!/usr/bin/env bash
# Issue #7 part 1 — accuracy of int8 training: 6 recipes x 2 widths x 2 seeds = 24 runs of `lowbit train` on one
# GPU, PARALLEL at a time, inside BUDGET seconds (default 500 s: the whole script stays under 9 minutes).
# Runs start in priority order (seed 0 of every recipe at both widths first), so a budget that runs out costs
# seeds, not recipes. Every run writes OUT/accuracy/w<width>-<recipe>/seed<k>/{metrics.csv, eval.csv, summary.json};
# a run killed at the budget keeps its metrics.csv (summarize.py reports it as incomplete).
#
#   OUT=/path/to/out bash experiments/run_accuracy.sh                 # on the H100
#   OUT=... STEPS=200 PARALLEL=4 BUDGET=400 bash experiments/run_accuracy.sh
#   OUT=... RECIPES="none switchback" WIDTHS=384 SEEDS=0 DEVICE=cpu STEPS=20 bash experiments/run_accuracy.sh  # smoke
set -uo pipefail
OUT=${OUT:-/tmp/lowbit-out}
. experiments/_common.sh
RECIPES=${RECIPES:-"none switchback switchback-q switchback-m int8-all llm-int8"}
WIDTHS=${WIDTHS:-"384 768"}
SEEDS=${SEEDS:-"0 1"}
PARALLEL=${PARALLEL:-6}
BUDGET=${BUDGET:-500}
JOB_TIMEOUT=${JOB_TIMEOUT:-420}
EXTRA=${EXTRA:-}
[ -n "${STEPS:-}" ] && EXTRA="$EXTRA --steps $STEPS"
[ -n "${DEVICE:-}" ] && EXTRA="$EXTRA --device $DEVICE"
# CPU data rendering happens in each training process; keep PyTorch's own CPU threads from oversubscribing
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-2}
D="$OUT/accuracy"; mkdir -p "$D"
JOBS="$D/jobs.tsv.in"; : > "$JOBS"
for seed in $SEEDS; do for w in $WIDTHS; do for r in $RECIPES; do
  printf '%s\t%s\n' "w$w-$r/seed$seed" \
    "$LOWBIT train --config experiments/accuracy/w$w.yaml --recipe $r --seed $seed --out $D/w$w-$r/seed$seed --no-progress --threads 1 $EXTRA" >> "$JOBS"
done; done; done
$PY experiments/run_jobs.py "$JOBS" --parallel "$PARALLEL" --budget "$BUDGET" --job-timeout "$JOB_TIMEOUT" \
  --log "$D/jobs.tsv" --logdir "$D/logs"
$PY experiments/summarize.py "$D" --out "$D/summary" --title "int8 accuracy (synthetic data, $(head -1 "$OUT/env.txt" | cut -d'|' -f5))" \
  > "$D/summary.log" 2>&1 || echo "summarize failed: see $D/summary.log"
cat "$D/summary/results.md" 2>/dev/null | head -60
