#!/usr/bin/env bash
# Issue 30 — the paper's accuracy claims on real data, in ONE device call (one GPU, < 8.5 minutes): CLIP ViT-B/32
# (experiments/paper/vit-b-32.yaml) on Fashion-MNIST captions, every run on the same schedule (batch 128 x STEPS,
# warmup 20, cosine), SEEDS each, PARALLEL runs at a time inside BUDGET seconds. Three parts, one folder each:
#   RUNS/main/<recipe>/seed<k>     bf16 (plain nn.Linear under bf16 autocast) and the 8-bit recipes at lr 5e-4
#   RUNS/ls-lr<lr>/<recipe>-ls<none|0>/seed<k>   fp8-tensorwise without / with zero-init layer-scale and bf16
#                                  without, at higher learning rates (LS_SETTINGS; experiments/PAPER.md: how they
#                                  were chosen), --activations (max |block output|)
#   RUNS/spike/<optimizer>/seed<k> AdamW vs StableAdamW at SPIKE_LR, beta2 SPIKE_BETA2, recipe bf16, --monitor
# Jobs start seed by seed (seed 0 of every setting first), so a budget that runs out costs seeds, not settings.
# Each run writes metrics.csv, eval.csv (zero-shot top-1 on the 10k test images, chance 10%) and summary.json.
# Then experiments/summarize_paper.py writes RUNS/summary/ (results.md, summary.json, the plots). With PACK=1
# (device calls: only 8 files, 2 folders deep come back) OUT gets results.md, the plots and RUNS as
# paper-runs.tar.gz (TensorBoard folders left out: metrics.csv holds the same), and nothing else but env.txt.
#
# Data: DATA (default .data/fmnist) if prepared; else DATA_TGZ (default .data/fmnist.tar.gz: the prepared folder,
# 36 MiB, made by `lowbit data prepare fashion-mnist --out .data/fmnist && tar -czf .data/fmnist.tar.gz -C .data
# fmnist`; unpacks in ~2 s); else `lowbit data prepare fashion-mnist` from SOURCE (the Debian package's IDX
# files, 30 MiB; ~25 s).
#
#   RUNS=/tmp/paper PACK=1 bash experiments/run_paper.sh      # the H100 (~6.5 minutes; at most ~7.6: the budget)
#   OUT=/tmp/smoke DEVICE=cpu PRESET=tiny STEPS=3 BATCH=8 RECIPES="bf16 switchback" SEEDS="0 1" \
#     ZEROSHOT_LIMIT=50 PARALLEL=2 bash experiments/run_paper.sh                   # smoke test on a CPU
set -uo pipefail
OUT=${OUT:-/tmp/lowbit-out}
. experiments/_common.sh
RUNS=${RUNS:-$OUT/paper}
CONFIG=${CONFIG:-experiments/paper/vit-b-32.yaml}
RECIPES=${RECIPES:-"bf16 switchback fp8-tensorwise fp8-switchback int8-all llm-int8 switchback-m"}
# lr:recipe:layer-scale-init; 1e-3 (2x the main lr): does fp8 without layer-scale fail where bf16 trains?
# 2e-3: past bf16's edge without layer-scale at ViT-B width (docs/results.md section 2): does zero-init rescue fp8?
LS_SETTINGS=${LS_SETTINGS:-"1e-3:fp8-tensorwise:none 1e-3:bf16:none 2e-3:fp8-tensorwise:0 2e-3:fp8-tensorwise:none 2e-3:bf16:none"}
SPIKE_OPTIMIZERS=${SPIKE_OPTIMIZERS:-"adamw stableadamw"}
SPIKE_LR=${SPIKE_LR:-1.5e-3}
SPIKE_BETA2=${SPIKE_BETA2:-0.99}
SEEDS=${SEEDS:-"0 1"}
PARALLEL=${PARALLEL:-8}    # 8 x ~8 GiB (ViT-B/32, batch 128, eager) on the 80 GB card
WORKERS=${WORKERS:-1}      # loader processes per run (~1100 images/s each; a run gets ~1/8 of the GPU)
BUDGET=${BUDGET:-420}      # seconds for the runs; + data, preflight, summary and packing: < 8.5 minutes
MIN_START=${MIN_START:-75}  # no job starts with less budget left (a 200-step run: ~70-90 s with 8 sharing)
JOB_TIMEOUT=${JOB_TIMEOUT:-$BUDGET}
COMPILE=${COMPILE:-0}      # 0: --no-compile (8 runs share the GPU: eager's launch cost hides behind the others)
DATA=${DATA:-.data/fmnist}
DATA_TGZ=${DATA_TGZ:-.data/fmnist.tar.gz}
SOURCE=${SOURCE:-}
PACK=${PACK:-0}
EXTRA="${EXTRA:-}$(train_flags)"
[ "$COMPILE" = 0 ] && EXTRA="$EXTRA --no-compile"
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
mkdir -p "$RUNS"
t_start=$(date +%s)

# ---- data
if [ ! -f "$DATA/manifest.json" ]; then
  t0=$(date +%s)
  if [ -f "$DATA_TGZ" ]; then
    mkdir -p "$DATA" && tar -xzf "$DATA_TGZ" -C "$DATA" --strip-components=1 \
      || { echo "could not unpack $DATA_TGZ into $DATA"; exit 1; }
    what="unpacked $DATA_TGZ"
  else
    $LOWBIT data prepare fashion-mnist ${SOURCE:+--source "$SOURCE"} --out "$DATA" --force > "$RUNS/prepare.log" 2>&1 \
      || { echo "data preparation failed:"; tail -5 "$RUNS/prepare.log"; exit 1; }
    what="prepared from ${SOURCE:-the installed package}"
  fi
  [ -f "$DATA/manifest.json" ] || { echo "$DATA has no manifest.json after: $what"; exit 1; }
  echo "data: $DATA $what in $(( $(date +%s) - t0 )) s" | tee -a "$OUT/env.txt"
fi
nvidia-smi --query-gpu=name,memory.total,memory.used --format=csv,noheader >> "$OUT/env.txt" 2>/dev/null || true
echo "cores $(env -u OMP_NUM_THREADS -u OMP_THREAD_LIMIT nproc); $PARALLEL runs at a time, $WORKERS loader worker(s) each; budget $BUDGET s; compile $COMPILE" \
  | tee -a "$OUT/env.txt"

# ---- jobs, in priority order: seed by seed; within a seed the recipe table, then layer-scale, then spikes
recipe_flag() { [ "$1" = bf16 ] && echo none || echo "$1"; }  # bf16 = plain nn.Linear under autocast
JOBS="$RUNS/jobs.tsv.in"; : > "$JOBS"
add() {  # NAME ARGS...: one `lowbit train` job writing RUNS/NAME
  local name=$1; shift
  printf '%s\t%s\n' "$name" "$LOWBIT train --config $CONFIG --data $DATA --zeroshot auto --workers $WORKERS \
--no-progress $* --out $RUNS/$name $EXTRA" >> "$JOBS"
}
for seed in $SEEDS; do
  for r in $RECIPES; do add "main/$r/seed$seed" --recipe "$(recipe_flag "$r")" --seed "$seed"; done
  for s in $LS_SETTINGS; do
    IFS=: read -r lr r ls <<< "$s"
    [ -n "$ls" ] || { echo "LS_SETTINGS: expected lr:recipe:layer-scale, got '$s'"; exit 1; }
    LS=""; [ "$ls" != none ] && LS="--set model.layer_scale_init=$ls"
    add "ls-lr$lr/$r-ls$ls/seed$seed" --recipe "$(recipe_flag "$r")" "$LS" --lr "$lr" --activations --seed "$seed"
  done
  for o in $SPIKE_OPTIMIZERS; do
    add "spike/$o/seed$seed" --recipe none --optimizer "$o" --lr "$SPIKE_LR" --beta2 "$SPIKE_BETA2" --monitor --seed "$seed"
  done
done
( while sleep 15; do nvidia-smi --query-gpu=utilization.gpu,memory.used --format=csv,noheader; done ) \
  > "$RUNS/gpu.log" 2>/dev/null &
mon=$!
$PY experiments/run_jobs.py "$JOBS" --parallel "$PARALLEL" --budget "$BUDGET" --job-timeout "$JOB_TIMEOUT" \
  --min-start "$MIN_START" --log "$RUNS/jobs.tsv" --logdir "$RUNS/logs"
kill "$mon" 2>/dev/null

# ---- summary (bounded: a hung plot must not cost the packing)
dev=$(head -1 "$OUT/env.txt" | cut -d'|' -f5 | xargs)
timeout 120 $PY experiments/summarize_paper.py "$RUNS" --out "$RUNS/summary" --jobs "$RUNS/jobs.tsv" \
  --title "Issue 30: the paper's claims on Fashion-MNIST, CLIP ${PRESET:-vit-b-32}, $dev" > "$RUNS/summary.log" 2>&1 \
  || echo "summarize failed: see $RUNS/summary.log"
cp "$OUT/env.txt" "$RUNS/env.txt" 2>/dev/null
if [ "$PACK" = 1 ]; then
  for f in results.md loss_curves.png zeroshot.png spike.png; do cp "$RUNS/summary/$f" "$OUT/" 2>/dev/null; done
  tar -czf "$OUT/paper-runs.tar.gz" --exclude=tensorboard -C "$(dirname "$RUNS")" "$(basename "$RUNS")" || echo "packing failed"
fi
echo "run_paper.sh: $(( $(date +%s) - t_start )) s in all"
head -40 "$RUNS/summary/results.md" 2>/dev/null
