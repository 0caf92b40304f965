"""``lowbit train`` under ``torchrun`` (2 CPU processes, gloo, FSDP2): the paths the multi-GPU note left untested.

* 8-bit weight all-gather (default for tensor-wise recipes): the same metrics, bit for bit, as
  ``--no-fsdp-8bit-allgather`` (losses, gradient norms and the RMS monitor's columns), eager and compiled.
* The RMS monitor under FSDP (``--set monitor=true``, StableAdamW: the RMS of each sharded tensor is reduced over
  its shards): finite ``rms/<param>`` columns for every parameter, equal to one process's (|Δ| <= 1e-4 relative;
  fp32, only reduction orders differ) at the same global batch.
* A crash between the two renames of a DCP save (``checkpoint.dcp`` → ``checkpoint.prev.dcp``, then
  ``.checkpoint.dcp.tmp`` → ``checkpoint.dcp``): rank 0 dies after the first (``os.replace`` patched to exit),
  leaving no ``checkpoint.dcp``; ``--resume`` takes ``checkpoint.prev.dcp`` and the run ends on the uninterrupted
  trajectory (|Δloss| <= 1e-5), with the leftovers cleaned up.
"""

from __future__ import annotations

import csv
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch

STEPS = 4
COMMON = ["--device", "cpu", "--steps", str(STEPS), "--warmup", "1", "--zeroshot", "none", "--no-progress", "--threads", "1",
          "--optimizer", "stableadamw", "--lr", "3e-3", "--set", "model.vision.layers=1", "--set", "model.text.layers=1"]
TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]

pytestmark = pytest.mark.skipif(
    not (torch.distributed.is_available() and torch.distributed.is_gloo_available()), reason="needs torch.distributed with gloo"
)

# rank 0 dies between the two renames of the DCP save of step `CRASH_AT` (a hard exit: no cleanup runs)
CRASHER = """
import os, sys
from pathlib import Path
_replace = os.replace
def replace(src, dst):
    if Path(src).name == ".checkpoint.dcp.tmp":
        os._exit(17)
    return _replace(src, dst)
os.replace = replace
sys.argv[0] = "lowbit"
from lowbit.cli.main import main
sys.exit(main())
"""


def _train(*args: str, nproc: int = 2, launcher: list[str] | None = None, check: bool = True) -> subprocess.CompletedProcess:
    if launcher is None:
        launcher = [*TORCHRUN, "-m", "lowbit"] if nproc > 1 else [sys.executable, "-m", "lowbit"]
    proc = subprocess.run([*launcher, "train", *args], capture_output=True, text=True, timeout=300)
    if check:
        assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    return proc


TIMING = {"samples_per_s", "mfu", "step_s", "data_wait_s", "data_wait_frac"}  # metrics.csv's clock columns


def _rows(run: Path) -> list[dict[str, float]]:
    with (run / "metrics.csv").open() as f:
        return [{k: float(v) for k, v in r.items() if v not in ("", None)} for r in csv.DictReader(f)]


@pytest.fixture(scope="module")
def one_process(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("one") / "run"
    _train(*COMMON, "--recipe", "none", "--batch-size", "16", "--monitor", "--out", str(out), nproc=1)
    return out


@pytest.fixture(scope="module")
def fsdp_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("fsdp") / "run"
    _train(*COMMON, "--recipe", "none", "--batch-size", "8", "--parallel", "fsdp", "--set", "monitor=true", "--out", str(out))
    return out


def test_8bit_allgather_trainer_matches_16bit_gather(tmp_path: Path) -> None:
    runs = {}
    for name, extra in (("eight", []), ("sixteen", ["--no-fsdp-8bit-allgather"])):
        out = tmp_path / name
        proc = _train(*COMMON, "--recipe", "switchback", "--batch-size", "8", "--parallel", "fsdp", "--set", "monitor=true",
                      "--out", str(out), *extra)
        runs[name] = _rows(out)
        assert ("8-bit all-gather: 8 linear weight(s)" in proc.stdout) == (name == "eight"), proc.stdout
    drop = TIMING
    assert [{k: v for k, v in r.items() if k not in drop} for r in runs["eight"]] == \
        [{k: v for k, v in r.items() if k not in drop} for r in runs["sixteen"]]
    assert len(runs["eight"]) == STEPS and any(k.startswith("rms/") for k in runs["eight"][0])


@pytest.mark.slow
def test_8bit_allgather_compiled_matches_16bit_gather(tmp_path: Path) -> None:
    """``--compile``: the compiled blocks take the gathered codes (a tensor subclass input); same numbers."""
    runs = {}
    for name, extra in (("eight", []), ("sixteen", ["--no-fsdp-8bit-allgather"])):
        out = tmp_path / name
        _train(*COMMON, "--recipe", "fp8-switchback", "--batch-size", "8", "--parallel", "fsdp", "--steps", "2",
               "--compile", "--out", str(out), *extra)
        runs[name] = [{k: v for k, v in r.items() if k not in TIMING} for r in _rows(out)]
    assert runs["eight"] == runs["sixteen"] and len(runs["eight"]) == 2


def test_rowwise_recipe_keeps_16bit_gather(tmp_path: Path) -> None:
    proc = _train(*COMMON, "--recipe", "switchback-q", "--batch-size", "8", "--steps", "1", "--parallel", "fsdp",
                  "--out", str(tmp_path / "q"))
    assert "fsdp all-gather in 16 bits: recipe 'switchback-q' scales W per row/block" in proc.stdout


def test_rms_monitor_under_fsdp_matches_one_process(one_process: Path, fsdp_run: Path) -> None:
    one, fsdp = _rows(one_process), _rows(fsdp_run)
    assert len(one) == len(fsdp) == STEPS
    names = {k for k in one[0] if k.startswith("rms/")}
    assert names and names == {k for k in fsdp[0] if k.startswith("rms/")}
    assert any("visual.conv1" in n or "patch" in n for n in names), sorted(names)[:5]
    for a, b in zip(one, fsdp):
        for k in names | {"rms_max", "rms_mean"}:
            assert math.isfinite(b[k]), k
            assert b[k] == pytest.approx(a[k], rel=1e-4, abs=1e-6), (k, a[k], b[k])


def test_resume_after_crash_between_renames_uses_old_checkpoint(tmp_path: Path, fsdp_run: Path) -> None:
    run = tmp_path / "run"
    args = [*COMMON, "--recipe", "none", "--batch-size", "8", "--parallel", "fsdp", "--set", "monitor=true", "--out", str(run)]
    _train(*args, "--stop-at", "2")
    assert (run / "checkpoint.dcp").is_dir()
    crashed = _train(*args[:-2], "--resume", str(run), "--stop-at", "3", check=False,
                     launcher=[*TORCHRUN, str(_crasher(tmp_path))])
    assert crashed.returncode != 0
    # the crash left the step-2 checkpoint renamed away and the complete step-3 one not yet in place
    assert not (run / "checkpoint.dcp").exists()
    assert (run / "checkpoint.prev.dcp" / ".metadata").is_file() and (run / ".checkpoint.dcp.tmp").is_dir()
    from lowbit.train.checkpoint import load_checkpoint, resolve_checkpoint

    assert resolve_checkpoint(run).name == "checkpoint.prev.dcp" and load_checkpoint(run)["step"] == 2
    _train("--resume", str(run), "--parallel", "fsdp", "--no-progress", "--threads", "1")
    got, want = _rows(run), _rows(fsdp_run)
    assert [r["step"] for r in got] == [1, 2, 3, 4]
    assert [r["loss"] for r in got] == pytest.approx([r["loss"] for r in want], abs=1e-5)
    assert (run / "checkpoint.dcp" / ".metadata").is_file() and load_checkpoint(run)["step"] == STEPS
    assert not (run / ".checkpoint.dcp.old").exists() and not (run / ".checkpoint.dcp.tmp").exists()
    assert load_checkpoint(run / "checkpoint.prev.dcp")["step"] == 2  # the one resumed from, kept as the previous


def _crasher(tmp_path: Path) -> Path:
    path = tmp_path / "crash_between_renames.py"
    path.write_text(CRASHER)
    return path
