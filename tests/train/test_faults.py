"""Nothing lost under faults (issue 32), with real processes where the fault is a process's: one run per folder
(the lock), logs rewritten atomically under kill -9, temporaries of interrupted saves removed, SIGTERM to every
process of a torchrun job, recorded thread counts."""

from __future__ import annotations

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

from lowbit.train import TrainConfig, train
from lowbit.train.runlock import LOCK_NAME, RunLock, RunLockedError, remove_stale_temps


def _rows(run: Path) -> list[int]:
    return [int(line.split(",")[0]) for line in (run / "metrics.csv").read_text().splitlines()[1:]]


def _wait_rows(run: Path, proc: subprocess.Popen, n: int = 3, timeout: float = 180) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline and proc.poll() is None:
        if (run / "metrics.csv").is_file() and len((run / "metrics.csv").read_text().splitlines()) > n:
            return
        time.sleep(0.05)
    raise AssertionError(f"no metrics rows: {proc.poll()} {proc.stderr.read() if proc.poll() is not None else ''}")


# ---------------------------------------------------------------------------------------------- 1, 7: the lock
def test_a_live_run_owns_its_folder_and_a_killed_one_is_taken_over(tmp_path: Path) -> None:
    """A second start with the same --out, and a --resume of the live run, are refused with one line naming the
    holder and touch nothing; after kill -9 the lock is taken over (said so), the temporaries of interrupted
    saves are removed (said so), and the resumed run logs each step once."""
    run = tmp_path / "run"
    first = subprocess.Popen([*TRAIN_CLI, "--out", str(run)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                             env=cli_env())
    try:
        _wait_rows(run, first)
        holder = json.loads((run / LOCK_NAME).read_text())
        assert holder["pid"] == first.pid
        for extra in (["--out", str(run)], ["--out", str(run), "--overwrite"], ["--resume", str(run)]):
            cmd = [*TRAIN_CLI, *extra] if extra[0] == "--out" else [sys.executable, "-m", "lowbit", "train", *extra, "--no-progress"]
            if extra[0] == "--resume":  # the live run has no checkpoint yet: give the resume one to read
                continue
            second = subprocess.run(cmd, capture_output=True, text=True, env=cli_env(), timeout=120)
            err = second.stderr.strip()
            assert second.returncode == 2 and len(err.splitlines()) == 1, err
            assert "in use by a running lowbit train" in err and f"pid {first.pid}" in err, err
        assert first.poll() is None  # the live run goes on
    finally:
        first.send_signal(signal.SIGTERM)  # saves a checkpoint
        first.communicate(timeout=120)
    # now a live run with a checkpoint: --resume is refused too
    again = subprocess.Popen([sys.executable, "-m", "lowbit", "train", "--resume", str(run), "--no-progress",
                              "--threads", "1"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=cli_env())
    try:
        n0 = len(_rows(run))
        _wait_rows(run, again, n0 + 2)
        refused = subprocess.run([sys.executable, "-m", "lowbit", "train", "--resume", str(run), "--no-progress"],
                                 capture_output=True, text=True, env=cli_env(), timeout=120)
        assert refused.returncode == 2 and "in use by a running lowbit train" in refused.stderr, refused.stderr
        assert len(refused.stderr.strip().splitlines()) == 1, refused.stderr
    finally:
        again.kill()  # kill -9: the lock file stays behind, the kernel drops the lock
        again.communicate(timeout=60)
    assert (run / LOCK_NAME).is_file()
    junk = run / ".checkpoint.pt.abc123.tmp"
    junk.write_bytes(b"x" * 5000)
    (run / ".checkpoint.dcp.tmp").mkdir()
    (run / ".checkpoint.dcp.tmp" / "__0_0.distcp").write_bytes(b"y" * 1000)
    (run / "notes.tmp").write_text("the user's own file")
    ckpt_step = torch.load(run / "checkpoint.pt", weights_only=True)["step"]
    resumed = subprocess.run([sys.executable, "-m", "lowbit", "train", "--resume", str(run), "--stop-at",
                              str(ckpt_step + 2), "--no-progress", "--threads", "1"],
                             capture_output=True, text=True, env=cli_env(), timeout=180)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"took over the lock of a run that ended without releasing it (pid {again.pid}" in resumed.stdout
    assert "removed 2 temporary file(s) of interrupted saves" in resumed.stdout and "(0.0 MB)" in resumed.stdout
    assert not junk.exists() and not (run / ".checkpoint.dcp.tmp").exists() and (run / "notes.tmp").is_file()
    assert not (run / LOCK_NAME).exists()  # a clean exit releases it
    assert _rows(run) == list(range(1, ckpt_step + 3))


def test_the_lock_in_process(tmp_path: Path, fake_data: SimpleNamespace) -> None:
    """Held, the folder refuses a run (and --overwrite); a refused new folder is not left behind."""
    out = tmp_path / "a" / "run"
    cfg = {**SMALL, "zeroshot": "none", "steps": 2}
    with RunLock(out):
        with pytest.raises(RunLockedError, match="in use"):
            train(TrainConfig.from_dict({**cfg, "out": str(out)}))
        with pytest.raises(RunLockedError, match="in use"):
            train(TrainConfig.from_dict({**cfg, "out": str(out), "overwrite": True}))
    assert not out.exists() and not (tmp_path / "a").exists()  # acquire created them, release removed them
    with pytest.raises(ValueError, match="max_bad_fraction"):
        train(TrainConfig.from_dict({**cfg, "out": str(out), "max_bad_fraction": 2.0}))
    assert not out.exists()
    train(TrainConfig.from_dict({**cfg, "out": str(out)}))
    assert not (out / LOCK_NAME).exists() and (out / "checkpoint.pt").is_file()


def test_only_lowbit_temporaries_are_removed(tmp_path: Path) -> None:
    names = [".checkpoint.pt.x1.tmp", ".metrics.csv.q.tmp", ".summary.json.z.tmp", ".eval.csv.a.tmp"]
    keep = ["checkpoint.pt", "x.tmp", ".hidden", "metrics.csv", ".checkpoint.pt.x1"]
    for n in names + keep:
        (tmp_path / n).write_bytes(b"12")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / ".checkpoint.pt.x.tmp").write_bytes(b"1")
    assert remove_stale_temps(tmp_path) == (len(names), 2 * len(names))
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([*keep, "sub"])


# ---------------------------------------------------------------------------------------------- 2: atomic rewrites
_REWRITER = """
import sys
from lowbit.train.metrics import CSVLog
log = CSVLog(sys.argv[1])
print("ready", flush=True)
while True:
    log.truncate_after(10**9)  # rewrites the whole file (what a resume does)
"""


def test_a_kill_during_a_log_rewrite_leaves_the_old_file(tmp_path: Path) -> None:
    """kill -9 at random moments of metrics.csv rewrites (a resume's): the file is always whole."""
    path = tmp_path / "metrics.csv"
    cols = ["step", "loss"] + [f"rms/p{i}" for i in range(40)]
    lines = [",".join(cols)] + [",".join([str(s), *(f"{0.001 * s * i:.6f}" for i in range(41))]) for s in range(1, 1500)]
    path.write_bytes(("\r\n".join(lines) + "\r\n").encode())  # the csv module's line ends
    before = path.read_bytes()
    rng = __import__("random").Random(0)
    for _ in range(6):
        proc = subprocess.Popen([sys.executable, "-c", _REWRITER, str(path)], stdout=subprocess.PIPE, text=True, env=cli_env())
        assert proc.stdout.readline().strip() == "ready"
        time.sleep(rng.uniform(0.05, 0.4))
        proc.kill()
        proc.wait()
        assert path.read_bytes() == before
    assert all(p.name.startswith(".metrics.csv.") for p in tmp_path.iterdir() if p.name != "metrics.csv")


# ---------------------------------------------------------------------------------------------- 6: SIGTERM to all
def test_the_same_signal_forwarded_soon_after_is_not_a_second_one(monkeypatch: pytest.MonkeyPatch) -> None:
    from lowbit.train.signals import Interrupt

    with Interrupt() as interrupt:
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(0.05)  # torchrun's forward, 50 ms later
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(0.01)
        assert interrupt.signum == signal.SIGTERM
    monkeypatch.setattr(Interrupt, "REPEAT_WINDOW", 0.05)
    with Interrupt() as interrupt, pytest.raises(KeyboardInterrupt, match="second SIGTERM"):
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(0.1)  # a deliberate second request, after the window
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(0.01)


def test_a_forward_after_the_loop_ended_is_absorbed_then_the_old_handler_returns(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A short step: the loop saves and leaves ``Interrupt`` before torchrun's forward of the signal arrives, while
    the run still writes its summary. That forward is absorbed; a signal after the window reaches the handler the
    run found (here a recording one), which is back in place."""
    from lowbit.train.signals import Interrupt

    seen: list[int] = []
    previous = signal.signal(signal.SIGTERM, lambda signum, frame: seen.append(signum))
    try:
        monkeypatch.setattr(Interrupt, "REPEAT_WINDOW", 0.3)
        with Interrupt() as interrupt:
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(0.01)
        assert interrupt.signum == signal.SIGTERM
        os.kill(os.getpid(), signal.SIGTERM)  # the launcher's forward, after the loop
        time.sleep(0.01)
        assert seen == []
        time.sleep(0.35)
        os.kill(os.getpid(), signal.SIGTERM)  # a new request, past the window
        time.sleep(0.01)
        assert seen == [signal.SIGTERM]
        assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # the other signal restored at exit
    finally:
        signal.signal(signal.SIGTERM, previous)


@pytest.mark.skipif(not Path("/proc/self/stat").is_file() or not torch.distributed.is_gloo_available(),
                    reason="needs /proc and gloo")
def test_sigterm_to_every_process_of_a_torchrun_job_saves(tmp_path: Path) -> None:
    """A scheduler's SIGTERM to the ranks and (50 ms later) to torchrun, which forwards it: the ranks see it twice
    and still finish the step and save (steps of batch 2 x 32 take long enough for the forward to arrive within
    the step)."""
    run = tmp_path / "run"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", *TRAIN_CLI[1:],
           "--batch-size", "32", "--out", str(run)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=cli_env())
    _wait_rows(run, proc)
    ranks = torchrun_ranks(proc.pid)
    assert sorted(ranks) == [0, 1], ranks
    for pid in ranks.values():
        os.kill(pid, signal.SIGTERM)
    time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=180)
    assert (run / "summary.json").is_file(), f"torchrun exited {proc.returncode} without a summary:\n{err[-3000:]}"
    summary = json.loads((run / "summary.json").read_text())
    assert summary["status"] == "interrupted" and summary["signal"] == "SIGTERM", err[-3000:]
    assert "aborted without saving" not in err, err[-3000:]
    assert torch.load(run / "checkpoint.pt", weights_only=True)["step"] == summary["step"]


# ---------------------------------------------------------------------------------------------- 10: threads
def test_the_thread_count_is_recorded_and_kept_on_resume(
    tmp_path: Path, fake_data: SimpleNamespace, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    run = tmp_path / "run"
    base = {**SMALL, "zeroshot": "none", "device": "cpu", "steps": 6}
    train(TrainConfig.from_dict({**base, "out": str(run), "stop_at": 2, "threads": 1}))
    assert torch.load(run / "checkpoint.pt", weights_only=True)["threads"] == 1
    # automatic (load-dependent) on resume: the recorded count, said so
    monkeypatch.setattr("lowbit.train.env.cpu_threads", lambda requested=0: requested or 2)
    summary = train(TrainConfig.from_dict({**base, "resume": str(run), "stop_at": 4, "threads": 0}))
    assert "resuming with the checkpoint's 1 CPU thread(s)" in capsys.readouterr().out
    assert "1 threads" in summary["device"]
    # another explicit count: kept, with a one-line warning
    summary = train(TrainConfig.from_dict({**base, "resume": str(run), "threads": 2}))
    out = capsys.readouterr().out
    assert "warning: --threads 2, but the checkpoint's run used 1" in out and "2 threads" in summary["device"]


# ---------------------------------------------------------------------------------------------- 9: a full disk
@pytest.mark.parametrize("after", [0, 5])
def test_a_disk_filled_under_tensorboard_is_one_line_naming_the_file(
    tmp_path: Path, fake_data: SimpleNamespace, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
    after: int,
) -> None:
    """TensorBoard's writer thread meets the full disk: no raw thread traceback, one line naming the event file."""
    import errno

    from tensorboard.summary.writer import record_writer

    from lowbit.cli.main import main

    calls = []
    write = record_writer.RecordWriter.write

    def full(self: object, data: bytes) -> None:  # the disk fills after `after` records
        calls.append(1)
        if len(calls) > after:
            raise OSError(errno.ENOSPC, "No space left on device")
        write(self, data)

    monkeypatch.setattr(record_writer.RecordWriter, "write", full)
    rc = main(["train", "--data", "fake", "--zeroshot", "none", "--steps", "3", "--warmup", "1", "--batch-size", "4",
               "--recipe", "none", "--optimizer", "adamw", "--set", "model.vision.layers=1", "--set", "model.text.layers=1",
               "--no-progress", "--out", str(tmp_path / "run")])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1, err
    assert "no space left on the device" in err and "run/tensorboard" in err, err  # the event file, once created


def test_a_forked_child_does_not_keep_the_lock(tmp_path: Path) -> None:
    """DataLoader workers are forked: the lock must die with the training process, not with its last worker."""
    lock = RunLock(tmp_path / "run").acquire()
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: outlives the parent's hold
        os.close(r)
        os.write(w, b"1")
        time.sleep(3)
        os._exit(0)
    os.close(w)
    os.read(r, 1)
    os.close(lock.fd)  # the parent dies (kill -9: the lock file stays); the child lives on
    lock.fd = None
    try:
        with RunLock(tmp_path / "run"):  # taken over, not refused (the child's inherited copy was closed)
            pass
    finally:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)


def test_the_faults_script_runs_and_docs_show_its_table() -> None:
    """experiments/faults.py (each fault's injection is tested above) parses, and docs/faults.md holds its table:
    one row per fault."""
    root = Path(__file__).resolve().parents[2]
    r = subprocess.run([sys.executable, str(root / "experiments" / "faults.py"), "--help"], capture_output=True, text=True,
                       env=cli_env(), timeout=120)
    assert r.returncode == 0 and "--only" in r.stdout, r.stderr
    import importlib.util

    spec = importlib.util.spec_from_file_location("faults_script", root / "experiments" / "faults.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    rows = [ln for ln in (root / "docs" / "faults.md").read_text().splitlines() if ln.startswith("| ") and "---" not in ln]
    assert len(rows) == 1 + len(mod.FAULTS), rows


# ---------------------------------------------------------------------------------------------- 8: a frozen rank
@pytest.mark.skipif(not Path("/proc/self/stat").is_file() or not torch.distributed.is_gloo_available(),
                    reason="needs /proc and gloo")
def test_a_frozen_rank_under_torchrun_is_named_within_the_dist_timeout(tmp_path: Path) -> None:
    """SIGSTOP of rank 1 in a DDP run with --dist-timeout 5: rank 0 stops with one line naming rank 1 (was silence
    for torch's 30 minutes)."""
    import threading

    run = tmp_path / "run"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", *TRAIN_CLI[1:],
           "--dist-timeout", "5", "--out", str(run)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=cli_env(),
                            start_new_session=True)
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(iter(proc.stderr.readline, "")), daemon=True)
    reader.start()
    ranks: dict[int, int] = {}
    try:
        _wait_rows(run, proc)
        ranks = torchrun_ranks(proc.pid)
        os.kill(ranks[1], signal.SIGSTOP)
        t0 = time.time()
        while time.time() - t0 < 90 and not any("timed out" in ln for ln in lines):
            time.sleep(0.1)
        waited = time.time() - t0
    finally:
        for pid in ranks.values():
            with __import__("contextlib").suppress(ProcessLookupError):
                os.kill(pid, signal.SIGCONT)
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    line = next((ln for ln in lines if "timed out" in ln), "".join(lines[-20:]))
    assert "lowbit train: error: a collective" in line and "timed out after 5 s on rank 0 (--dist-timeout)" in line, line
    assert "rank 1 (silent for" in line and "frozen or dead" in line, line
    assert waited < 60, waited
