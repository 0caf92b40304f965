"""``lowbit train`` as a user runs it: a subprocess on the real synthetic data, for a handful of steps."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import torch


def _available(stmt: str) -> bool:
    try:
        exec(stmt, {})
    except ImportError:
        return False
    return True


def test_lowbit_train_subprocess_on_synthetic(tmp_path: Path) -> None:
    recipe = "switchback" if _available("from lowbit.nn import convert") else "none"
    optimizer = "stableadamw" if _available("from lowbit.optim import StableAdamW") else "adamw"
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "lowbit", "train", "--steps", "3", "--batch-size", "8", "--warmup", "1",
           "--recipe", recipe, "--optimizer", optimizer, "--zeroshot-limit", "16", "--out", str(out), "--no-progress"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "zero-shot top-1 on shape" in proc.stdout and "chance 12.5%" in proc.stdout
    summary = json.loads((out / "summary.json").read_text())
    assert summary["step"] == 3 and summary["recipe"] == recipe and summary["optimizer"] == optimizer
    assert set(summary["zeroshot"]) >= {"shape", "colour"}
    ckpt = torch.load(out / "checkpoint.pt", weights_only=True)
    assert ckpt["step"] == 3 and ckpt["data_position"] == 24
    if recipe == "switchback":  # the recipe swapped the blocks' linears, but not the final projections
        converted = [k for k in ckpt["model"] if k.endswith("attn.qkv.weight")]
        assert converted and "visual.proj.weight" in ckpt["model"]
