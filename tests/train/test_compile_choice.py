"""``compile: auto`` (the default): each block compiled with CUDA graphs on one GPU, eager elsewhere, and why.

The resolver only reads the device's type, so a fake CUDA ``Env`` needs no GPU."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from train_fakes import SMALL

from lowbit.cli.main import build_parser, main
from lowbit.cli.train import overrides_from_args
from lowbit.train import TrainConfig, resolve_config, train
from lowbit.train.compiling import CompileChoice, compile_blocks, resolve_compile
from lowbit.train.env import Env
from lowbit.train.setup import check_resume


def _env(device: str = "cuda", world_size: int = 1) -> Env:
    return Env(world_size, 0, "ddp" if world_size > 1 else None, torch.device(device), "bf16")


@pytest.mark.parametrize(
    ("cfg", "env", "expected"),
    [
        ({}, _env("cpu"), (False, None, "none", "auto: CPU")),
        ({}, _env(), (True, "reduce-overhead", "blocks", "auto: one GPU")),
        ({}, _env(world_size=2), (False, None, "none", "auto: 2 processes; block-wise CUDA graphs are not verified under DDP/FSDP (DDP: --compile "
                                         "--compile-mode reduce-overhead for whole-model graphs)")),
        ({"accum_steps": 2}, _env(), (False, None, "none", "auto: accum_steps 2; CUDA graphs would overwrite the "
                                                          "cached micro-batch features")),
        ({"compile": True}, _env(), (True, "default", "model", "compile true")),
        ({"compile": True, "compile_mode": "reduce-overhead"}, _env("cpu"),
         (True, "reduce-overhead", "model", "compile true")),
        ({"activations": True}, _env(), (False, None, "none", "auto: --activations hooks sit inside the blocks (not "
                                         "verified under CUDA graphs; --compile --compile-mode reduce-overhead "
                                         "compiles the whole model, which ran with them)")),
        ({"compile": False}, _env(), (False, None, "none", "compile false")),
        ({"compile": False}, _env("cpu"), (False, None, "none", "compile false")),
    ],
)
def test_resolve_compile(cfg: dict, env: Env, expected: tuple) -> None:
    assert resolve_compile(TrainConfig(**cfg), env) == CompileChoice(*expected)


def test_auto_is_the_default() -> None:
    assert TrainConfig().compile == "auto"


@pytest.mark.parametrize(("text", "value"), [("auto", "auto"), ("true", True), ("false", False)])
def test_yaml_compile_values(tmp_path: Path, text: str, value: object) -> None:
    f = tmp_path / "run.yaml"
    f.write_text(f"compile: {text}\n")
    assert resolve_config({}, str(f)).compile == value


@pytest.mark.parametrize("bad", ["yes", "Auto", 1, None])
def test_bad_compile_value_is_one_clear_line(bad: object) -> None:
    with pytest.raises(ValueError) as e:
        TrainConfig().replace({"compile": bad})
    assert str(e.value) == f"bad training option compile={bad!r}: expected true, false or auto"


def test_auto_refuses_a_compile_mode_and_says_to_pass_compile() -> None:
    with pytest.raises(ValueError, match=r"compile_mode='max-autotune'.*unless compile is true \(compile is 'auto': "
                                         r"auto chooses its own mode; pass --compile"):
        TrainConfig(compile_mode="max-autotune")
    with pytest.raises(ValueError, match=r"compiled_quantize='inductor'.*pass --compile"):
        TrainConfig(compiled_quantize="inductor")
    TrainConfig(compile=True, compile_mode="max-autotune", compiled_quantize="inductor")


@pytest.mark.parametrize(("flags", "expected"), [([], None), (["--compile"], True), (["--no-compile"], False),
                                                  (["--compile", "--no-compile"], False)])
def test_cli_compile_flags(flags: list[str], expected: bool | None) -> None:
    overrides = overrides_from_args(build_parser().parse_args(["train", *flags]))
    assert overrides.get("compile") == expected
    assert resolve_config(overrides).compile == ("auto" if expected is None else expected)


def test_compile_may_change_on_resume() -> None:
    cfg = TrainConfig(compile=False)
    ckpt = {"config": {**TrainConfig().to_dict(), "compile": "auto"}, "data_position": 0}
    check_resume(cfg, ckpt, world_size=1)  # no "changed option(s)" error


def test_first_line_says_eager_auto_cpu(tmp_path: Path, fake_data: SimpleNamespace,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    model = SMALL["model"]
    args = ["train", "--preset", "tiny", "--data", "fake", "--zeroshot", "none", "--batch-size", "8", "--steps", "1",
            "--warmup", "1", "--optimizer", "adamw", "--no-progress", "--threads", "1", "--recipe", "none",
            "--device", "cpu", "--out", str(tmp_path / "run"),
            *[f"--set=model.{tower}.{k}={v}" for tower in ("vision", "text") for k, v in model[tower].items()],
            f"--set=model.embed_dim={model['embed_dim']}"]
    assert main(args) == 0
    first = capsys.readouterr().out.splitlines()[0]
    assert "| eager (auto: CPU) |" in first
    assert main([*args, "--no-compile", "--overwrite"]) == 0
    assert "| eager (compile false) |" in capsys.readouterr().out.splitlines()[0]


def test_regional_compile_trains_like_eager(tmp_path: Path, fake_data: SimpleNamespace, float64: None,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """The blocks path (what auto takes on one GPU) on the CPU with the cheap aot_eager backend: every block
    compiled in place, the same losses and checkpoint keys as eager, the zero-shot evaluation (run eager) works."""
    import torch._dynamo

    import lowbit.train.books as books
    import lowbit.train.trainer as trainer

    common = {**SMALL, "steps": 3, "warmup": 1, "save_every": 0, "device": "cpu"}
    train(TrainConfig.from_dict({**common, "out": str(tmp_path / "eager"), "compile": False}))
    torch._dynamo.reset()  # other tests' compiled modules share Module._call_impl's cache (its recompile limit)
    built: list[torch.nn.Module] = []
    graphs = [0]
    evaluated: list[int] = []

    def backend(gm: torch.fx.GraphModule, example_inputs: list) -> object:
        graphs[0] += 1
        return torch._dynamo.lookup_backend("aot_eager")(gm, example_inputs)

    def blocks(model: torch.nn.Module, mode: str | None) -> None:
        compile_blocks(model, mode, backend=backend)
        built.append(model)

    def evaluate(*args: object, **kwargs: object) -> object:
        before = graphs[0]
        try:
            return evaluate_zeroshot(*args, **kwargs)
        finally:
            evaluated.append(graphs[0] - before)

    evaluate_zeroshot = books.evaluate_zeroshot
    monkeypatch.setattr(trainer, "resolve_compile", lambda cfg, env: CompileChoice(True, "default", "blocks", "test"))
    monkeypatch.setattr(trainer, "compile_blocks", blocks)
    monkeypatch.setattr(books, "evaluate_zeroshot", evaluate)
    summary = train(TrainConfig.from_dict({**common, "out": str(tmp_path / "blocks")}))
    (model,) = built
    assert all(b._compiled_call_impl is not None for t in (model.visual, model.text) for b in t.blocks)
    assert graphs[0] > 0 and evaluated == [0]  # the blocks were compiled; the evaluation ran them eager
    assert summary["compiled"] == "torch.compile blocks, mode default (test)"
    assert summary["zeroshot"]["fake-colors"] >= 0
    eager = torch.load(tmp_path / "eager" / "checkpoint.pt", weights_only=False)
    compiled = torch.load(tmp_path / "blocks" / "checkpoint.pt", weights_only=False)
    assert eager["model"].keys() == compiled["model"].keys()
    for k, v in eager["model"].items():
        torch.testing.assert_close(compiled["model"][k], v, rtol=0, atol=1e-7, msg=k)


def test_a_compile_failure_under_auto_says_to_pass_no_compile(tmp_path: Path, fake_data: SimpleNamespace,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """compile auto is not something the user asked for: when torch.compile fails, the error says how to run eager
    (one line; the compiler's error stays attached). With an explicit compile: true the error is passed as it is."""
    import torch._dynamo

    import lowbit.train.trainer as trainer

    def broken(gm: torch.fx.GraphModule, example_inputs: list) -> object:
        raise NotImplementedError("this backend cannot compile")

    torch._dynamo.reset()
    monkeypatch.setattr(trainer, "compile_blocks", lambda model, mode: compile_blocks(model, mode, backend=broken))
    for reason, match in (("auto: one GPU", r"compile auto compiled \(auto: one GPU\).*--no-compile"),
                          ("compile true", "this backend cannot compile")):
        monkeypatch.setattr(trainer, "resolve_compile", lambda cfg, env, r=reason: CompileChoice(True, None, "blocks", r))
        torch._dynamo.reset()
        with pytest.raises(Exception, match=match) as info:
            train(TrainConfig.from_dict({**SMALL, "steps": 2, "warmup": 1, "device": "cpu",
                                         "out": str(tmp_path / reason.replace(" ", "_").replace(":", ""))}))
        assert (type(info.value) is RuntimeError) == reason.startswith("auto")
