"""``lowbit bench model`` and ``convert(..., fuse=True)`` on the real timm and transformers packages (tiny random
models, no download). CI does not install either package: each test is skipped when its package is missing
(``test_bench_model.py`` covers the same paths with stand-ins); the ``third_party`` fixture (tests/conftest.py)
stands in for a torchvision that cannot load beside this torch."""

from __future__ import annotations

import copy
import json
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from lowbit.bench import model as bench_model
from lowbit.cli.main import main
from lowbit.models import fused_counts
from lowbit.nn import LowbitMLP, convert_report

# hf:clip at toy widths (both towers 2 layers of 32, 28-pixel images in 14-pixel patches)
HF_TINY = ("hf:clip:hidden_size=32,intermediate_size=64,num_hidden_layers=2,num_attention_heads=2,"
           "vision.image_size=28,vision.patch_size=14,projection_dim=16")
TIMM_TINY = "timm:vit_huge_patch14_clip_224:embed_dim=32,depth=2,num_heads=2,img_size=28"
# ViT-H/14 widths (issue #18): OpenCLIP's ViT-H-14 towers
HF_VIT_H = ("hf:clip:vision.hidden_size=1280,vision.intermediate_size=5120,vision.num_hidden_layers=32,"
            "vision.num_attention_heads=16,vision.patch_size=14,vision.image_size=224,text.hidden_size=1024,"
            "text.intermediate_size=4096,text.num_hidden_layers=24,text.num_attention_heads=16,projection_dim=1024")


def _bench(tmp_path: Path, spec: str, *recipes: str) -> dict[str, dict]:
    rc = main(["bench", "model", "--model", spec, "--recipe", *recipes, "--batch-size", "2", "--steps", "1",
               "--warmup", "1", "--device", "cpu", "--no-anchors", "--layers", "all", "--fuse",
               "--out", str(tmp_path)])
    assert rc == 0
    rows = json.loads((tmp_path / "model.json").read_text())["rows"]
    for r in rows:
        assert "error" not in r, r
        assert r["loss"] > 0 and r["unit"] == "images/s"
    return {r["recipe"]: r for r in rows}


def _same_with_and_without_fusion(model: torch.nn.Module, inputs: dict, recipe: str = "switchback-sim",
                                  packed: bool = False) -> None:
    """The fused conversion computes what the per-linear one does (float32, CPU, eval: no dropout). ``packed``: the
    fused model runs q/k/v as one GEMM, whose weight shares one tensor-wise int8 scale where each linear had its own:
    then the two agree within the quantization error of the matmuls in series (up to 9 in these 2-block models,
    sqrt(9) x int8's 0.03 per linear, as tests/nn/test_convert_families.py), not to rounding."""
    import lowbit

    per_linear = lowbit.convert(copy.deepcopy(model), recipe, lambda fqn, m: True).eval()
    fused = lowbit.convert(model, recipe, lambda fqn, m: True, fuse=True).eval()
    assert convert_report(fused).fused
    with torch.no_grad():
        a, b = per_linear(**inputs), fused(**inputs)
    a, b = (getattr(a, "logits_per_image", a), getattr(b, "logits_per_image", b))
    if packed:
        rel = float((b.double() - a.double()).norm() / a.double().norm())
        assert 0 < rel < 0.03 * 9**0.5, rel
    else:
        torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-5)


# ---- timm -------------------------------------------------------------------------------------------------------
def test_timm_vit_tiny_end_to_end_with_fused_mlps(tmp_path: Path, third_party) -> None:
    third_party("timm")
    rows = _bench(tmp_path, TIMM_TINY, "bf16", "switchback-sim", "fp8-switchback-sim")
    assert rows["bf16"]["converted"] == "0/9" and rows["bf16"]["fused"] == 0
    for recipe in ("switchback-sim", "fp8-switchback-sim"):  # 2 x (qkv, proj, fc1, fc2) + head; both Mlps fused
        assert rows[recipe]["converted"] == "9/9" and rows[recipe]["fused"] == 2


def test_timm_input_size_follows_img_size_and_in_chans(third_party) -> None:
    third_party("timm")
    w = bench_model.build_workload(bench_model.parse_spec(TIMM_TINY + ",in_chans=1"))
    assert bench_model.timm_input_size(w.model) == (1, 28, 28)  # pretrained_cfg still says (3, 224, 224)
    batch = w.batch(2, torch.device("cpu"))
    assert batch["x"].shape == (2, 1, 28, 28) and batch["labels"].shape == (2,)
    _same_with_and_without_fusion(w.model, {"x": batch["x"]})


def test_timm_vit_h_one_convert_call_fuses_every_mlp(third_party) -> None:
    third_party("timm")
    with torch.device("meta"):  # ViT-H/14's structure without its memory
        w = bench_model.build_workload(bench_model.parse_spec("timm:vit_huge_patch14_clip_224"))
    model, converted, fused = bench_model.convert_model(w.model, "fp8-switchback", "auto", fuse=True)
    assert (converted, fused) == ("128/129", 32)  # the 1280 -> 1000 head is below the default filter's widths
    rep = convert_report(model)
    assert rep is not None and set(rep.fused.values()) == {"fc1 → gelu → fc2 (timm Mlp)", "LayerNorm fused with the quantization of its output"}
    assert all(isinstance(b.mlp, LowbitMLP) for b in model.blocks)
    assert fused_counts(model)[1] == 64  # each block's norm2 (-> mlp) and norm1 (-> attn.qkv)


# ---- transformers -----------------------------------------------------------------------------------------------
def test_hf_clip_tiny_end_to_end_with_fused_mlps(tmp_path: Path, third_party) -> None:
    third_party("transformers")
    rows = _bench(tmp_path, HF_TINY, "bf16", "fp8-switchback-sim")
    # per tower 2 x (q, k, v, out, fc1, fc2), plus the two projections; the 4 CLIPMLPs fused
    assert rows["fp8-switchback-sim"]["converted"] == "26/26" and rows["fp8-switchback-sim"]["fused"] == 4


def test_hf_siglip_tiny_end_to_end_packed_and_fused(tmp_path: Path, third_party) -> None:
    """hf:siglip (the so400m job's model type) at toy widths: both towers' MLPs, the attention-pooling head's MLP, and
    per encoder layer q/k/v packed with layer_norm1 and the MLP with layer_norm2."""
    third_party("transformers")
    spec = HF_TINY.replace("hf:clip:", "hf:siglip:").replace(",projection_dim=16", "")
    rows = _bench(tmp_path, spec, "bf16", "fp8-switchback-sim")
    assert rows["fp8-switchback-sim"]["fused"] == 5  # 4 SiglipMLPs + the head's
    w = bench_model.build_workload(bench_model.parse_spec(spec))
    model, _, _ = bench_model.convert_model(w.model, "switchback-sim", "all", fuse=True)
    fused = convert_report(model).fused
    assert sum("as one GEMM" in r for r in fused.values()) == 4
    assert sum(r == "LayerNorm fused with the quantization of its output" for r in fused.values()) == 8
    w = bench_model.build_workload(bench_model.parse_spec(spec))
    _same_with_and_without_fusion(w.model, w.batch(2, torch.device("cpu")), packed=True)


@pytest.mark.parametrize(("act", "fused_as"), [("quick_gelu", "quick_gelu"), ("gelu", "gelu"),
                                               ("gelu_new", "gelu_tanh"), ("gelu_pytorch_tanh", "gelu_tanh")])
def test_hf_clip_activations_are_recognised(act: str, fused_as: str, third_party) -> None:
    third_party("transformers")
    w = bench_model.build_workload(bench_model.parse_spec(f"{HF_TINY},hidden_act={act}"))
    model, _, fused = bench_model.convert_model(w.model, "switchback-sim", "all", fuse=True)
    # and each layer_norm2 (-> mlp) and layer_norm1 (-> the packed q/k/v)
    assert fused == 4 and fused_counts(model)[1] == 8, convert_report(model)
    assert set(convert_report(model).fused.values()) == {
        f"fc1 → {fused_as} → fc2 (Hugging Face *MLP)", "LayerNorm fused with the quantization of its output",
        "q_proj + k_proj + v_proj as one GEMM over their concatenated weights"}
    w = bench_model.build_workload(bench_model.parse_spec(f"{HF_TINY},hidden_act={act}"))
    batch = w.batch(2, torch.device("cpu"))
    _same_with_and_without_fusion(w.model, {k: batch[k] for k in ("pixel_values", "input_ids")}, packed=True)


def test_hf_clip_vit_h_one_convert_call_fuses_the_vision_mlps(third_party) -> None:
    third_party("transformers")
    with torch.device("meta"):
        w = bench_model.build_workload(bench_model.parse_spec(HF_VIT_H))
    model, converted, fused = bench_model.convert_model(w.model, "fp8-switchback", "auto", fuse=True)
    # the vision tower's 32 x (q, k, v, out, fc1, fc2) at width 1280; the 1024-wide text tower and the projections
    # are below the default filter's widths
    assert (converted, fused) == ("192/338", 32)
    rep = convert_report(model)
    assert rep is not None and all(k.startswith("vision_model.encoder.layers.") for k in rep.fused)
    assert "too small to gain (1024→4096" in rep.not_fused["text_model.encoder.layers.0.mlp"]


# ---- open_clip ---------------------------------------------------------------------------------------------------
# OpenCLIP's ViT-H-14 at toy widths: both towers 2 blocks of 32 (nn.MultiheadAttention), 8-token context
OPEN_CLIP_TINY = ("open_clip:ViT-H-14:embed_dim=16,vision.width=32,vision.layers=2,vision.head_width=16,"
                  "vision.image_size=28,text.width=32,text.heads=2,text.layers=2,text.context_length=8")


def test_open_clip_spec_options_reach_the_tower_configs() -> None:
    """Runs without open_clip: a stand-in with the two functions open_clip_kwargs calls."""

    def create_model(model_name, pretrained=None, output_dict=None, force_quick_gelu=False, **model_kwargs):
        raise AssertionError("not called")

    configs = {"ViT-H-14": {"embed_dim": 1024, "vision_cfg": {"width": 1280, "layers": 32},
                            "text_cfg": {"width": 1024, "context_length": 77}}}
    fake = SimpleNamespace(get_model_config=configs.get, create_model=create_model)
    kw = bench_model.open_clip_kwargs(fake, bench_model.parse_spec(
        "open_clip:ViT-H-14:vision.width=32,text.context_length=8,embed_dim=16,force_quick_gelu=true"))
    assert kw == {"embed_dim": 16, "force_quick_gelu": True, "vision_cfg": {"width": 32, "layers": 32},
                  "text_cfg": {"width": 1024, "context_length": 8}}
    assert configs["ViT-H-14"]["vision_cfg"]["width"] == 1280  # the package's config is not changed
    for bad, words in [("open_clip:ViT-X:embed_dim=1", "knows no model 'ViT-X'"),
                       ("open_clip:ViT-H-14:visual.width=3", "only vision.<key> and text.<key>"),
                       ("open_clip:ViT-H-14:widht=3", "'widht' is neither a create_model argument")]:
        with pytest.raises(ValueError, match=words):
            bench_model.open_clip_kwargs(fake, bench_model.parse_spec(bad))


def test_open_clip_tiny_end_to_end(tmp_path: Path, third_party, capsys) -> None:
    third_party("open_clip")
    rows = _bench(tmp_path, OPEN_CLIP_TINY, "bf16", "switchback-sim", "fp8-switchback-sim")
    assert rows["bf16"]["converted"] == "0/16" and "convert_report" not in rows["bf16"]
    for recipe in ("switchback-sim", "fp8-switchback-sim"):  # 2 towers x 2 blocks x (in_proj, out_proj, c_fc, c_proj)
        assert rows[recipe]["converted"] == "16/16" and rows[recipe]["fused"] == 4
        assert rows[recipe]["convert_report"].startswith(f"lowbit.convert: 16 linear layer(s) → {recipe}; 0 skipped")
    assert "16 linear layer(s) → switchback-sim" in capsys.readouterr().out
    w = bench_model.build_workload(bench_model.parse_spec(OPEN_CLIP_TINY))
    batch = w.batch(2, torch.device("cpu"))
    assert batch["image"].shape == (2, 3, 28, 28) and batch["text"].shape == (2, 8)  # the tokenizer's length
    assert w.loss(w.model, batch).ndim == 0


def test_open_clip_vit_h_default_filter_converts_the_vision_tower(third_party) -> None:
    third_party("open_clip")
    with torch.device("meta"):  # create_model's own device argument, else it moves the model to the CPU
        w = bench_model.build_workload(bench_model.parse_spec("open_clip:ViT-H-14:device=meta"))
    model, converted, fused = bench_model.convert_model(w.model, "fp8-switchback", "auto", fuse=False)
    # 32 vision blocks x 4 at width 1280; the 24 text blocks (width 1024) stay 16-bit, the report says why
    assert (converted, fused) == ("128/224", 0)
    assert "(too small: 96)" in convert_report(model).summary()
    with torch.device("meta"):
        w = bench_model.build_workload(bench_model.parse_spec("open_clip:ViT-H-14:device=meta"))
    model, converted, fused = bench_model.convert_model(w.model, "fp8-switchback", "auto", fuse=True)
    # each vision block's ln_2 (-> its LayerNormMLP) and ln_1 (-> its LowbitMultiheadAttention's in-projection)
    assert (converted, fused, fused_counts(model)) == ("128/224", 32, (32, 64))


def test_open_clip_missing_names_its_pip_package(tmp_path: Path, capsys, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "open_clip", None)  # import of it raises ModuleNotFoundError, installed or not
    rc = main(["bench", "model", "--model", "open_clip:ViT-H-14", "--device", "cpu", "--out", str(tmp_path)])
    assert rc == 2 and capsys.readouterr().err.strip().splitlines() == [
        "lowbit bench: error: --model open_clip:ViT-H-14 needs the open_clip package, which is not installed: "
        "pip install open_clip_torch"]
