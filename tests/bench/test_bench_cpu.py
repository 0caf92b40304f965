"""Papercut (issue 31): a GPU benchmark on a machine without one says in one line what will happen and how long it
takes, refuses what would run for more than ``CPU_LIMIT_S`` unless ``--allow-cpu``, and says when ``--cudagraphs``
is ignored and why."""

from __future__ import annotations

import pytest

from lowbit.cli import bench as cli_bench
from lowbit.cli.main import build_parser, main

RATE = 1e11  # FLOP/s: a fixed CPU rate, so that the estimates do not depend on this machine

VIT_H_STEP = ["bench", "step", "--preset", "vit-h-14", "--batch-size", "96", "--compile", "--cudagraphs", "--recipe",
              "bf16", "fp8-switchback", "--device", "cpu"]


@pytest.fixture(autouse=True)
def fixed_rate(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cli_bench, "cpu_rate", lambda: RATE)


@pytest.mark.parametrize("argv", [VIT_H_STEP, ["bench", "linear", "--shapes", "vit-h-14", "--device", "cpu"],
                                  ["bench", "matmul", "--device", "cpu"]])
def test_big_gpu_benchmarks_are_refused_on_the_cpu_in_one_line(argv: list[str], capsys, monkeypatch) -> None:
    ran = []
    monkeypatch.setattr("lowbit.bench.step.run_step", lambda args: ran.append(args))
    monkeypatch.setattr("lowbit.bench.linear.run_linear", lambda *a, **k: ran.append(a))
    monkeypatch.setattr("lowbit.bench.linear.run_matmul", lambda *a, **k: ran.append(a))
    assert main(argv) == 2 and not ran
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert "on the CPU" in line and "would take at least" in line and "--allow-cpu" in line


def test_the_estimate_is_the_model_flops_over_the_rate() -> None:
    from lowbit.models import get_config
    from lowbit.models.flops import clip_train_flops

    args = build_parser().parse_args(VIT_H_STEP)
    flops = clip_train_flops(get_config("vit-h-14"), 96) * 96 * (3 + 10) * 2  # 2 rows, 3 warm-up + 10 timed steps
    assert cli_bench.cpu_estimate(args) == pytest.approx(flops / RATE)
    assert flops / RATE > 3600  # hours, at 100 GFLOP/s: refused
    assert cli_bench.cpu_refusal(build_parser().parse_args([*VIT_H_STEP, "--allow-cpu"]), 1e9) is None


def test_a_small_cpu_run_is_warned_with_its_estimate_and_cudagraphs_is_said_to_be_ignored(capsys, monkeypatch) -> None:
    monkeypatch.setattr("lowbit.bench.step.run_step", lambda args: {"rows": []})
    argv = ["bench", "step", "--preset", "tiny", "--batch-size", "4", "--steps", "1", "--warmup", "1", "--recipe",
            "bf16", "--compile", "--cudagraphs", "--device", "cpu", "--no-anchors"]
    assert main(argv) == 0
    warning, note = capsys.readouterr().err.strip().splitlines()
    assert "running on the CPU" in warning and "expect at least 0 s" in warning
    assert "--cudagraphs is ignored on the CPU (CUDA graphs need a CUDA device)" in note


def test_cudagraphs_without_compile_is_an_error_not_silently_ignored(capsys) -> None:
    argv = ["bench", "step", "--preset", "tiny", "--cudagraphs", "--device", "cpu"]
    assert main(argv) == 2
    assert "--cudagraphs needs --compile" in capsys.readouterr().err
