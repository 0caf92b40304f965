"""The trainer's step clock (``lowbit.train.timing``) on a fake device whose queued work finishes only when the host
waits for it, as a GPU's does; and the trainer's books built on it (step time, data wait, MFU, the closing line)."""

from __future__ import annotations

import csv
import json
import time
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from train_fakes import SMALL

from lowbit.cli.main import main
from lowbit.cli.train import throughput_line
from lowbit.train import TrainConfig, train
from lowbit.train.timing import StepClock, steady_rate


class FakeDevice:
    """One stream: ``launch(seconds)`` queues work and returns at once; the work is done at ``busy_until`` on the
    host's clock. An event is reached when the work queued before it is done; its time can be read only once the
    host has waited for it (``synchronize``), as ``torch.cuda.Event.elapsed_time`` requires. ``now`` is the host's
    clock: a number the test advances (``sleep``), or ``time.perf_counter`` for real time (``real=True``)."""

    def __init__(self, real: bool = False) -> None:
        self.real = real
        self.t = 0.0
        self.busy_until = 0.0
        self.syncs = 0

    def now(self) -> float:
        return time.perf_counter() if self.real else self.t

    def sleep(self, seconds: float) -> None:  # host work (or waiting) that takes ``seconds``
        if self.real:
            time.sleep(seconds)
        else:
            self.t += seconds

    def launch(self, seconds: float) -> None:
        self.busy_until = max(self.busy_until, self.now()) + seconds

    def wait_until(self, t: float) -> None:
        self.syncs += 1
        if t > self.now():
            self.sleep(t - self.now())

    def event(self) -> FakeEvent:
        return FakeEvent(self)


class FakeEvent:
    def __init__(self, device: FakeDevice) -> None:
        self.device, self.at = device, None

    def record(self) -> None:
        self.at = max(self.device.busy_until, self.device.now())  # reached after the work queued before it

    def synchronize(self) -> None:
        self.device.wait_until(self.at)

    def elapsed_time(self, end: FakeEvent) -> float:
        if max(self.at, end.at) > self.device.now():
            raise RuntimeError("event not completed: the host has not waited for it")
        return 1e3 * (end.at - self.at)


def _step(clock: StepClock, dev: FakeDevice, *, load: float = 0.0, host: float = 0.01, gpu: float = 0.2) -> None:
    """One training step as the trainer takes it: fetch the batch (``load`` s), queue the forward, read the loss
    (a sync), queue the backward and optimizer (``gpu`` s of device work in all, ``host`` s to queue)."""
    clock.start()
    dev.sleep(load)
    clock.data_ready()
    dev.launch(gpu / 3)  # forward
    dev.sleep(host)
    dev.wait_until(dev.busy_until)  # loss.item()
    dev.launch(2 * gpu / 3)  # backward, clipping, optimizer: only queued
    clock.stop()


def test_the_step_lasts_until_its_device_work_ends() -> None:
    """A clock read when the step's ops are queued (today's trainer) sees the forward only; the step clock sees the
    backward and optimizer too, and adds no sync of its own until ``read``."""
    dev = FakeDevice()
    clock, host_clock = StepClock(event=dev.event, now=dev.now), StepClock(now=dev.now)
    for c in (host_clock, clock):
        dev.t = dev.busy_until = 0.0
        c.start()
        dev.launch(0.1)  # forward
        dev.wait_until(dev.busy_until)  # loss.item()
        dev.launch(0.2)  # backward + optimizer, queued
        c.stop()
    assert host_clock.read()[0].seconds == pytest.approx(0.1)  # too little: stopped before the work ended
    syncs = dev.syncs
    assert dev.now() == pytest.approx(0.1)  # nothing waited for the backward yet
    (t,) = clock.read()
    assert t.seconds == pytest.approx(0.3) and t.data_wait == 0.0
    assert dev.syncs == syncs + 1 and dev.now() == pytest.approx(0.3)  # read waited for the step's end


def test_steps_tile_the_time_when_the_host_runs_ahead() -> None:
    """Queued steps overlap on the host; each counts from the previous step's end, so the steps add up to the wall
    time of the device's work, not more (a step's own start would count the overlap twice)."""
    dev = FakeDevice()
    clock = StepClock(event=dev.event, now=dev.now)
    for _ in range(5):
        clock.start()
        clock.data_ready()
        dev.launch(0.3)  # all queued: the host never waits
        dev.sleep(0.01)
        clock.stop()
    times = clock.read()
    assert [t.seconds for t in times] == pytest.approx([0.3] * 5)
    assert dev.now() == pytest.approx(1.5)
    assert sum(t.seconds for t in times) == pytest.approx(dev.now())  # started idle at 0


def test_pauses_are_not_training_time_and_the_data_wait_is_the_idle_device() -> None:
    dev = FakeDevice()
    clock = StepClock(event=dev.event, now=dev.now)
    _step(clock, dev)  # 0.2 s of device work, 0.01 s of host time inside it
    clock.pause()
    dev.sleep(5.0)  # an evaluation or a checkpoint: not counted
    _step(clock, dev, load=0.5)  # the device idles 0.5 s waiting for the loader
    _step(clock, dev, load=0.1)  # the loader's 0.1 s overlap the previous step's queued work (0.133 s): hidden
    a, b, c = clock.read()
    assert a.seconds == pytest.approx(0.2) and a.data_wait == 0.0  # the host's 0.01 s overlap the forward
    assert b.seconds == pytest.approx(0.7) and b.data_wait == pytest.approx(0.5)
    assert c.data_wait == 0.0 and c.seconds == pytest.approx(0.2)  # the device ran its backlog, then this step
    assert clock.read() == []


def test_on_a_synchronous_device_the_host_clock_is_read() -> None:
    dev = FakeDevice()
    clock = StepClock(now=dev.now)
    clock.start()
    dev.sleep(0.25)
    clock.data_ready()
    dev.sleep(1.0)
    clock.stop()
    dev.sleep(0.5)  # the books between steps: counted in the next step
    clock.start()
    dev.sleep(1.0)
    clock.data_ready()
    clock.stop()
    assert clock.read() == [pytest.approx((1.25, 0.25)), pytest.approx((1.5, 1.0))]


def test_steady_rate_leaves_out_the_warm_up() -> None:
    assert steady_rate([10.0] * 5 + [0.5] * 10, 8) == pytest.approx(16.0)
    assert steady_rate([2.0], 8) == pytest.approx(4.0)
    assert steady_rate([], 8) is None


# ---------------------------------------------------------------------------------------------- the trainer
def _cfg(tmp_path: Path, **kw: object) -> TrainConfig:
    return TrainConfig.from_dict({**SMALL, "out": str(tmp_path / "run"), "zeroshot": "none", "save_every": 0, **kw})


def _metrics(run: Path) -> list[dict[str, str]]:
    with (run / "metrics.csv").open(newline="") as f:
        return list(csv.DictReader(f))


@pytest.mark.parametrize(("log_every", "accum_steps"), [(2, 1), (3, 2)])
def test_the_trainer_counts_the_queued_backward(tmp_path: Path, fake_data: SimpleNamespace,
                                                monkeypatch: pytest.MonkeyPatch, log_every: int, accum_steps: int) -> None:
    """Every step leaves 0.15 s of device work queued when ``train_step`` returns (as the backward and optimizer
    are on a GPU): the step time, ``samples_per_s`` and the metrics rows include it."""
    import lowbit.train.books as books
    import lowbit.train.loop as loop

    dev = FakeDevice(real=True)
    real_step, queued = loop.train_step, 0.15

    def step_then_queue(*args: Any, **kwargs: Any) -> Any:
        out = real_step(*args, **kwargs)
        dev.launch(queued)
        return out

    monkeypatch.setattr(loop, "train_step", step_then_queue)
    monkeypatch.setattr(books, "step_clock", lambda device: StepClock(event=dev.event))
    steps = 6
    summary = train(_cfg(tmp_path, steps=steps, log_every=log_every, batch_size=16 // accum_steps,
                         accum_steps=accum_steps))
    assert summary["train_seconds"] >= steps * queued
    assert summary["samples_per_s"] <= 16 / queued and summary["samples_per_s_steady"] <= 16 / queued
    rows = _metrics(tmp_path / "run")
    assert [int(r["step"]) for r in rows] == list(range(log_every, steps + 1, log_every))
    assert all(float(r["samples_per_s"]) <= 16 / queued and float(r["step_s"]) >= queued for r in rows)


def test_data_wait_is_reported(tmp_path: Path, fake_data: SimpleNamespace, monkeypatch: pytest.MonkeyPatch,
                               capsys: pytest.CaptureFixture[str]) -> None:
    import lowbit.train.loop as loop

    real_open, wait = loop.open_data, 0.1

    def slow(run: Any) -> Iterator[Any]:
        batches = real_open(run)
        while True:
            time.sleep(wait)
            yield next(batches)

    monkeypatch.setattr(loop, "open_data", slow)
    steps = 4
    args = ["train", "--preset", "tiny", "--data", "fake", "--zeroshot", "none", "--steps", str(steps), "--warmup", "1",
            "--optimizer", "adamw", "--no-progress", "--threads", "1", "--out", str(tmp_path / "run"),
            *[f"--set=model.{tower}.{k}={v}" for tower in ("vision", "text") for k, v in SMALL["model"][tower].items()],
            f"--set=model.embed_dim={SMALL['model']['embed_dim']}", "--batch-size", "8"]
    assert main(args) == 0
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert steps * wait <= summary["data_wait_seconds"] <= summary["train_seconds"]
    assert summary["data_wait_frac"] == pytest.approx(summary["data_wait_seconds"] / summary["train_seconds"])
    rows = _metrics(tmp_path / "run")
    assert all(wait <= float(r["data_wait_s"]) <= float(r["step_s"]) for r in rows)
    assert all(0 < float(r["data_wait_frac"]) <= 1 for r in rows)
    end = next(line for line in capsys.readouterr().out.splitlines() if line.startswith("throughput: "))
    assert end.endswith(f"; data wait {100 * summary['data_wait_frac']:.1f}% of the step time")
    assert "MFU unknown" in end and summary["mfu"] is None and summary["peak_tflops"] is None  # a CPU


def test_mfu_beside_every_throughput_and_one_warning_when_implausible(
        tmp_path: Path, fake_data: SimpleNamespace, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    """On a device of lowbit.hardware's table (here a made-up one so slow that the tiny model's CPU rate is far
    above its peak)."""
    import lowbit.hardware as hardware
    import lowbit.train.env as env
    from lowbit.models import get_config
    from lowbit.models.flops import clip_train_flops

    monkeypatch.setattr(env, "device_name", lambda device: "Fake GPU 9000")
    monkeypatch.setattr(hardware, "_PEAKS", (("fake gpu", 1e-12),))  # 1 FLOP/s: every rate is implausible
    summary = train(_cfg(tmp_path, steps=4, log_every=1))
    flops = clip_train_flops(get_config("tiny", **SMALL["model"]), 16)
    assert summary["flops_per_sample"] == pytest.approx(flops) and summary["peak_tflops"] == 1e-12
    assert summary["mfu"] == pytest.approx(flops * summary["samples_per_s"])
    assert summary["mfu_steady"] == pytest.approx(flops * summary["samples_per_s_steady"])
    rows = _metrics(tmp_path / "run")
    assert [float(r["mfu"]) for r in rows] == pytest.approx([flops * float(r["samples_per_s"]) for r in rows])
    err = capsys.readouterr().err
    assert err.count("lowbit: warning: lowbit train's throughput is") == 1 and "dense bf16 peak (MFU)" in err
    assert throughput_line(summary).count("(implausible)") == 2


def test_throughput_line_names_mfu_and_data_wait() -> None:
    summary = {"samples_per_s": 300.0, "samples_per_s_steady": 343.6, "device": "NVIDIA H100 80GB HBM3",
               "recipe": "bf16", "precision": "bf16", "mfu": 0.35, "mfu_steady": 0.4012, "data_wait_frac": 0.012}
    assert throughput_line(summary) == (
        "throughput: 343.6 images/s steady state (after warm-up, MFU 40.1%), 300.0 images/s whole-run average "
        "(warm-up and compilation included, MFU 35.0%) on NVIDIA H100 80GB HBM3 (bf16, bf16); data wait 1.2% of "
        "the step time")


# ---------------------------------------------------------------------------------------------- finished runs
def test_resuming_a_finished_run_changes_nothing(tmp_path: Path, fake_data: SimpleNamespace,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    """Issue 27 item 6: the resume used to rewrite summary.json with null losses and 0.0 train_seconds and append
    duplicate rows to eval.csv."""
    run = tmp_path / "run"
    train(_cfg(tmp_path, steps=4, zeroshot="fake", save_every=2))
    files = sorted(p for p in run.rglob("*") if p.is_file())
    before = {p: (p.read_bytes(), p.stat().st_mtime_ns) for p in files}
    capsys.readouterr()
    assert main(["train", "--resume", str(run), "--no-progress"]) == 0
    out, err = capsys.readouterr()
    assert out == "" and len(err.strip().splitlines()) == 1, err
    assert "already finished (step 4 of 4)" in err and "nothing changed" in err and "--steps N (N > 4)" in err
    assert sorted(p for p in run.rglob("*") if p.is_file()) == files
    assert {p: (p.read_bytes(), p.stat().st_mtime_ns) for p in files} == before
    # a --stop-at at or before the checkpoint's step: the same
    summary = train(_cfg(tmp_path, steps=8, stop_at=3, resume=str(run)))
    assert summary["status"] == "nothing to do" and "--stop-at 3" in capsys.readouterr().err
    assert {p: (p.read_bytes(), p.stat().st_mtime_ns) for p in files} == before
