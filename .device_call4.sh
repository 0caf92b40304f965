export PYTHONPATH=src
nvidia-smi --query-gpu=name --format=csv,noheader
python3 bench/run.py run model-profile-open-clip-vit-h-14-fused --out $OUT/r
grep -n "ms/step\|^| " $OUT/r/logs/*.log | head -80
