"""``torchrun`` with 2 CPU processes (gloo) under DDP and FSDP2 against one process with the same global batch:
loss trajectories, local loss, gather without gradient, gradient accumulation, and resume across world sizes
(single-file and DCP checkpoints). Subprocesses on the real synthetic data, tiny model, zero-shot off.

Tolerance: |Δloss| <= 1e-5 on every step (fp32; only reduction orders differ: observed <= 5e-7)."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

TOL = 1e-5
STEPS = 4
COMMON = ["--device", "cpu", "--steps", str(STEPS), "--warmup", "1", "--zeroshot", "none", "--no-progress", "--threads", "1",
          "--recipe", "none", "--optimizer", "stableadamw", "--lr", "3e-3",
          "--set", "model.vision.layers=1", "--set", "model.text.layers=1"]

pytestmark = pytest.mark.skipif(
    not (torch.distributed.is_available() and torch.distributed.is_gloo_available()), reason="needs torch.distributed with gloo"
)


def _run(out: Path, *args: str, nproc: int = 1) -> None:
    launcher = ([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(nproc)]
                if nproc > 1 else [sys.executable])
    cmd = [*launcher, "-m", "lowbit", "train", *COMMON, "--out", str(out), *args]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]


def _losses(run: Path) -> list[float]:
    with (run / "metrics.csv").open() as f:
        return [float(r["loss"]) for r in csv.DictReader(f)]


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> list[float]:
    """One process, batch 16: the trajectory every configuration below must follow."""
    out = tmp_path_factory.mktemp("ref") / "one"
    _run(out, "--batch-size", "16")
    losses = _losses(out)
    assert len(losses) == STEPS
    return losses


def test_fsdp_matches_one_process(tmp_path: Path, reference: list[float]) -> None:
    """FSDP2, 2 ranks x 8, StableAdamW on DTensor shards (RMS over whole tensors), no gradient on the gather."""
    _run(tmp_path / "fsdp", "--batch-size", "8", "--parallel", "fsdp", "--no-gather-with-grad", nproc=2)
    assert _losses(tmp_path / "fsdp") == pytest.approx(reference, abs=TOL)
    summary = json.loads((tmp_path / "fsdp" / "summary.json").read_text())
    assert (summary["world_size"], summary["parallel"], summary["global_batch"]) == (2, "fsdp", 16)
    assert (tmp_path / "fsdp" / "checkpoint.dcp" / ".metadata").is_file()
    assert not (tmp_path / "fsdp" / "checkpoint.pt").exists()
    assert not list(tmp_path.joinpath("fsdp").glob(".checkpoint.dcp.*"))  # the temporary directory was renamed


def test_ddp_local_loss_with_accumulation_matches_one_process(tmp_path: Path, reference: list[float]) -> None:
    """DDP, 2 ranks x 4 samples x 2 micro-batches, local loss: the same global batch of 16 and the same loss."""
    _run(tmp_path / "ddp", "--batch-size", "4", "--accum-steps", "2", "--local-loss", nproc=2)
    assert _losses(tmp_path / "ddp") == pytest.approx(reference, abs=TOL)
    ckpt = torch.load(tmp_path / "ddp" / "checkpoint.pt", weights_only=True)
    assert (ckpt["world_size"], ckpt["data_position"], ckpt["samples_seen"]) == (2, STEPS * 8, STEPS * 16)


def test_resume_across_world_sizes(tmp_path: Path, reference: list[float]) -> None:
    """1 process -> 2 (FSDP, from checkpoint.pt) -> 2 (FSDP, from checkpoint.dcp) -> 1 process (from the DCP
    checkpoint), one step each after the first: the run follows the uninterrupted trajectory. The per-process
    batch is rescaled to keep the global batch when only --resume is given."""
    run = tmp_path / "run"
    _run(run, "--batch-size", "16", "--stop-at", "1")
    assert (run / "checkpoint.pt").is_file()
    resume = ["--resume", str(run), "--no-progress", "--threads", "1"]
    for stop, nproc in ((2, 2), (3, 2), (4, 1)):
        launcher = ([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(nproc)]
                    if nproc > 1 else [sys.executable])
        args = [*launcher, "-m", "lowbit", "train", *resume, "--stop-at", str(stop)]
        if nproc > 1:
            args += ["--parallel", "fsdp"]
        proc = subprocess.run(args, capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stderr[-4000:]
        has_dcp = (run / "checkpoint.dcp").is_dir()
        assert has_dcp == (nproc > 1) and (run / "checkpoint.pt").is_file() == (nproc == 1)  # one format at a time
    assert _losses(run) == pytest.approx(reference, abs=TOL)
    summary = json.loads((run / "summary.json").read_text())
    assert summary["step"] == STEPS and summary["config"]["batch_size"] == 16 and summary["world_size"] == 1
    ckpt = torch.load(run / "checkpoint.pt", weights_only=True)
    assert ckpt["samples_seen"] == STEPS * 16
