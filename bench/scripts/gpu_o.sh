#!/usr/bin/env bash
# Next device call for #7 (H100, < 10 min): fp8 with and without zero-init layer-scale at the lower peak lr 1e-3
# (at 2e-3 bf16 without layer-scale failed too), 2 seeds, 7 at a time; small outputs packed into $OUT/res.tgz.
set -uo pipefail
FINAL=${OUT:-/tmp/lowbit-out}; export OUT=/tmp/res; mkdir -p "$OUT" "$FINAL"
trap 'tar czf "$FINAL/res.tgz" -C "$OUT" --exclude="*.pt" --exclude="*.dcp" --exclude=tensorboard --exclude="events.*" .' EXIT
export PYTHONPATH=$PWD/src PYTHONUNBUFFERED=1
LR=1e-3 PARALLEL=7 BUDGET=${BUDGET:-480} JOB_TIMEOUT=400 \
  SETTINGS="fp8-tensorwise:none none:none fp8-tensorwise:0 none:0 fp8-switchback:none fp8-switchback:0 fp8-tensorwise-sim:none" \
  bash experiments/run_fp8.sh
