"""TrainConfig validation, YAML loading and precedence."""

from __future__ import annotations

from pathlib import Path

import pytest

from lowbit.train import TrainConfig, resolve_config


@pytest.mark.parametrize(
    ("override", "match"),
    [
        ({"steps": 0}, "steps=0"),
        ({"batch_size": 2.5}, "batch_size=2.5"),
        ({"lr": 0}, "lr=0.0"),
        ({"beta2": 1.0}, "beta2=1.0"),
        ({"optimizer": "sgd"}, "optimizer='sgd'.*adamw, stableadamw"),
        ({"precision": "fp16"}, "precision='fp16'"),
        ({"warmup": -1}, "warmup=-1"),
        ({"grad_clip": float("inf")}, "grad_clip=inf"),
        ({"device": "tpu"}, "device='tpu'"),
        ({"compile": "yes"}, "compile='yes'"),
        ({"layers": "all"}, "layers='all'.*default, clip, auto"),
        ({"compile": True, "compile_mode": "fast"}, "compile_mode='fast'.*reduce-overhead"),
        ({"compile_mode": "reduce-overhead"}, "compile_mode='reduce-overhead'.*unless compile is true"),
        ({"compile": True, "compile_mode": "reduce-overhead", "accum_steps": 2}, "compile_mode=.*accum_steps > 1"),
        ({"compile": True, "compiled_quantize": "triton"}, "compiled_quantize='triton'.*kernel, inductor"),
        ({"compiled_quantize": "inductor"}, "compiled_quantize='inductor'.*unless compile is true"),
        ({"lr": "fast"}, "lr='fast'"),
        ({"bogus": 1}, "unknown training option.*'bogus'"),
    ],
)
def test_validation_names_the_bad_value(override: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        TrainConfig().replace(override)


def test_defaults_are_the_main_job() -> None:
    c = TrainConfig()
    assert (c.preset, c.recipe, c.optimizer, c.data, c.zeroshot) == ("tiny", "switchback", "stableadamw", "synthetic", "auto")


def test_yaml_then_command_line_precedence(tmp_path: Path) -> None:
    f = tmp_path / "run.yaml"
    f.write_text("lr: 1e-3\nbatch-size: 32\nsteps: 10\nmodel: {layer_scale_init: 0.0}\n")
    c = resolve_config({"steps": 20}, str(f))
    assert (c.lr, c.batch_size, c.steps, c.model) == (1e-3, 32, 20, {"layer_scale_init": 0.0})
    assert c.warmup == TrainConfig().warmup
    f.write_text("- not a mapping\n")
    with pytest.raises(ValueError, match="mapping"):
        resolve_config({}, str(f))


def test_cpu_threads_auto_uses_free_cores(monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    from lowbit.train.env import cpu_threads

    assert cpu_threads(3) == 3
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(8)), raising=False)
    monkeypatch.setattr("torch.get_num_threads", lambda: 8)
    monkeypatch.setattr(os, "getloadavg", lambda: (0.1, 0.0, 0.0))
    assert cpu_threads(0) == 7  # one core left spare
    monkeypatch.setattr(os, "getloadavg", lambda: (3.2, 0.0, 0.0))
    assert cpu_threads(0) == 4
    monkeypatch.setattr(os, "getloadavg", lambda: (20.0, 0.0, 0.0))
    assert cpu_threads(0) == 1
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1}, raising=False)
    monkeypatch.setattr(os, "getloadavg", lambda: (0.0, 0.0, 0.0))
    assert cpu_threads(0) == 1  # a 2-core machine trains on 1 thread


@pytest.mark.parametrize(
    ("override", "match"),
    [
        ({"parallel": "zero3"}, "parallel='zero3'.*ddp, fsdp"),
        ({"accum_steps": 0}, "accum_steps=0"),
        ({"workers": -1}, "workers=-1"),
        ({"local_loss": True, "gather_with_grad": False}, "local_loss=True.*gather_with_grad"),
        ({"gather_with_grad": "no"}, "gather_with_grad='no'"),
    ],
)
def test_multi_gpu_options_are_validated(override: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        TrainConfig().replace(override)


def test_default_layers_are_auto_on_cuda_and_clip_elsewhere() -> None:
    """The trainer's default: measured selection where a GPU can time the shapes (never slower than bf16 by
    construction), every block linear on the CPU (which runs the recipes for their numerics, with no speed to
    measure). An explicit choice is kept on either device."""
    import torch

    from lowbit.train.config import resolve_layers

    assert TrainConfig().layers == "default"
    assert resolve_layers("default", torch.device("cuda", 0)) == "auto"
    assert resolve_layers("default", torch.device("cpu")) == "clip"
    for explicit in ("clip", "auto"):
        assert resolve_layers(explicit, torch.device("cpu")) == explicit
        assert resolve_layers(explicit, torch.device("cuda")) == explicit
