set -x
export PYTHONPATH=src
mkdir -p $OUT/r
nvidia-smi --query-gpu=name,clocks.sm,clocks.max.sm --format=csv
python3 bench/probes/producer_sweep.py --out $OUT/r --budget 170 > $OUT/r/sweep.log 2>&1
tail -3 $OUT/r/sweep.log
B='{"BLOCK_M": 1, "PIECES": true, "num_warps": 4}'
P='{"BLOCK_M": 1, "PIECES": true, "num_warps": 4, "MAX_PROGRAMS": 1056, "PREFETCH": true}'
for spec in "fwd-base:$B:" "fwd-prefetch:$P:" "bwd-prefetch:$P:--backward" ; do
  name=${spec%%:*}; rest=${spec#*:}; cfg=${rest%:*}; flag=${rest##*:}
  timeout 100 ncu --clock-control none --section SpeedOfLight --section Occupancy --section WarpStateStats --section LaunchStats --section SchedulerStats -k regex:_act_quantize --launch-skip 2 --launch-count 1 python3 bench/probes/producer_sweep.py --one "$cfg" $flag > $OUT/r/ncu-$name.txt 2>&1
  grep -E "Duration|Memory Throughput|DRAM Throughput|Achieved Occupancy|Registers|Issue Slots|No Eligible|Theoretical Occ" $OUT/r/ncu-$name.txt | head -12
done
