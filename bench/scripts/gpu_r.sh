#!/usr/bin/env bash
# Device call R (H100, < 10 min; #7): 1) the CUDA tests with the torch.library.Library op registration (kernels,
# functional, nn, models, bench, monitor), 2) the trainer's CUDA-graph mode on the GPU (w768, switchback, 60 steps:
# default compile vs reduce-overhead vs reduce-overhead + --monitor --activations; numerics, not speed: these run
# beside the training jobs), 3) in the foreground, fp8 with and without zero-init layer-scale at peak lr 1e-3
# (bench/scripts/gpu_o.sh's jobs). Small outputs are packed into $OUT/res.tgz.
set -uo pipefail
FINAL=${OUT:-/tmp/lowbit-out}; export OUT=/tmp/res; mkdir -p "$OUT" "$FINAL"
trap 'tar czf "$FINAL/res.tgz" -C "$OUT" --exclude="*.pt" --exclude="*.dcp" --exclude=tensorboard --exclude="events.*" .' EXIT
export PYTHONPATH=$PWD/src PYTHONUNBUFFERED=1 HYPOTHESIS_PROFILE=gpu
( timeout 330 python3 -m pytest -q -p no:cacheprovider tests/kernels tests/functional tests/nn tests/models \
    tests/bench tests/monitor > "$OUT/gpu-tests.txt" 2>&1; echo "rc=$?" >> "$OUT/gpu-tests.txt" ) &
( for m in default reduce-overhead reduce-overhead+monitor; do
    x=""; [ "$m" = reduce-overhead+monitor ] && x="--monitor --activations"
    timeout 150 python3 -m lowbit train --config experiments/accuracy/w768.yaml --recipe switchback --seed 0 \
      --steps 60 --set log_every=1 --compile --compile-mode "${m%%+*}" $x --no-progress --zeroshot none \
      --out "$OUT/graphs/$m" > "$OUT/graphs-$m.log" 2>&1
    echo "$m rc=$?" >> "$OUT/graphs-rc.txt"
  done ) &
LR=1e-3 PARALLEL=7 BUDGET=${BUDGET:-440} JOB_TIMEOUT=360 \
  SETTINGS="fp8-tensorwise:none none:none fp8-tensorwise:0 none:0 fp8-switchback:none fp8-switchback:0 fp8-tensorwise-sim:none" \
  bash experiments/run_fp8.sh
wait
tail -4 "$OUT/gpu-tests.txt"; cat "$OUT/graphs-rc.txt"
