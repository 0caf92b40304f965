#!/usr/bin/env bash
# Issue 30 — the learning-rate search for the layer-scale experiment, on the CPU (experiments/PAPER.md says why
# and what came out): the small model of experiments/paper/cpu-small.yaml on Fashion-MNIST, plain fp32 linears
# (`none`) against simulated fp8 tensor-wise (`fp8-tensorwise-sim`, the same numerics as the H100's fp8 kernels)
# with and without zero-init layer-scale, over a few peak learning rates; one run at a time, 1 thread, nice 10.
# Runs land in OUT/<recipe>-ls<none|0>-lr<lr>/seed<k>/ (metrics.csv, eval.csv, summary.json); then summarize.py.
# A run whose summary.json exists is skipped, so lists can be extended as results come in.
#   OUT=/tmp/lrs DATA=.data/fmnist bash experiments/paper_lr_search.sh
#   OUT=/tmp/lrs DATA=... LRS=4e-3 SETTINGS="none:none fp8-tensorwise-sim:none" bash experiments/paper_lr_search.sh
set -uo pipefail
OUT=${OUT:-/tmp/lowbit-lr-search}
PY=${PY:-python3}
DATA=${DATA:-.data/fmnist}
LRS=${LRS:-"3e-3 6e-3"}
SETTINGS=${SETTINGS:-"none:none fp8-tensorwise-sim:none fp8-tensorwise-sim:0"}
SEEDS=${SEEDS:-0}
EXTRA=${EXTRA:-}
export PYTHONPATH=$PWD/src${PYTHONPATH:+:$PYTHONPATH} OMP_NUM_THREADS=1
mkdir -p "$OUT"
for seed in $SEEDS; do for lr in $LRS; do for s in $SETTINGS; do
  r=${s%%:*}; ls=${s##*:}
  LS=""; [ "$ls" != none ] && LS="--set model.layer_scale_init=$ls"
  d="$OUT/$r-ls$ls-lr$lr/seed$seed"
  [ -f "$d/summary.json" ] && { echo "have $d"; continue; }
  t0=$(date +%s)
  # shellcheck disable=SC2086
  nice -n 10 $PY -m lowbit train --config experiments/paper/cpu-small.yaml --data "$DATA" --recipe "$r" --lr "$lr" \
    $LS --seed "$seed" --threads 1 --no-progress --overwrite --out "$d" $EXTRA > "$OUT/$r-ls$ls-lr$lr-seed$seed.log" 2>&1
  echo "$r ls=$ls lr=$lr seed=$seed: rc $? in $(( $(date +%s) - t0 )) s; $(grep -E 'final loss|zero-shot top-1' "$OUT/$r-ls$ls-lr$lr-seed$seed.log" | tr '\n' ' ')"
done; done; done
$PY experiments/summarize.py "$OUT" --out "$OUT/summary" --title "CPU learning-rate search (experiments/paper/cpu-small.yaml)" \
  > "$OUT/summary.log" 2>&1 || echo "summarize failed: see $OUT/summary.log"
