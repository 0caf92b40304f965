#!/usr/bin/env bash
# Issue #7 part 3 — loss spikes: adamw, adamw + grad clip 1.0, adamw beta2 0.95, stableadamw; 3 seeds each (12 runs).
# Setting: lr 4e-3, beta2 0.99 (0.95 for the lower-beta2 variant), warmup 25, batch 128, 200 steps (docs/results.md §3).
# CPU (default here) or GPU (DEVICE=cuda). OUT/spikes/<variant>/seed<k>/; then summarize.py counts spikes and
# draws the lag histogram and per-variant spike plots.
#   OUT=/path/to/out bash experiments/run_spikes.sh                       # CPU, PARALLEL=1, 1 thread each
#   OUT=/path/to/out DEVICE=cuda PARALLEL=6 BUDGET=500 bash experiments/run_spikes.sh
set -uo pipefail
OUT=${OUT:-/tmp/lowbit-out}
. experiments/_common.sh
VARIANTS=${VARIANTS:-"adamw adamw-clip adamw-beta2-0.95 stableadamw"}
SEEDS=${SEEDS:-"0 1 2"}
PARALLEL=${PARALLEL:-1}
BUDGET=${BUDGET:-100000}
JOB_TIMEOUT=${JOB_TIMEOUT:-3600}
EXTRA=${EXTRA:-}
[ -n "${STEPS:-}" ] && EXTRA="$EXTRA --steps $STEPS"
[ -n "${DEVICE:-}" ] && EXTRA="$EXTRA --device $DEVICE"
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
D="$OUT/spikes"; mkdir -p "$D"
JOBS="$D/jobs.tsv.in"; : > "$JOBS"
for seed in $SEEDS; do for v in $VARIANTS; do
  printf '%s\t%s\n' "$v/seed$seed" \
    "$LOWBIT train --config experiments/spikes/$v.yaml --seed $seed --out $D/$v/seed$seed --no-progress --threads 1 $EXTRA" >> "$JOBS"
done; done
$PY experiments/run_jobs.py "$JOBS" --parallel "$PARALLEL" --budget "$BUDGET" --job-timeout "$JOB_TIMEOUT" \
  --log "$D/jobs.tsv" --logdir "$D/logs"
$PY experiments/summarize.py "$D" --out "$D/summary" --title "loss spikes" > "$D/summary.log" 2>&1 \
  || echo "summarize failed: see $D/summary.log"
cat "$D/summary/results.md" 2>/dev/null | head -60
