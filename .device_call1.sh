export PYTHONPATH=src
nvidia-smi --query-gpu=name --format=csv,noheader
NCU_LAUNCHES=1 SWEEP_BUDGET=30 python3 bench/run.py run producer-sweep --out $OUT/r > $OUT/sweep.log 2>&1; echo rc=$?
grep -E "^[{].*(GELU|LN)" $OUT/r/logs/producer-sweep.log | python3 -c "
import sys, json
for l in sys.stdin:
    r = json.loads(l); print(r['pass'][:6], r.get('ms', r.get('error', r.get('skipped'))), round(r.get('of_copy', 0), 2), r.get('correct',''), r['config'][:110])"
find $OUT -name ncu.txt -exec grep -E "^###|Duration|DRAM Throughput|Achieved Occupancy|Registers Per|Issue Slots Busy|No Eligible|Theoretical Occ|Block Limit Reg|Warp Cycles Per Issued" {} +
python3 bench/run.py run model-open-clip-vit-h-14-cudagraphs-prefetch --out $OUT/m > $OUT/run.log 2>&1; echo rc=$?
tail -3 $OUT/run.log
grep -E "ms/step" $OUT/m/logs/*.log | tail -6
