"""``lowbit train`` as a user runs it: a subprocess on the real synthetic data, for a handful of steps."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
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
    if recipe == "switchback":  # the recipe swapped the 5 blocks' 4 linears, not the 2 final projections
        assert "recipe switchback (20/22 linears)" in proc.stdout


def test_two_process_ddp_matches_one_process_with_the_same_global_batch(tmp_path: Path) -> None:
    """torchrun with 2 CPU processes (gloo) of batch 8 = one process of batch 16: same samples per step
    (ranks interleave the stream), features all-gathered with their gradient, DDP averages."""
    common = ["--device", "cpu", "--steps", "3", "--warmup", "1", "--zeroshot", "none", "--no-progress", "--threads", "1",
              "--recipe", "none", "--optimizer", "adamw", "--set", "model.vision.layers=1", "--set", "model.text.layers=1"]
    ddp = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "lowbit", "train", "--batch-size", "8", "--out", str(tmp_path / "ddp"), *common]
    one = [sys.executable, "-m", "lowbit", "train", "--batch-size", "16", "--out", str(tmp_path / "one"), *common]
    for cmd in (ddp, one):
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stderr[-3000:]

    def losses(run: str) -> list[float]:
        lines = (tmp_path / run / "metrics.csv").read_text().splitlines()[1:]
        return [float(line.split(",")[1]) for line in lines]

    a, b = losses("ddp"), losses("one")
    assert len(a) == len(b) == 3
    assert a[0] == pytest.approx(b[0], abs=1e-6)  # same samples, same initial weights
    assert a == pytest.approx(b, abs=1e-4)  # same updates (up to reduction order)
    assert json.loads((tmp_path / "ddp" / "summary.json").read_text())["world_size"] == 2
