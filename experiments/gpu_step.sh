#!/usr/bin/env bash
# Issue #7 part 4 — end-to-end training-step throughput on one H100 (`lowbit bench step`), all compiled
# (regional: each transformer block), same batch for every recipe of a preset. See STAGES below for the time:
# every stage has its own `timeout`, and `lowbit bench step` rewrites step.json / step.md after each row,
# so a stage cut short keeps the rows it finished. Most important first (ViT-H is the target).
#
#   OUT=/path/to/out bash experiments/gpu_step.sh
#
# Batch sizes (images per step; fp32 master weights + StableAdamW state = 16 bytes/param, plus the activations
# autograd saves, measured on the meta device in bf16: ViT-B/32 35 MiB, ViT-L/14 256 MiB, ViT-H/14 452 MiB
# per image): ViT-H/14 96 → 15 GiB + 42 GiB; ViT-L/14 128 → 6 GiB + 32 GiB; ViT-B/32 256 → 2 GiB + 9 GiB.
#
# Output: $OUT/step-<stage>/step.{json,md} and $OUT/step-<stage>.log, $OUT/env.txt, $OUT/step-summary.md.
set -uo pipefail
OUT=${OUT:-/tmp/lowbit-out}; mkdir -p "$OUT"
if compgen -G ".whl/*.whl" > /dev/null; then  # torchao anchors, from a wheel carried in .whl/ (no internet)
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .whl/*.whl \
    > "$OUT/pip.log" 2>&1 || echo "torchao wheel install failed (see pip.log); anchors will be missing"
fi
export PYTHONPATH=$PWD/src:/tmp/site PYTHONUNBUFFERED=1
python3 -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__, torch.cuda.get_device_name() if torch.cuda.is_available() else 'no CUDA')
try:
    import torchao; print('torchao', torchao.__version__)
except Exception as e: print('torchao not importable:', e)" 2>&1 | grep -v -i warn | tee "$OUT/env.txt"
nvidia-smi --query-gpu=name,memory.total,clocks.max.sm,power.limit --format=csv >> "$OUT/env.txt" 2>&1

# --cudagraphs: the compiled blocks replay CUDA graphs (without them the Triton launches' CPU cost bounds the
# step: ViT-H fp8-switchback 0.72x without, 0.99x with; bench/results/h100/step-vit-h-14-cudagraphs.md).
B=${STEP_CMD:-"python3 -m lowbit bench step --compile --cudagraphs --steps 8 --warmup 3"}  # STEP_CMD: for a dry run
AO="torchao-float8-tensorwise torchao-float8-rowwise torchao-int8-mixed"
t0=$SECONDS
stage() {  # stage NAME TIMEOUT_S ARGS...
  local name=$1 limit=$2; shift 2
  echo "=== $name (limit ${limit}s, at $((SECONDS - t0))s)"
  timeout "$limit" $B --out "$OUT/step-$name" "$@" > "$OUT/step-$name.log" 2>&1
  echo "    rc=$? after $((SECONDS - t0))s"; grep -E "^\[.*(img/s|ERROR)" "$OUT/step-$name.log" | cut -c1-160
}
# Measured on an H100 (2026-11-23): each row costs 40-60 s (model build, compile, autotune, 10 steps), so the
# stages below need about 15 minutes together: run them in two device calls, e.g. STAGES="vit-h-14" and then
# STAGES="vit-h-14-anchors vit-l-14 vit-b-32 vit-h-14-auto".
STAGES=${STAGES:-"vit-h-14 vit-h-14-anchors vit-l-14 vit-b-32 vit-h-14-auto"}
for s in $STAGES; do case $s in
  # 1. ViT-H/14, the target (switchback >= 1.2x, fp8-switchback >= 1.3x bf16)
  vit-h-14) stage vit-h-14 330 --preset vit-h-14 --batch-size 96 --no-anchors \
      --recipe bf16 switchback fp8-switchback fp8-tensorwise switchback-m ;;
  # 2. torchao's training recipes as anchors at ViT-H/14
  vit-h-14-anchors) stage vit-h-14-anchors 240 --preset vit-h-14 --batch-size 96 --no-anchors --recipe bf16 $AO ;;
  # 3./4. ViT-L/14 and ViT-B/32, lowbit recipes only
  vit-l-14) stage vit-l-14 240 --preset vit-l-14 --batch-size 128 --no-anchors \
      --recipe bf16 switchback fp8-switchback switchback-m fp8-tensorwise ;;
  vit-b-32) stage vit-b-32 280 --preset vit-b-32 --batch-size 256 --no-anchors \
      --recipe bf16 switchback fp8-switchback switchback-m fp8-tensorwise ;;
  # 5. ViT-H/14 with --layers auto: only layers >= 1280 wide converted (the vision tower; the 1024-wide text
  #    tower stays bf16), lowbit.nn.convert's default
  vit-h-14-auto) stage vit-h-14-auto 200 --preset vit-h-14 --batch-size 96 --no-anchors --layers auto \
      --recipe bf16 switchback fp8-switchback fp8-tensorwise ;;
  *) echo "unknown stage $s" ;;
esac; done

{ echo "# lowbit bench step — $(head -1 "$OUT/env.txt")"; echo
  for s in vit-h-14 vit-h-14-anchors vit-h-14-auto vit-l-14 vit-b-32; do
    f="$OUT/step-$s/step.md"; [ -f "$f" ] && { echo "### $s"; tail -n +5 "$f"; echo; }
  done
} > "$OUT/step-summary.md"
cat "$OUT/step-summary.md" | cut -c1-220
echo "total $((SECONDS - t0))s"
