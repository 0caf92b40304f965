"""The end of a ``torchrun`` run: its process group must not outlive it into the interpreter's teardown, where a
finished rank aborted now and then ("terminate called without an active exception", rc 1; issue #31 papercut 1).

The cause, found in gdb: a gloo group runs three threads until its C++ object is destroyed, and
``destroy_process_group()`` destroys it only when nothing else holds it. ``torch.distributed.nn.functional``
imported after ``init_process_group`` held it in its functions' default arguments (``group=group.WORLD``) until
Py_FinalizeEx destroyed it; FSDP2 keeps a hold of its own. So: import that module before any group (DDP then
leaves no thread behind), and end a rank whose group lives on with ``os._exit`` after flushing."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

SRC = str(Path(__file__).resolve().parents[2] / "src")
needs_gloo = pytest.mark.skipif(
    not (torch.distributed.is_available() and torch.distributed.is_gloo_available()) or not Path("/proc/self/task").is_dir(),
    reason="needs torch.distributed with gloo, and Linux (/proc) to list threads")

SCRIPT = textwrap.dedent('''
    import os, sys
    from lowbit.train import TrainConfig, train
    from lowbit.train.distributed import process_group_outlives_destroy

    cfg = TrainConfig.from_dict({"preset": "tiny", "model": {"vision": {"layers": 1}, "text": {"layers": 1}},
        "device": "cpu", "threads": 1, "steps": 2, "warmup": 1, "zeroshot": "none", "progress": False,
        "save_every": -1, "parallel": sys.argv[1], "batch_size": 4, "recipe": "none", "optimizer": "adamw",
        "out": os.path.join(sys.argv[2], "run")})
    train(cfg)
    names = sorted(open(f"/proc/self/task/{t}/comm").read().strip() for t in os.listdir("/proc/self/task"))
    print(f"rank {os.environ['RANK']}: threads {names}; outlives {process_group_outlives_destroy()}", flush=True)
''')


def _torchrun(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": SRC + os.pathsep + os.environ.get("PYTHONPATH", ""), "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", *args],
                          capture_output=True, text=True, timeout=300, env=env, cwd=tmp_path)


@needs_gloo
def test_ddp_leaves_no_thread_of_its_process_group(tmp_path: Path) -> None:
    """With the default gather (torch.distributed.nn.functional.all_gather, with gradient) the group used to stay
    alive after destroy_process_group (held by that module's default arguments): its gloo threads ran on."""
    (tmp_path / "probe.py").write_text(SCRIPT)
    proc = _torchrun(tmp_path, "probe.py", "ddp", str(tmp_path))
    assert proc.returncode == 0, proc.stderr[-3000:]
    ranks = re.findall(r"rank (\d): threads (\[.*?\]); outlives (True|False)", proc.stdout)  # lines may interleave
    assert sorted(r[0] for r in ranks) == ["0", "1"], proc.stdout
    for _rank, threads, outlives in ranks:
        assert "gloo" not in threads and outlives == "False", ranks


@needs_gloo
def test_a_rank_whose_group_lives_on_ends_with_os_exit(tmp_path: Path) -> None:
    """FSDP2 keeps its group (torch 2.13): the CLI ends the rank with os._exit after flushing, so the run's last
    lines arrive and nothing of the teardown runs beside the group's threads. A finished run exits 0."""
    (tmp_path / "probe.py").write_text(SCRIPT)
    proc = _torchrun(tmp_path, "probe.py", "fsdp", str(tmp_path))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count("outlives True") == 2, proc.stdout  # what the CLI's ending looks at
    cli = _torchrun(tmp_path, "-m", "lowbit", "train", "--parallel", "fsdp", "--device", "cpu", "--threads", "1",
                    "--steps", "2", "--warmup", "1", "--batch-size", "4", "--zeroshot", "none", "--no-progress",
                    "--recipe", "none", "--set", "model.vision.layers=1", "--set", "model.text.layers=1",
                    "--out", str(tmp_path / "cli"))
    assert cli.returncode == 0 and "terminate called" not in cli.stderr, cli.stderr[-3000:]
    assert "run: " in cli.stdout and "final loss" in cli.stdout  # flushed before os._exit


def test_the_collectives_module_holds_no_group() -> None:
    """Importing the trainer's distributed room imports torch.distributed.nn.functional with it, before any
    process group exists, so its ``group=group.WORLD`` defaults are None."""
    import torch.distributed.nn.functional as dist_nn

    import lowbit.train.distributed  # noqa: F401

    assert dist_nn.all_gather.__defaults__ == (None,)


def test_the_cli_ends_with_os_exit_only_when_a_group_lives_on(monkeypatch: pytest.MonkeyPatch,
                                                                capsys: pytest.CaptureFixture[str]) -> None:
    import lowbit.train.distributed as d
    from lowbit.cli.main import main

    exits: list[int] = []

    class Exited(Exception):
        pass

    def fake_exit(code: int) -> None:
        exits.append(code)
        raise Exited

    monkeypatch.setattr(os, "_exit", fake_exit)
    assert main(["plot", "no-such-run"]) == 2 and exits == []  # no group was destroyed here: an ordinary return
    monkeypatch.setattr(d, "process_group_outlives_destroy", lambda: True)
    with pytest.raises(Exited):
        main(["plot", "no-such-run"])
    assert exits == [2] and "no metrics.csv" in capsys.readouterr().err  # the code kept, the message out first
