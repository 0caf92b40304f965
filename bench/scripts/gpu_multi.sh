#!/usr/bin/env bash
# Superseded by bench/scripts/multi_gpu.py (issue 19: 1/2/4 GPUs, FSDP2 8-bit all-gather, resume, DDP + CUDA graphs).
# Multi-GPU scaling of `lowbit train` (issue 8): vit-b-32 on synthetic data, 1 GPU vs torchrun 2 GPUs under DDP
# and FSDP2, for the bf16 / switchback (int8) / fp8-switchback recipes. Throughput = images/s over the steps
# after warm-up (summary.json samples_per_s_steady: eval off, checkpoint excluded), peak memory of rank 0.
# Writes $OUT/multi.md (+ every run's directory and log under $OUT/runs). Budget: < 9 minutes.
#
#   OUT=/tmp/out bash bench/scripts/gpu_multi.sh          # on a 2-GPU machine (repo root as cwd)
#   DRY=1 OUT=/tmp/out bash bench/scripts/gpu_multi.sh    # CPU smoke test: tiny preset, gloo, 2 processes
set -uo pipefail
export NCCL_NVLS_ENABLE=0 PYTHONUNBUFFERED=1
OUT=${OUT:?set OUT}
mkdir -p "$OUT/runs"
PY=${PYTHON:-python}
if [[ "${DRY:-0}" == 1 ]]; then
  RECIPES=${RECIPES:-"bf16 switchback-sim fp8-switchback-sim"}
  ARGS=(--preset tiny --device cpu --threads 1 --batch-size 8 --steps 8 --set model.vision.layers=1 --set model.text.layers=1)
  WORKERS1=1; WORKERS2=1; LIMIT=${LIMIT:-120}
else
  RECIPES=${RECIPES:-"bf16 switchback fp8-switchback"}
  STEPS=${STEPS:-30}; BATCH=${BATCH:-128}
  ARGS=(--preset vit-b-32 --batch-size "$BATCH" --steps "$STEPS")
  # synthetic 224-px images render at ~2.3 ms each per worker: 14 workers per rank ~ 6000 img/s per GPU
  WORKERS1=${WORKERS1:-14}; WORKERS2=${WORKERS2:-14}; LIMIT=${LIMIT:-80}
fi
COMMON=(--warmup 5 --zeroshot none --no-progress --save-every 0 --log-every 1 --optimizer stableadamw "${ARGS[@]}")
START=$SECONDS
BUDGET=${BUDGET:-500}  # seconds: later runs are skipped beyond this

run() {  # name nproc parallel recipe
  local name=$1 nproc=$2 par=$3 recipe=$4 dir="$OUT/runs/$1"
  if (( SECONDS - START > BUDGET )); then echo "skip $name (budget)"; return; fi
  local t0=$SECONDS
  if [[ $nproc == 1 ]]; then
    timeout -k 10 "$LIMIT" "$PY" -m lowbit train "${COMMON[@]}" --recipe "$recipe" --workers "$WORKERS1" --out "$dir" >"$OUT/runs/$name.log" 2>&1
  else
    timeout -k 10 "$LIMIT" "$PY" -m torch.distributed.run --standalone --nproc_per_node "$nproc" -m lowbit train "${COMMON[@]}" \
      --recipe "$recipe" --parallel "$par" --workers "$WORKERS2" --out "$dir" >"$OUT/runs/$name.log" 2>&1
  fi
  echo "$name: rc $? in $((SECONDS - t0)) s"
}

for recipe in $RECIPES; do
  run "$recipe-1gpu" 1 none "$recipe"
  run "$recipe-ddp2" 2 ddp "$recipe"
  run "$recipe-fsdp2" 2 fsdp "$recipe"
done

"$PY" - "$OUT" "$RECIPES" <<'PYEOF'
import json, sys
from pathlib import Path
out, recipes = Path(sys.argv[1]), sys.argv[2].split()
def load(name):
    p = out / "runs" / name / "summary.json"
    return json.loads(p.read_text()) if p.is_file() else None
rows, tput = [], {}
meta = None
for r in recipes:
    for mode in ("1gpu", "ddp2", "fsdp2"):
        s = load(f"{r}-{mode}")
        meta = meta or s
        v = s.get("samples_per_s_steady") if s else None
        tput[(r, mode)] = v
        mem = s.get("peak_memory_gb") if s else None
        eff = ""
        if mode != "1gpu" and v and tput.get((r, "1gpu")):
            eff = f"{100 * v / (2 * tput[(r, '1gpu')]):.1f}%"
        rows.append(f"| {r} | {mode} | {s['global_batch'] if s else '-'} | {f'{v:.0f}' if v else 'failed'} | "
                    f"{f'{mem:.1f}' if mem is not None else '-'} | {eff} |")
lines = ["# Multi-GPU scaling (`bench/scripts/gpu_multi.sh`)", ""]
if meta:
    c = meta["config"]
    lines += [f"{meta['device']} | torch {meta['versions']['torch']} | triton {meta['versions']['triton']} | "
              f"{c['preset']} | batch {c['batch_size']} per GPU | {c['steps']} steps (first 5 excluded) | "
              f"{meta['precision']} | data {c['data']} with {c['workers']} workers per rank", ""]
lines += ["Scaling efficiency = 2-GPU images/s / (2 x 1-GPU images/s); peak memory: rank 0, max allocated.", "",
          "| recipe | mode | global batch | images/s | peak mem (GiB) | scaling efficiency |", "|---|---|---:|---:|---:|---:|", *rows, ""]
base = recipes[0]
lines += [f"Speed-up over {base} (images/s ratio, same mode):", "", "| recipe | 1gpu | ddp2 | fsdp2 |", "|---|---:|---:|---:|"]
for r in recipes[1:]:
    cells = []
    for mode in ("1gpu", "ddp2", "fsdp2"):
        a, b = tput.get((r, mode)), tput.get((base, mode))
        cells.append(f"{a / b:.2f}x" if a and b else "-")
    lines.append(f"| {r} | " + " | ".join(cells) + " |")
lines += ["", "Data: if images/s is near workers x ~430 img/s per rank, the synthetic renderer is the bottleneck "
          "(see each run's log / metrics.csv)."]
(out / "multi.md").write_text("\n".join(lines) + "\n")
print("\n".join(lines))
PYEOF
echo "total $((SECONDS - START)) s"
