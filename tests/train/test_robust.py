"""Nothing lost, nothing silent: a reused --out, Ctrl-C / SIGTERM, damaged checkpoints, unusable paths, a full
disk, bad YAML; every error one line (a traceback with --debug)."""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from train_fakes import SMALL, TRAIN_CLI, cli_env, torchrun_ranks

from lowbit.cli.main import main
from lowbit.train import TrainConfig, load_checkpoint, save_checkpoint, train
from lowbit.train.checkpoint import CheckpointError
from lowbit.train.errors import RunExistsError
from lowbit.train.signals import Interrupt


def _cfg(tmp_path: Path, name: str = "run", **kw: object) -> TrainConfig:
    return TrainConfig.from_dict({**SMALL, "out": str(tmp_path / name), "zeroshot": "none", **kw})


def _rows(run: Path) -> list[int]:
    return [int(line.split(",")[0]) for line in (run / "metrics.csv").read_text().splitlines()[1:]]


# ---------------------------------------------------------------------------------------------- --out reuse
def test_a_second_run_into_the_same_out_is_refused_and_touches_nothing(
    tmp_path: Path, fake_data: SimpleNamespace, capsys: pytest.CaptureFixture[str]
) -> None:
    run = tmp_path / "run"
    train(_cfg(tmp_path, steps=4))
    before = {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()}
    with pytest.raises(RunExistsError, match=r"--resume .*--overwrite"):
        train(_cfg(tmp_path, steps=2))
    assert {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()} == before
    # the CLI: one line naming both ways out, exit code 2
    rc = main(["train", "--out", str(run), "--data", "fake", "--steps", "2", "--no-progress"])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1 and f"--resume {run}" in err and "--overwrite" in err
    assert {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()} == before
    # --overwrite replaces the old run on purpose: its metrics do not continue the old ones
    train(_cfg(tmp_path, steps=2, overwrite=True))
    assert _rows(run) == [1, 2] and load_checkpoint(run)["step"] == 2
    assert not (run / "checkpoint.prev.pt").exists()
    with pytest.raises(ValueError, match="would delete the run being resumed"):
        train(_cfg(tmp_path, steps=4, overwrite=True, resume=str(run)))


def test_unknown_names_leave_no_folder_and_short_runs_warn(
    tmp_path: Path, fake_data: SimpleNamespace, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(ValueError, match="unknown model preset 'nope'"):
        train(_cfg(tmp_path, "a", preset="nope"))
    with pytest.raises(ValueError, match="unknown recipe 'int3'"):
        train(_cfg(tmp_path, "b", recipe="int3"))
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()
    train(_cfg(tmp_path, "c", steps=1, warmup=5, save_every=0))
    assert "lowbit train: warning: steps 1 < warmup 5" in capsys.readouterr().err  # warnings: stderr


# ---------------------------------------------------------------------------------------------- signals
def test_a_second_signal_aborts_at_once() -> None:
    with Interrupt() as interrupt:
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(0.01)  # the handler runs between bytecodes of the main thread
        assert interrupt.signum == signal.SIGTERM
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(0.01)
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # restored


@pytest.mark.parametrize(("sig", "code", "workers"), [(signal.SIGINT, 130, "1"), (signal.SIGTERM, 143, "0")])
def test_a_signal_saves_and_the_resumed_run_is_exact(tmp_path: Path, sig: signal.Signals, code: int, workers: str) -> None:
    """Interrupted mid-run (the schedule is 5000 steps long), the run saves its step; resumed to 3 steps later it
    holds bit for bit the weights of a run never interrupted. SIGINT goes to the whole process group, as a
    terminal's Ctrl-C does (DataLoader worker included)."""
    run = tmp_path / "run"
    proc = subprocess.Popen([*TRAIN_CLI, "--workers", workers, "--out", str(run)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=cli_env(), start_new_session=True)
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        if (run / "metrics.csv").is_file() and len((run / "metrics.csv").read_text().splitlines()) > 3:
            break
        time.sleep(0.02)
    os.killpg(proc.pid, sig) if sig == signal.SIGINT else proc.send_signal(sig)
    _out, err = proc.communicate(timeout=120)
    assert proc.returncode == code, err[-3000:]
    summary = json.loads((run / "summary.json").read_text())
    n = summary["step"]
    assert summary["status"] == "interrupted" and summary["signal"] == sig.name and 3 <= n < 5000
    assert f"{sig.name}: interrupted at step {n}; resume with: lowbit train --resume {run}" in err
    assert "Traceback" not in err
    assert torch.load(run / "checkpoint.pt", weights_only=True)["step"] == n

    resumed = subprocess.run([sys.executable, "-m", "lowbit", "train", "--resume", str(run), "--stop-at", str(n + 3),
                              "--no-progress", "--threads", "1"], capture_output=True, text=True, env=cli_env(), timeout=120)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"resumed from step {n}" in resumed.stdout
    ref = subprocess.run([*TRAIN_CLI, "--workers", workers, "--out", str(tmp_path / "ref"), "--stop-at", str(n + 3)], capture_output=True, text=True,
                         env=cli_env(), timeout=120)
    assert ref.returncode == 0, ref.stderr[-3000:]
    a, b = load_checkpoint(run), load_checkpoint(tmp_path / "ref")
    assert a["step"] == b["step"] == n + 3
    for k, v in b["model"].items():
        assert torch.equal(a["model"][k], v), k
    assert _rows(run) == list(range(1, n + 4))


# ---------------------------------------------------------------------------------------------- checkpoints
def _damage(path: Path, how: str) -> None:
    data = path.read_bytes()
    if how == "empty":
        path.write_bytes(b"")
    elif how == "truncated":
        path.write_bytes(data[: len(data) // 2])
    elif how == "garbage":
        path.write_bytes(os.urandom(len(data)))
    else:  # a flipped bit inside the largest tensor's bytes: the zip still reads, the content is wrong
        big = max(torch.load(path, weights_only=True)["model"].values(), key=lambda t: t.numel())
        needle = big.numpy().tobytes()[:64]
        at = data.index(needle) + 17
        path.write_bytes(data[:at] + bytes([data[at] ^ 0x10]) + data[at + 1 :])


@pytest.mark.parametrize(("how", "message"), [
    ("empty", "is empty"), ("truncated", "truncated or corrupt"), ("garbage", "truncated or corrupt"),
    ("bitflip", "SHA-256"),
])
def test_damaged_checkpoints_are_named_and_the_previous_one_is_used(
    tmp_path: Path, fake_data: SimpleNamespace, capsys: pytest.CaptureFixture[str], how: str, message: str
) -> None:
    run = tmp_path / "run"
    train(_cfg(tmp_path, steps=6, stop_at=4, save_every=2))  # checkpoint.pt: step 4, checkpoint.prev.pt: step 2
    assert torch.load(run / "checkpoint.prev.pt", weights_only=True)["step"] == 2
    _damage(run / "checkpoint.pt", how)
    with pytest.raises(CheckpointError, match=message):
        load_checkpoint(run / "checkpoint.pt")
    with pytest.warns(UserWarning, match=r"previous checkpoint .*step 2"):
        assert load_checkpoint(run)["step"] == 2
    _damage(run / "checkpoint.prev.pt", "truncated")
    rc = main(["train", "--resume", str(run), "--no-progress"])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1 and "checkpoint.pt" in err and message in err, err
    assert "previous one is damaged too" in err


def test_resume_falls_back_to_the_previous_checkpoint(tmp_path: Path, fake_data: SimpleNamespace) -> None:
    run = tmp_path / "run"
    train(_cfg(tmp_path, "full", steps=6, save_every=0))
    train(_cfg(tmp_path, steps=6, stop_at=4, save_every=2))
    _damage(run / "checkpoint.pt", "bitflip")
    with pytest.warns(UserWarning, match="previous checkpoint"):
        train(_cfg(tmp_path, steps=6, resume=str(run)))
    a, b = load_checkpoint(tmp_path / "full"), load_checkpoint(run)
    assert all(torch.equal(v, b["model"][k]) for k, v in a["model"].items())
    assert _rows(run) == [1, 2, 3, 4, 5, 6]
    assert load_checkpoint(run / "checkpoint.prev.pt")["step"] == 2  # the good one, not the damaged one


def test_a_full_disk_is_named_and_keeps_the_old_checkpoint(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "checkpoint.pt"
    save_checkpoint(path, {"x": torch.ones(3)})
    before = path.read_bytes()

    def full(*a: object, **k: object) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(torch, "save", full)
    with pytest.raises(OSError, match="no space left on the device.*checkpoint.pt") as e:
        save_checkpoint(path, {"x": torch.zeros(3)})
    assert e.value.errno == errno.ENOSPC
    # torch's own words for a failed write, on a disk with nothing free
    monkeypatch.setattr(torch, "save", lambda *a, **k: (_ for _ in ()).throw(
        RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 64 vs 0")))
    monkeypatch.setattr("shutil.disk_usage", lambda p: SimpleNamespace(total=1 << 30, used=1 << 30, free=0))
    with pytest.raises(OSError, match="no space left"):
        save_checkpoint(path, {"x": torch.zeros(3)})
    assert path.read_bytes() == before and torch.load(path, weights_only=True)["x"].tolist() == [1.0, 1.0, 1.0]
    assert [p.name for p in tmp_path.iterdir()] == ["checkpoint.pt"]


def test_a_crash_between_the_two_renames_resumes_from_the_previous_checkpoint(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``save_checkpoint`` moves ``checkpoint.pt`` to ``checkpoint.prev.pt`` only once the new file is complete, then
    renames the new one into place: a failure between the two leaves the previous checkpoint to resume from."""
    from lowbit.train.checkpoint import resolve_checkpoint

    save_checkpoint(tmp_path / "checkpoint.pt", {"step": 1})
    save_checkpoint(tmp_path / "checkpoint.pt", {"step": 2})
    assert load_checkpoint(tmp_path / "checkpoint.prev.pt")["step"] == 1
    real = os.replace

    def second_fails(src: object, dst: object) -> None:
        if str(dst).endswith("checkpoint.pt"):  # the new file into place: the process dies here
            raise KeyboardInterrupt
        real(src, dst)

    monkeypatch.setattr(os, "replace", second_fails)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(tmp_path / "checkpoint.pt", {"step": 3})
    monkeypatch.undo()
    assert [p.name for p in tmp_path.iterdir()] == ["checkpoint.prev.pt"]  # the temporary file removed
    assert resolve_checkpoint(tmp_path).name == "checkpoint.prev.pt" and load_checkpoint(tmp_path)["step"] == 2
    save_checkpoint(tmp_path / "checkpoint.pt", {"step": 3}, keep_previous=False)
    assert load_checkpoint(tmp_path)["step"] == 3 and load_checkpoint(tmp_path / "checkpoint.prev.pt")["step"] == 2


def test_a_full_disk_during_training_is_one_line(
    tmp_path: Path, fake_data: SimpleNamespace, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(torch, "save", lambda *a, **k: (_ for _ in ()).throw(OSError(errno.ENOSPC, "No space left on device")))
    rc = main(["train", "--data", "fake", "--zeroshot", "none", "--steps", "2", "--warmup", "1", "--batch-size", "4", "--recipe", "none",
               "--optimizer", "adamw", "--set", "model.vision.layers=1", "--set", "model.text.layers=1",
               "--no-progress", "--out", str(tmp_path / "run")])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1 and "no space left on the device" in err, err


# ---------------------------------------------------------------------------------------------- paths, YAML, --debug
def test_unusable_out_and_bad_yaml_are_one_line(
    tmp_path: Path, fake_data: SimpleNamespace, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    common = ["--data", "fake", "--zeroshot", "none", "--steps", "1", "--no-progress", "--recipe", "none"]
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    assert main(["train", *common, "--out", str(blocker / "run")]) == 2  # a path under a regular file
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "cannot use run directory" in err and "not a directory" in err, err

    def denied(self: Path, *a: object, **k: object) -> None:  # tests run as root: chmod would not stop them
        raise PermissionError(errno.EACCES, "Permission denied", str(self))

    monkeypatch.setattr(Path, "mkdir", denied)
    assert main(["train", *common, "--out", str(tmp_path / "ro" / "run")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Permission denied" in err and "ro/run" in err, err
    monkeypatch.undo()

    bad = tmp_path / "bad.yaml"
    bad.write_text("steps: 3\nlr: [1e-3\nmodel: {a: 1}\n")
    assert main(["train", "--config", str(bad)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "bad.yaml" in err and "not valid YAML at line" in err, err

    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "checkpoint.pt").write_bytes(b"")
    with pytest.raises(CheckpointError):  # --debug: the exception itself, traceback and all
        main(["train", "--debug", "--resume", str(tmp_path / "d")])
    monkeypatch.setenv("LOWBIT_DEBUG", "1")
    with pytest.raises(CheckpointError):
        main(["train", "--resume", str(tmp_path / "d")])


@pytest.mark.skipif(not Path("/proc/self/stat").is_file() or not torch.distributed.is_gloo_available(),
                    reason="needs /proc and gloo")
def test_under_torchrun_every_rank_stops_at_the_same_step(tmp_path: Path) -> None:
    """SIGTERM to rank 1 only (a pre-empted process): both ranks stop after the same step (one all_reduce per step
    carries the flag), rank 0 saves that step and says how to resume."""
    run = tmp_path / "run"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", *TRAIN_CLI[1:],
           "--out", str(run)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=cli_env())
    deadline, worker = time.time() + 180, None
    while time.time() < deadline and proc.poll() is None and worker is None:
        if (run / "metrics.csv").is_file() and len((run / "metrics.csv").read_text().splitlines()) > 3:
            worker = torchrun_ranks(proc.pid).get(1)
        time.sleep(0.05)
    assert worker is not None, "rank 1 not found"
    os.kill(worker, signal.SIGTERM)
    _, err = proc.communicate(timeout=180)
    assert proc.returncode != 0  # torchrun reports its workers' exit code 143
    summary = json.loads((run / "summary.json").read_text())
    n = summary["step"]
    assert summary["status"] == "interrupted" and summary["world_size"] == 2, err[-3000:]
    assert f"SIGTERM: interrupted at step {n}; resume with: lowbit train --resume {run}" in err
    ckpt = torch.load(run / "checkpoint.pt", weights_only=True)
    assert ckpt["step"] == n and ckpt["samples_seen"] == n * 16
    assert _rows(run) == list(range(1, n + 1))
