"""``lowbit bench step``: the full CLIP training step per recipe, end to end on the CPU at the tiny preset."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from lowbit.bench import step as bench_step
from lowbit.cli.main import main


def _run(tmp_path: Path, *recipes: str, extra: tuple[str, ...] = ()) -> dict:
    rc = main(["bench", "step", "--preset", "tiny", "--recipe", *recipes, "--batch-size", "4", "--steps", "2",
               "--warmup", "1", "--device", "cpu", "--no-anchors", "--out", str(tmp_path), *extra])
    assert rc == 0
    return json.loads((tmp_path / "step.json").read_text())


def test_step_table_has_each_recipe_with_throughput_and_ratio(tmp_path: Path, capsys) -> None:
    data = _run(tmp_path, "none", "switchback-sim")
    rows = {r["recipe"]: r for r in data["rows"]}
    assert list(rows) == ["none", "switchback-sim"]
    assert data["env"]["torch"] == torch.__version__ and "device" in data["env"]
    for r in rows.values():
        assert "error" not in r
        assert r["batch"] == 4 and r["ms_per_step"] > 0
        assert r["images_per_s"] == pytest.approx(4 / r["ms_per_step"] * 1000)
        assert r["ms_min"] <= r["ms_per_step"] <= r["ms_max"]
    assert rows["none"]["vs_bf16"] == pytest.approx(1.0)
    assert rows["switchback-sim"]["vs_bf16"] == pytest.approx(
        rows["switchback-sim"]["images_per_s"] / rows["none"]["images_per_s"])
    # the tiny CLIP has 22 linears; the recipe converts all but the two final projections (as lowbit train)
    assert rows["none"]["converted"] == "0/22" and rows["switchback-sim"]["converted"] == "20/22"
    md = (tmp_path / "step.md").read_text()
    assert "| tiny | none | 4 |" in md and "| tiny | switchback-sim | 4 |" in md
    assert "| tiny | switchback-sim |" in capsys.readouterr().out


def test_failing_row_is_recorded_and_baseline_is_added_first(tmp_path: Path) -> None:
    data = _run(tmp_path, "no-such-recipe", "switchback-sim")
    recipes = [r["recipe"] for r in data["rows"]]
    assert recipes == ["bf16", "no-such-recipe", "switchback-sim"]  # baseline prepended when not asked for
    bad = data["rows"][1]
    assert "no-such-recipe" in bad["error"] and "images_per_s" not in bad
    assert data["rows"][2]["images_per_s"] > 0 and data["rows"][2]["vs_bf16"] > 0


def test_layers_auto_keeps_small_layers_16bit_and_the_step_trains() -> None:
    dev = torch.device("cpu")
    _, conv = bench_step.build_model("tiny", "switchback-sim", dev, layers="auto")
    assert conv == "0/22"  # tiny widths are below lowbit.nn's size threshold
    model, conv = bench_step.build_model("tiny", "switchback-sim", dev)
    assert conv == "20/22"
    images, tokens = bench_step.random_batch(model, 5, dev)
    assert images.shape == (5, 3, 32, 32) and tokens.shape == (5, 77)
    assert ((tokens == model.text.eot_id).sum(-1) == 1).all()  # one end token per caption
    opt = bench_step.make_optimizer(model, "stableadamw", None)
    before = model.visual.blocks[0].mlp.fc.weight.detach().clone()
    from lowbit.models import clip_loss

    clip_loss(*model(images, tokens)).backward()
    opt.step()
    assert not torch.equal(before, model.visual.blocks[0].mlp.fc.weight)
    decay = {id(p) for g in opt.param_groups if g["weight_decay"] > 0 for p in g["params"]}
    assert id(model.visual.blocks[0].mlp.fc.weight) in decay and id(model.logit_scale) not in decay


def test_compiled_quantize_modes_give_one_row_each(tmp_path: Path) -> None:
    """``--compiled-quantize kernel inductor``: a compiled lowbit recipe is timed once per mode, side by side;
    the baseline once. Every row ends its timed steps with a finite loss (else it would hold an error)."""
    data = _run(tmp_path, "none", "switchback", extra=("--compile", "--compiled-quantize", "kernel", "inductor"))
    rows = [(r["recipe"], r["quantize"]) for r in data["rows"]]
    assert rows == [("none", "-"), ("switchback", "kernel"), ("switchback", "inductor")]
    for r in data["rows"]:
        assert "error" not in r, r
        assert r["compiled"] == "blocks" and r["vs_bf16"] > 0 and r["loss"] > 0
    assert "| tiny | switchback | 4 | blocks | inductor |" in (tmp_path / "step.md").read_text()


def test_a_step_with_a_non_finite_loss_is_an_error_row(tmp_path: Path, monkeypatch) -> None:
    import lowbit.models

    real = lowbit.models.clip_loss
    monkeypatch.setattr("lowbit.train.step.clip_loss", lambda *a: real(*a) * float("nan"))  # the trainer's step
    data = _run(tmp_path, "none")
    (row,) = data["rows"]
    assert row["error"].startswith("FloatingPointError: tiny none: non-finite loss nan"), row


@pytest.mark.parametrize("preset", ["tiny", "vit-b-32", "vit-h-14"])
def test_blocks_scope_compiles_every_transformer_block_of_both_towers(preset: str, monkeypatch) -> None:
    """``bench step --compile-scope blocks`` goes through ``bench model``'s compile_model: for lowbit's CLIP the
    repeated blocks it finds are exactly the blocks of the two towers, each compiled once in place."""
    from lowbit.bench.common import repeated_blocks
    from lowbit.models import CLIP, get_config

    with torch.device("meta"):
        model = CLIP(get_config(preset))
    towers = [*model.visual.blocks, *model.text.blocks]
    assert repeated_blocks(model) == towers
    compiled: list[torch.nn.Module] = []
    monkeypatch.setattr(torch.nn.Module, "compile", lambda self, **kw: compiled.append(self))
    assert bench_step.compile_model(model, "blocks", "reduce-overhead") is model
    assert compiled == towers
    with pytest.raises(ValueError, match="--compile-scope must be blocks or model"):
        bench_step.compile_model(model, "layers")


def test_layers_auto_row_says_which_layers_stayed_16bit(tmp_path: Path, capsys) -> None:
    """``--layers auto``: the row carries the convert report's measured summary (here: on the CPU nothing is
    measured, the width threshold keeps every tiny layer 16-bit), printed and in step.json; absent otherwise."""
    data = _run(tmp_path, "switchback-sim", extra=("--layers", "auto"))
    rows = {r["recipe"]: r for r in data["rows"]}
    summary = rows["switchback-sim"]["layers_auto"]
    assert summary == "0 of 22 linears in switchback-sim; 16-bit: not measured (cpu), width threshold 20, module_filter 2"
    assert f"[tiny switchback-sim] layers auto: {summary}" in capsys.readouterr().out
    assert "layers_auto" not in rows["bf16"]
    assert "layers_auto" not in _run(tmp_path / "clip", "switchback-sim")["rows"][1]
