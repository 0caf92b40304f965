#!/usr/bin/env bash
# The producers' launch sweep, then Nsight Compute on three launches (the first kernel's pick, and PREFETCH runs
# forward and backward): bash bench/probes/producer_sweep.sh DIR  ->  DIR/r/producer_sweep.md|json, DIR/r/ncu.txt
set -u
DIR=$1
mkdir -p "$DIR/r"
export PYTHONPATH=src
python3 bench/probes/producer_sweep.py --out "$DIR/r" --budget ${SWEEP_BUDGET:-120}
B='{"BLOCK_M": 1, "PIECES": true, "num_warps": 4}'
P='{"BLOCK_M": 1, "PIECES": true, "num_warps": 4, "MAX_PROGRAMS": 1056, "PREFETCH": true}'
: > "$DIR/r/ncu.txt"
n=0
for spec in "forward, PREFETCH runs|$P|" "backward, PREFETCH runs|$P|--backward" "forward, a row each|$B|"; do
  n=$((n + 1)); [ "$n" -gt "${NCU_LAUNCHES:-3}" ] && break
  IFS='|' read -r name cfg flag <<< "$spec"
  echo "### $name: $cfg" >> "$DIR/r/ncu.txt"
  # shellcheck disable=SC2086
  timeout 45 ncu --clock-control none --section SpeedOfLight --section Occupancy --section WarpStateStats \
    --section LaunchStats --section SchedulerStats -k regex:_act_quantize --launch-skip 2 --launch-count 1 \
    python3 bench/probes/producer_sweep.py --one "$cfg" $flag >> "$DIR/r/ncu.txt" 2>&1
done
