#!/usr/bin/env bash
# Issue #18 — accuracy through the fused path on real images: CLIP ViT-B/32 (experiments/fmnist/vit-b-32.yaml:
# the vit-b-32 preset at 224 px, --fuse) trained on Fashion-MNIST, recipes bf16 / switchback / fp8-switchback /
# fp8-tensorwise x 3 seeds = 12 runs on one GPU, PARALLEL at a time inside BUDGET seconds; zero-shot top-1 on the
# 10k test images (the prepared folder's own task, chance 10%) at the end of each run.
#
# Data: the Debian package's IDX files are carried in .data/fashion-mnist/ (30 MiB: `apt-get install
# dataset-fashion-mnist; cp /usr/share/datasets/fashion-mnist/*.gz .data/fashion-mnist/`) and prepared here into
# .data/fmnist (`lowbit data prepare`, ~10 s; 223 MB of shards: tar headers, too big to carry). Runs start seed by
# seed (seed 0 of every recipe first), so a budget that runs out costs seeds, not recipes. Every run writes
# OUT/fmnist/<recipe>/seed<k>/{metrics.csv, eval.csv, summary.json} (no checkpoints); OUT/fmnist/summary/ gets
# results.md (per-seed table, mean ± s.d., Welch's t-test against bf16), loss_curves.png, final_per_seed.png.
#
#   OUT=/path/to/out bash experiments/run_fmnist.sh                                     # the H100 (~7 min)
#   OUT=... DEVICE=cpu PRESET=tiny STEPS=6 BATCH=16 SEEDS="0 1" BUDGET=300 ZEROSHOT_LIMIT=500 \
#     bash experiments/run_fmnist.sh                                                    # smoke test on a CPU
set -uo pipefail
OUT=${OUT:-/tmp/lowbit-out}
. experiments/_common.sh
RECIPES=${RECIPES:-"bf16 switchback fp8-switchback fp8-tensorwise"}
SEEDS=${SEEDS:-"0 1 2"}
CONFIG=${CONFIG:-experiments/fmnist/vit-b-32.yaml}
PARALLEL=${PARALLEL:-6}   # 6 x ~8 GiB (ViT-B/32, batch 128, eager) on the 80 GB card
WORKERS=${WORKERS:-2}     # DataLoader processes per run: 16 cores = 6 trainers + 12 workers (~1100 img/s per run)
BUDGET=${BUDGET:-450}     # seconds for the runs; + preflight, data preparation and the summary: < 8.5 minutes
JOB_TIMEOUT=${JOB_TIMEOUT:-$BUDGET}
DATA=${DATA:-.data/fmnist}
SOURCE=${SOURCE:-.data/fashion-mnist}
EXTRA="${EXTRA:-}$(train_flags)"
[ -n "${LR:-}" ] && EXTRA="$EXTRA --lr $LR"
[ -n "${EVAL_EVERY:-}" ] && EXTRA="$EXTRA --eval-every $EVAL_EVERY"
# the trainers' own CPU work (zero-shot decoding, collation) beside the loader processes: no oversubscription
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-2}
D="$OUT/fmnist"; mkdir -p "$D"

if [ ! -f "$DATA/manifest.json" ]; then
  t0=$(date +%s)
  $LOWBIT data prepare fashion-mnist --source "$SOURCE" --out "$DATA" --force > "$D/prepare.log" 2>&1 \
    || { echo "data preparation failed:"; tail -5 "$D/prepare.log"; exit 1; }
  echo "prepared $DATA from $SOURCE in $(( $(date +%s) - t0 )) s" | tee -a "$OUT/env.txt"
fi
# DataLoader workers hand batches over in shared memory (a 128 x 3 x 224 x 224 float32 batch is 77 MB)
shm=$(df -Pk /dev/shm 2>/dev/null | awk 'NR == 2 {print int($4 / 1024)}')
echo "cores $(env -u OMP_NUM_THREADS -u OMP_THREAD_LIMIT nproc), /dev/shm free ${shm:-?} MiB, $PARALLEL runs at a time, $WORKERS loader workers each" | tee -a "$OUT/env.txt"
if [ "$WORKERS" -gt 0 ] && [ "${shm:-0}" -lt $(( PARALLEL * WORKERS * 700 )) ]; then
  echo "warning: /dev/shm too small for $WORKERS workers x $PARALLEL runs: loading in the training processes" | tee -a "$OUT/env.txt"
  WORKERS=0
fi
nvidia-smi --query-gpu=name,memory.total,memory.used --format=csv,noheader >> "$OUT/env.txt" 2>/dev/null || true

JOBS="$D/jobs.tsv.in"; : > "$JOBS"
for seed in $SEEDS; do for r in $RECIPES; do
  printf '%s\t%s\n' "$r/seed$seed" \
    "$LOWBIT train --config $CONFIG --recipe $r --seed $seed --data $DATA --zeroshot auto --workers $WORKERS --out $D/$r/seed$seed --no-progress $EXTRA" >> "$JOBS"
done; done
# GPU memory while the runs train (peak per process is in each run's summary.json)
( while sleep 20; do nvidia-smi --query-gpu=utilization.gpu,memory.used --format=csv,noheader; done ) \
  > "$D/gpu.log" 2>/dev/null &
mon=$!
$PY experiments/run_jobs.py "$JOBS" --parallel "$PARALLEL" --budget "$BUDGET" --job-timeout "$JOB_TIMEOUT" \
  --log "$D/jobs.tsv" --logdir "$D/logs"
kill "$mon" 2>/dev/null
$PY experiments/summarize.py "$D" --out "$D/summary" --baseline "${BASELINE:-bf16}" --smooth 10 \
  --title "Fashion-MNIST, CLIP ${PRESET:-vit-b-32} through the fused path, recipes x seeds ($(head -1 "$OUT/env.txt" | cut -d'|' -f5 | xargs))" \
  > "$D/summary.log" 2>&1 || echo "summarize failed: see $D/summary.log"
cat "$D/summary/results.md" 2>/dev/null | head -80
