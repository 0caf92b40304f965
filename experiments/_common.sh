# Sourced by the experiment runners: environment, optional wheels, preflight, TrainConfig feature checks.
# Expects OUT to be set (the runner sets a default). Runs from the repository root.
set -uo pipefail
mkdir -p "$OUT"
if compgen -G ".whl/*.whl" > /dev/null && [ ! -f /tmp/site/.lowbit-wheels ]; then  # wheels carried in .whl/ (no internet)
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .whl/*.whl \
    > "$OUT/pip.log" 2>&1 && touch /tmp/site/.lowbit-wheels || echo "wheel install failed (see $OUT/pip.log)"
fi
export PYTHONPATH=$PWD/src:/tmp/site${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
export LOWBIT_AUTOTUNE=${LOWBIT_AUTOTUNE:-0}  # one fixed kernel config: no per-process autotuning (same numerics)
PY=${PY:-python3}
LOWBIT="$PY -m lowbit"

# preflight: the trainer's imports (tensorboard, tqdm, yaml), the versions, the device
$PY - <<'PYEOF' 2>&1 | grep -v -i warn | tee "$OUT/env.txt"
import platform, torch
import lowbit, lowbit.train, lowbit.data  # noqa: F401  (fails here, not in every job, if something is missing)
from torch.utils.tensorboard import SummaryWriter  # noqa: F401
try:
    import triton; tv = triton.__version__
except Exception: tv = "none"
dev = torch.cuda.get_device_name() if torch.cuda.is_available() else f"cpu ({torch.get_num_threads()} threads)"
print(f"lowbit {lowbit.__version__} | torch {torch.__version__} | triton {tv} | python {platform.python_version()} | {dev}")
PYEOF
git log -1 --format='commit %H %s' >> "$OUT/env.txt" 2>/dev/null || true

# has_option NAME: true when this tree's TrainConfig has the field (e.g. `activations`, once wired)
has_option() {
  $PY -c "import dataclasses, sys; from lowbit.train.config import TrainConfig; \
sys.exit(0 if '$1' in {f.name for f in dataclasses.fields(TrainConfig)} else 1)" 2>/dev/null
}

# train_flags: the `lowbit train` flags of the size knobs every runner takes from the environment (PRESET, STEPS,
# BATCH, WARMUP, ZEROSHOT_LIMIT, DEVICE; one thread per run on the CPU), for its EXTRA
train_flags() {
  local f=""
  [ -n "${PRESET:-}" ] && f="$f --preset $PRESET"
  [ -n "${STEPS:-}" ] && f="$f --steps $STEPS"
  [ -n "${BATCH:-}" ] && f="$f --batch-size $BATCH"
  [ -n "${WARMUP:-}" ] && f="$f --warmup $WARMUP"
  [ -n "${ZEROSHOT_LIMIT:-}" ] && f="$f --zeroshot-limit $ZEROSHOT_LIMIT"
  [ -n "${DEVICE:-}" ] && f="$f --device $DEVICE"
  [ "${DEVICE:-}" = cpu ] && f="$f --threads 1"
  echo "$f"
}
