"""``lowbit train --fuse``: each block's MLP trains as one ``LayerNormMLP`` (its LayerNorms fused too), the first
line says so, and a checkpoint moves freely between fused and per-linear runs (same keys, same numbers on the CPU)."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from train_fakes import SMALL

from lowbit.cli.main import main
from lowbit.nn import LayerNormAlias, LayerNormLinear, LayerNormMLP, LowbitLinear, LowbitMLP
from lowbit.train import TrainConfig, load_checkpoint, train

RECIPE = "switchback"  # the real recipe: its PyTorch reference numerics on the CPU


def _losses(run: Path) -> dict[int, float]:
    with (run / "metrics.csv").open() as f:
        return {int(r["step"]): float(r["loss"]) for r in csv.DictReader(f)}


@pytest.fixture
def built(monkeypatch: pytest.MonkeyPatch) -> list[torch.nn.Module]:
    """The models the trainer builds (convert_clip's return values), to look inside them."""
    import lowbit.train.trainer as trainer

    models: list[torch.nn.Module] = []
    real = trainer.convert_clip

    def spy(*args: object, **kwargs: object) -> torch.nn.Module:
        models.append(real(*args, **kwargs))
        return models[-1]

    monkeypatch.setattr(trainer, "convert_clip", spy)
    return models


def _cli(tmp_path: Path, name: str, *extra: str) -> list[str]:
    model = SMALL["model"]
    return ["train", "--preset", "tiny", "--data", "fake", "--zeroshot", "fake", "--batch-size", "16", "--steps", "4",
            "--warmup", "1", "--optimizer", "adamw", "--recipe", RECIPE, "--no-progress", "--threads", "1",
            "--out", str(tmp_path / name),
            *[f"--set=model.{tower}.{k}={v}" for tower in ("vision", "text") for k, v in model[tower].items()],
            f"--set=model.embed_dim={model['embed_dim']}", *extra]


def test_fuse_trains_fused_blocks_and_says_so(tmp_path: Path, fake_data: SimpleNamespace, built: list,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    assert main(_cli(tmp_path, "fused", "--fuse")) == 0
    first = capsys.readouterr().out.splitlines()[0]
    # 1 block per tower: 2 MLPs fused, and 4 LayerNorms (ln1 → qkv, ln2 → MLP) fused with their consumers
    assert "| recipe switchback (8/10 linears), layers clip, fused (2 MLPs, 4 LayerNorms) |" in first
    (model,) = built
    for tower in (model.visual, model.text):
        block = tower.blocks[0]
        assert isinstance(block.mlp, LayerNormMLP) and isinstance(block.mlp, LowbitMLP)
        assert isinstance(block.attn.qkv, LayerNormLinear)
        assert isinstance(block.ln1, LayerNormAlias) and isinstance(block.ln2, LayerNormAlias)
        assert isinstance(block.mlp.fc, LowbitLinear) and block.mlp.recipe.name == RECIPE
    summary = json.loads((tmp_path / "fused" / "summary.json").read_text())
    assert summary["status"] == "finished" and summary["config"]["fuse"] is True and summary["step"] == 4
    assert sorted(_losses(tmp_path / "fused")) == [1, 2, 3, 4] and "fake-colors" in summary["zeroshot"]


def test_no_fuse_is_per_linear(tmp_path: Path, fake_data: SimpleNamespace, built: list,
                               capsys: pytest.CaptureFixture[str]) -> None:
    assert main(_cli(tmp_path, "plain", "--steps", "1", "--zeroshot", "none", "--no-fuse")) == 0
    assert "layers clip, per-linear (not fused) |" in capsys.readouterr().out.splitlines()[0]
    assert not any(isinstance(m, LowbitMLP | LayerNormAlias) for m in built[0].modules())
    summary = json.loads((tmp_path / "plain" / "summary.json").read_text())
    assert summary["config"]["fuse"] is False and summary["fused"] == "per-linear (not fused)"
    with pytest.raises(ValueError, match="bad training option fuse='yes'"):
        TrainConfig(fuse="yes")  # type: ignore[arg-type]


def test_fuse_auto_is_the_default_and_per_linear_when_eager(tmp_path: Path, fake_data: SimpleNamespace, built: list,
                                                           capsys: pytest.CaptureFixture[str]) -> None:
    """On the CPU compile auto is eager, so fuse auto converts per linear and the first line says why."""
    assert TrainConfig().fuse == "auto"
    assert main(_cli(tmp_path, "auto", "--steps", "1", "--zeroshot", "none")) == 0
    assert "layers clip, per-linear (auto: eager) |" in capsys.readouterr().out.splitlines()[0]
    assert not any(isinstance(m, LowbitMLP | LayerNormAlias) for m in built[0].modules())
    assert json.loads((tmp_path / "auto" / "summary.json").read_text())["config"]["fuse"] == "auto"


@pytest.mark.parametrize(("fuse", "recipe", "compiled", "expected"), [
    ("auto", "fp8-switchback", True, (True, "auto: compiled")),
    ("auto", "switchback", True, (True, "auto: compiled")),
    ("auto", "switchback-m", True, (True, "auto: compiled")),
    ("auto", "fp8-tensorwise", True, (False, "auto: fp8-tensorwise is outside the row-wise flow")),
    ("auto", "switchback-block", True, (False, "auto: switchback-block is outside the row-wise flow")),
    ("auto", "none", True, (False, "auto: none is 16-bit")),
    ("auto", "bf16", True, (False, "auto: bf16 is 16-bit")),
    ("auto", "fp8-switchback", False, (False, "auto: eager")),
    (True, "fp8-tensorwise", False, (True, "fuse true")),
    (False, "fp8-switchback", True, (False, "fuse false")),
])
def test_resolve_fuse(fuse: object, recipe: str, compiled: bool, expected: tuple[bool, str]) -> None:
    """fuse auto follows the compile choice and the recipe's data flow; true and false are taken as given."""
    from lowbit.train.compiling import CompileChoice, resolve_fuse

    choice = (CompileChoice(True, "reduce-overhead", "blocks", "auto: one GPU") if compiled
              else CompileChoice(False, None, "none", "auto: CPU"))
    assert resolve_fuse(TrainConfig(recipe=recipe, fuse=fuse), choice) == expected  # type: ignore[arg-type]


def test_resume_across_fuse_is_allowed_and_exact(tmp_path: Path, fake_data: SimpleNamespace) -> None:
    """A checkpoint written fused resumes per-linear (and back): same state_dict keys and, in float32 on the CPU,
    the same numbers, so the resumed run ends where an uninterrupted per-linear run does, bit for bit."""
    common = {**SMALL, "recipe": RECIPE, "steps": 8, "save_every": 0, "zeroshot": "none"}
    train(TrainConfig.from_dict({**common, "out": str(tmp_path / "full")}))
    train(TrainConfig.from_dict({**common, "out": str(tmp_path / "split"), "fuse": True, "stop_at": 4}))
    ckpt = load_checkpoint(tmp_path / "split")
    assert ckpt["step"] == 4 and ckpt["config"]["fuse"] is True
    plain = torch.load(tmp_path / "full" / "checkpoint.pt", weights_only=True)
    assert list(ckpt["model"]) == list(plain["model"])  # the keys of a per-linear run
    summary = train(TrainConfig.from_dict({**common, "resume": str(tmp_path / "split"), "fuse": False}))
    assert summary["config"]["fuse"] is False and summary["step"] == 8
    full, split = _losses(tmp_path / "full"), _losses(tmp_path / "split")
    assert sorted(split) == list(range(1, 9)) and split == full  # bitwise: fused steps 1-4, per-linear 5-8
    a, b = load_checkpoint(tmp_path / "full"), load_checkpoint(tmp_path / "split")
    for k, v in a["model"].items():
        assert torch.equal(v, b["model"][k]), k
