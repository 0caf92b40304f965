export PYTHONPATH=src
python3 bench/run.py run step-vit-h-14-prefetch-graphs --out $OUT/r > $OUT/run.log 2>&1; echo rc=$?
tail -5 $OUT/run.log
grep -E "ms/step|error|Error" $OUT/r/logs/*.log | tail -12
cat $OUT/r/*.md 2>/dev/null | tail -8
