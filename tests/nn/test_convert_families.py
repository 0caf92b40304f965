"""``lowbit.convert`` on the model families users bring: open_clip (both towers, nn.MultiheadAttention), timm
ViT / EVA, Hugging Face CLIP / ViT / BERT, at tiny random configs on the CPU (float32, eval: no dropout).

Per family: every matmul converts (``module_filter`` accepting all), the converted model's outputs stay within
the recipe's error of the plain model's (exact to float32 rounding with the unquantized ``bf16`` recipe, which
checks the plumbing), and ``state_dict`` keys do not change. Each test is skipped when its package is missing
(the ``third_party`` fixture, tests/conftest.py)."""

from __future__ import annotations

import copy
import io
from collections.abc import Callable

import pytest
import torch
from torch import nn

import lowbit
from lowbit.functional import RECIPES
from lowbit.nn import LayerNormAlias, LowbitLinear, LowbitMultiheadAttention, convert_report, unconvert
from lowbit.nn.block_norms import block_norm_pairs

RECIPE_NAMES = ["bf16", "switchback-sim", "fp8-switchback-sim"]
# Relative Frobenius error of one quantized linear against the exact one (tests/functional/test_linear.py's bound).
# A model's output sums the independent errors of the quantized matmuls in series on its path: every tiny model
# here has 2 blocks of 4 (q/k/v in parallel, out, fc1, fc2) and a head or projection, so up to 9 in series and
# sqrt(9) = 3 times one layer's bound. (At random init each block's output dominates the residual stream: open_clip's
# text features measured 0.038 with switchback and 0.083 with fp8-switchback, per block 1-2% / 2-4%.)
EXACT_TOL = {"int8": 0.03, "e4m3": 0.08, "e5m2": 0.15}
IN_SERIES = 9


def _tol(name: str) -> float:
    recipe = RECIPES[name]
    return max(EXACT_TOL[f] for f in recipe.formats) * IN_SERIES**0.5 if recipe.quantized else 1e-5


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.detach().double() - b.detach().double()).norm() / b.detach().double().norm())


def _everything(fqn: str, m: nn.Module) -> bool:
    return True


def _check_family(plain: nn.Module, run: Callable[[nn.Module], list[torch.Tensor]], recipe: str,
                  fuse: bool = False) -> nn.Module:
    """Convert a copy of ``plain`` (every matmul), compare outputs, keys and unconvert; returns the converted copy."""
    plain.eval()
    model = lowbit.convert(copy.deepcopy(plain), recipe, _everything, fuse=fuse)
    rep = convert_report(model)
    assert rep is not None and rep.converted and not rep.skipped, rep.table()
    assert not [n for n, m in model.named_modules() if type(m) in (nn.Linear, nn.MultiheadAttention)]
    assert list(model.state_dict()) == list(plain.state_dict())
    with torch.no_grad():
        want, got = run(plain), run(model)
    for a, b in zip(got, want, strict=True):
        err = _rel(a, b)
        assert (err > 0 or not RECIPES[recipe].quantized) and err < _tol(recipe), (recipe, err)
    back = unconvert(copy.deepcopy(model))
    assert not [m for m in back.modules() if isinstance(m, (LowbitLinear, LowbitMultiheadAttention, LayerNormAlias))]
    assert [type(m) for m in back.modules()] == [type(m) for m in plain.modules()]  # every class as it was
    with torch.no_grad():
        for a, b in zip(run(back), want, strict=True):
            assert torch.equal(a, b)
    return model


# ---- open_clip ---------------------------------------------------------------------------------------------------
def _open_clip_tiny(open_clip) -> nn.Module:
    torch.manual_seed(0)
    return open_clip.CLIP(embed_dim=16, vision_cfg=dict(image_size=28, patch_size=14, width=32, layers=2, head_width=16),
                          text_cfg=dict(context_length=8, vocab_size=100, width=32, heads=2, layers=2))


def _open_clip_run(model: nn.Module) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    image, text = torch.randn(3, 3, 28, 28, generator=g), torch.randint(0, 100, (3, 8), generator=g)
    return list(model(image, text)[:2])  # image and text features (normalized)


@pytest.mark.parametrize("recipe", RECIPE_NAMES)
def test_open_clip_both_towers(recipe: str, third_party) -> None:
    open_clip = third_party("open_clip")
    plain = _open_clip_tiny(open_clip)
    model = _check_family(plain, _open_clip_run, recipe)
    attn = [m for m in model.modules() if isinstance(m, nn.MultiheadAttention)]
    assert len(attn) == 4 and all(type(m) is LowbitMultiheadAttention for m in attn)  # 2 vision + 2 text blocks
    assert len(convert_report(model).converted) == 16  # per block: in_proj, out_proj, c_fc, c_proj


def test_open_clip_checkpoint_loads_both_ways(third_party) -> None:
    open_clip = third_party("open_clip")
    plain = _open_clip_tiny(open_clip).eval()
    converted = lowbit.convert(copy.deepcopy(plain), "switchback-sim", _everything, fuse=True)
    assert convert_report(converted).fused  # c_fc → GELU → c_proj as one LowbitMLP: keys unchanged still
    buf = io.BytesIO()
    torch.save(converted.state_dict(), buf)
    buf.seek(0)
    fresh = _open_clip_tiny(open_clip).eval()
    with torch.no_grad():
        for p in fresh.parameters():
            p.add_(1.0)
    fresh.load_state_dict(torch.load(buf, weights_only=True))  # strict: same keys, plain tensors
    with torch.no_grad():
        for a, b in zip(_open_clip_run(fresh), _open_clip_run(plain), strict=True):
            assert torch.equal(a, b)
    other = lowbit.convert(_open_clip_tiny(open_clip), "switchback-sim", _everything).eval()
    with torch.no_grad():
        for p in other.parameters():
            p.mul_(0.5)
    other.load_state_dict(plain.state_dict())  # and a plain checkpoint into a converted model
    with torch.no_grad():
        for a, b in zip(_open_clip_run(other), _open_clip_run(lowbit.convert(copy.deepcopy(plain), "switchback-sim",
                                                                             _everything)), strict=True):
            assert torch.equal(a, b)


def test_open_clip_trains_through_converted_attention(third_party) -> None:
    open_clip = third_party("open_clip")
    model = lowbit.convert(_open_clip_tiny(open_clip), "switchback-sim", _everything).train()
    out = model(torch.randn(2, 3, 28, 28), torch.randint(0, 100, (2, 8)))
    open_clip.ClipLoss()(*out[:3]).backward()
    for name in ("visual.transformer.resblocks.0.attn.in_proj_weight", "transformer.resblocks.1.attn.out_proj.weight"):
        grad = dict(model.named_parameters())[name].grad
        assert grad is not None and grad.abs().sum() > 0, name


def test_open_clip_vit_h_default_filter(third_party) -> None:
    open_clip = third_party("open_clip")
    with torch.device("meta"):  # ViT-H-14's structure without its memory
        model = open_clip.create_model("ViT-H-14", pretrained=None, device="meta")
    lowbit.convert(model, "fp8-switchback")
    rep = convert_report(model)
    # the 1280-wide vision tower (32 blocks x in_proj, out_proj, c_fc, c_proj) converts; the 1024-wide text
    # tower (24 blocks) is below the default widths; visual.proj / text_projection are bare parameters
    assert lowbit.nn.matmul_layers(model) == 224 and len(rep.converted) == 128 and len(rep.skipped) == 96
    assert all(k.startswith("visual.") for k in rep.converted)
    assert {r["cause"] for r in rep.rows() if r["status"] == "16-bit"} == {"too small"}
    assert "transformer.resblocks.0.attn.in_proj" in rep.table() and "(too small: 96)" in rep.summary()


# ---- timm --------------------------------------------------------------------------------------------------------
def _timm_run(model: nn.Module) -> list[torch.Tensor]:
    return [model(torch.randn(2, 3, 28, 28, generator=torch.Generator().manual_seed(1)))]


@pytest.mark.parametrize("recipe", RECIPE_NAMES)
@pytest.mark.parametrize("name", ["vit_huge_patch14_clip_224", "eva02_tiny_patch14_224"])
def test_timm_vit_and_eva(name: str, recipe: str, third_party) -> None:
    timm = third_party("timm")
    torch.manual_seed(0)
    plain = timm.create_model(name, pretrained=False, embed_dim=32, depth=2, num_heads=2, img_size=28,
                              num_classes=10)
    model = _check_family(plain, _timm_run, recipe)
    names = set(convert_report(model).converted)
    assert {"blocks.0.attn.qkv", "blocks.0.attn.proj", "blocks.1.mlp.fc1", "blocks.1.mlp.fc2", "head"} <= names


# ---- Hugging Face ------------------------------------------------------------------------------------------------
def _hf_models(transformers) -> dict[str, tuple[nn.Module, Callable[[nn.Module], list[torch.Tensor]]]]:
    small = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2)
    g = torch.Generator().manual_seed(1)
    pixels, ids = torch.randn(2, 3, 28, 28, generator=g), torch.randint(1, 100, (2, 8), generator=g)
    torch.manual_seed(0)
    clip = transformers.CLIPModel(transformers.CLIPConfig(
        text_config=dict(vocab_size=100, max_position_embeddings=8, **small), projection_dim=16,
        vision_config=dict(image_size=28, patch_size=14, **small)))
    vit = transformers.ViTModel(transformers.ViTConfig(image_size=28, patch_size=14, **small))
    bert = transformers.BertModel(transformers.BertConfig(vocab_size=100, max_position_embeddings=16, **small))
    return {
        "clip": (clip, lambda m: [(o := m(pixel_values=pixels, input_ids=ids)).image_embeds, o.text_embeds]),
        "vit": (vit, lambda m: [m(pixel_values=pixels).last_hidden_state]),
        "bert": (bert, lambda m: [m(input_ids=ids).last_hidden_state]),
    }


@pytest.mark.parametrize("recipe", RECIPE_NAMES)
@pytest.mark.parametrize("family", ["clip", "vit", "bert"])
def test_hugging_face_clip_vit_bert(family: str, recipe: str, third_party) -> None:
    transformers = third_party("transformers")
    plain, run = _hf_models(transformers)[family]
    model = _check_family(plain, run, recipe)
    names = {n.rsplit(".", 1)[-1] for n in convert_report(model).converted}
    if family == "vit" and transformers.__version__.startswith("4."):
        family = "bert"  # transformers 4's ViT names its linears as BERT does
    want = {"clip": {"q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2", "visual_projection", "text_projection"},
            "vit": {"q_proj", "k_proj", "v_proj", "o_proj", "fc1", "fc2"},  # transformers 5 (4.x: query, key, ...)
            "bert": {"query", "key", "value", "dense"}}[family]
    assert want <= names


# ---- fuse=True: the MLPs and the LayerNorm in front of them, per family -------------------------------------------
def _fused_norms(model: nn.Module) -> list[str]:
    return sorted(k for k, r in convert_report(model).fused.items() if "LayerNorm fused" in r)


@pytest.mark.parametrize("recipe", RECIPE_NAMES)
def test_fuse_takes_the_layernorm_in_front_of_each_mlp(recipe: str, third_party) -> None:
    """With fuse=True each block's MLP is one LowbitMLP and the LayerNorm that feeds it alone is fused with the
    quantization of its output (LayerNormMLP; timm's norm1 -> attn.qkv and open_clip's ln_1 -> attn too): same outputs within the recipe's error
    (float32 rounding with bf16), same keys, and unconvert gives every original class back (open_clip's LayerNorm)."""
    open_clip, timm, transformers = third_party("open_clip"), third_party("timm"), third_party("transformers")
    torch.manual_seed(0)
    timm_vit = timm.create_model("vit_huge_patch14_clip_224", pretrained=False, embed_dim=32, depth=2, num_heads=2,
                                 img_size=28, num_classes=10)
    hf_clip, hf_run = _hf_models(transformers)["clip"]
    for plain, run, want in (
            (_open_clip_tiny(open_clip), _open_clip_run,
             [f"{t}resblocks.{i}.{n}" for t in ("transformer.", "visual.transformer.") for i in (0, 1)
              for n in (f"ln_1 → {t}resblocks.{i}.attn", f"ln_2 → {t}resblocks.{i}.mlp")]),
            (timm_vit, _timm_run, [f"blocks.{i}.{n}" for i in (0, 1)
                                   for n in ("norm1 → blocks.{i}.attn.qkv", "norm2 → blocks.{i}.mlp")]),
            (hf_clip, hf_run, [f"{t}_model.encoder.layers.{i}.{n}" for t in ("text", "vision") for i in (0, 1)
                               for n in (f"layer_norm1 → {t}_model.encoder.layers.{i}.self_attn.q_proj",
                                         f"layer_norm2 → {t}_model.encoder.layers.{i}.mlp")])):
        want = sorted(w.replace("{i}", w.split(".")[1]) for w in want)
        model = _check_family(plain, run, recipe, fuse=True)
        assert _fused_norms(model) == want, convert_report(model).table()
        assert sum(isinstance(m, LayerNormAlias) for m in model.modules()) == len(want)
        again = lowbit.convert(model, recipe, _everything, fuse=True)  # converting again changes nothing
        assert _fused_norms(again) == [] and sum(isinstance(m, LayerNormAlias) for m in again.modules()) == len(want)


def test_only_the_exact_block_classes_whose_forward_was_read(third_party) -> None:
    open_clip = third_party("open_clip")
    block = _open_clip_tiny(open_clip).transformer.resblocks[0]
    assert [p[:2] for p in block_norm_pairs(block)] == [("ln_1", "attn"), ("ln_2", "mlp")]
    block.__class__ = type("MyBlock", (type(block),), {})  # a subclass may call its LayerNorms differently
    assert block_norm_pairs(block) == ()
