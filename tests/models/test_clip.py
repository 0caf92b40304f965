"""CLIP model: shapes, parameter counts per preset, pooling, loss, init, config validation."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from lowbit.models import (
    CLIP,
    CLIPConfig,
    clip_loss,
    count_parameters,
    get_config,
    get_tokenizer,
    list_presets,
)
from lowbit.nn.layer_scale import LayerScale

# Whole-CLIP parameter counts (qk_norm off, no LayerScale). vit-b-32 / vit-l-14 match OpenAI CLIP exactly,
# vit-h-14 matches open_clip ViT-H-14 (986M).
PARAMS = {
    "tiny": 768_385,
    "vit-s-32": 63_085_825,
    "vit-b-32": 151_277_313,
    "vit-l-14": 427_616_513,
    "vit-h-14": 986_109_441,
}


def _tiny(**kw: object) -> CLIP:
    return CLIP(get_config("tiny", **kw))


def test_presets_listed() -> None:
    assert list_presets() == list(PARAMS)


@pytest.mark.parametrize("name", list(PARAMS))
def test_parameter_count_on_meta(name: str) -> None:
    with torch.device("meta"):
        model = CLIP(get_config(name))
    assert count_parameters(model) == PARAMS[name]


def test_vit_h_shapes_on_meta() -> None:
    with torch.device("meta"):
        model = CLIP(get_config("vit-h-14"))
        img, txt, scale = model(torch.empty(2, 3, 224, 224), torch.zeros(2, 77, dtype=torch.long))
    assert img.shape == (2, 1024) and txt.shape == (2, 1024) and scale.shape == ()
    assert model.visual.positional_embedding.shape == (16 * 16 + 1, 1280)
    assert len(model.visual.blocks) == 32 and len(model.text.blocks) == 24


def test_layer_scale_and_qk_norm_add_expected_params() -> None:
    base = count_parameters(_tiny())
    cfg = get_config("tiny")
    n_blocks = cfg.vision.layers + cfg.text.layers
    ls = count_parameters(_tiny(layer_scale_init=0.0))
    assert ls - base == 2 * (cfg.vision.layers * cfg.vision.width + cfg.text.layers * cfg.text.width)
    qk = count_parameters(_tiny(qk_norm=True))
    head_dim = cfg.vision.width // cfg.vision.heads
    assert qk - base == n_blocks * 2 * 2 * head_dim  # q and k LayerNorm (weight + bias) per block
    assert head_dim == cfg.text.width // cfg.text.heads


def test_forward_shapes_normalized_and_logit_scale() -> None:
    model = _tiny()
    tok = get_tokenizer("bytes", model.config.text.context_length)
    img, txt, scale = model(torch.randn(3, 3, 32, 32), tok(["a red square", "two", "x"]))
    assert img.shape == txt.shape == (3, 128)
    torch.testing.assert_close(img.norm(dim=-1), torch.ones(3))
    torch.testing.assert_close(txt.norm(dim=-1), torch.ones(3))
    assert math.isclose(scale.item(), 1 / 0.07, rel_tol=1e-5)
    with torch.no_grad():
        model.logit_scale.fill_(10.0)
    assert math.isclose(model(torch.randn(1, 3, 32, 32), tok(["a"]))[2].item(), 100.0, rel_tol=1e-5)
    model.clamp_logit_scale_()
    assert math.isclose(model.logit_scale.item(), math.log(100), rel_tol=1e-6)


def test_all_linears_are_nn_linear_and_named_for_filters() -> None:
    names = {n for n, m in _tiny().named_modules() if isinstance(m, nn.Linear)}
    assert {"visual.proj", "text.proj", "visual.blocks.0.attn.qkv", "text.blocks.1.mlp.fc"} <= names
    assert "visual.blocks.2.attn.out" in names and "text.blocks.0.mlp.proj" in names


def test_text_pooling_at_end_token_ignores_padding() -> None:
    model = _tiny().eval()
    tok = get_tokenizer("bytes", 32)
    t = tok(["hello world"])
    idx = model.text.pool_index(t)
    assert t[0, idx[0]].item() == tok.eot_id
    # Changing anything after the end token (padding) must not change the features: causal + EOT pooling.
    t2 = t.clone()
    t2[0, idx[0] + 1 :] = 77
    torch.testing.assert_close(model.encode_text(t), model.encode_text(t2))
    # A prefix change does change them.
    t3 = t.clone()
    t3[0, 2] = 90
    assert not torch.allclose(model.encode_text(t), model.encode_text(t3))


def test_vision_init_like_open_clip() -> None:
    torch.manual_seed(0)
    model = CLIP(get_config("vit-s-32", text={"layers": 1}, vision={"layers": 1}))
    w = 384
    assert abs(model.visual.positional_embedding.std().item() - w**-0.5) < 0.005
    assert abs(model.text.token_embedding.weight.std().item() - 0.02) < 0.001
    assert abs(model.text.positional_embedding.std().item() - 0.01) < 0.001
    assert model.visual.blocks[0].attn.qkv.bias.abs().max().item() == 0.0


def test_zero_layer_scale_makes_blocks_identity() -> None:
    model = _tiny(layer_scale_init=0.0)
    block = model.visual.blocks[0]
    assert isinstance(block.ls1, LayerScale) and isinstance(block.ls2, LayerScale)
    x = torch.randn(2, 5, 128)
    torch.testing.assert_close(block(x), x)


def test_clip_loss_symmetric_ce_and_low_for_matching_pairs() -> None:
    torch.manual_seed(0)
    f = torch.nn.functional.normalize(torch.randn(8, 16), dim=-1)
    scale = torch.tensor(100.0)
    assert clip_loss(f, f, scale).item() < 0.05
    g = torch.nn.functional.normalize(torch.randn(8, 16), dim=-1)
    logits = scale * f @ g.t()
    expect = (torch.nn.functional.cross_entropy(logits, torch.arange(8)) + torch.nn.functional.cross_entropy(logits.t(), torch.arange(8))) / 2
    torch.testing.assert_close(clip_loss(f, g, scale), expect)
    with pytest.raises(ValueError, match="same shape"):
        clip_loss(f, g[:4], scale)


def test_bad_inputs_named() -> None:
    model = _tiny()
    with pytest.raises(ValueError, match=r"\[B, 3, 32, 32\]"):
        model.encode_image(torch.randn(1, 3, 64, 64))
    with pytest.raises(ValueError, match="<= 77"):
        model.encode_text(torch.zeros(1, 80, dtype=torch.long))
    with pytest.raises(TypeError, match="int64"):
        model.encode_text(torch.zeros(1, 8))


@pytest.mark.parametrize(
    ("kw", "match"),
    [
        ({"embed_dim": 0}, "embed_dim"),
        ({"vision": {"patch_size": 7}}, "multiple of patch_size"),
        ({"text": {"heads": 3}}, "divisible by heads"),
        ({"tokenizer": "wordpiece"}, "tokenizer"),
        ({"tokenizer": "bpe"}, "vocab_size 259"),
        ({"layer_scale_init": float("nan")}, "layer_scale_init"),
        ({"vision": {"depth": 3}}, "clip.vision.depth"),
    ],
)
def test_config_validation(kw: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        get_config("tiny", **kw)


def test_config_roundtrip_and_unknown_preset() -> None:
    cfg = get_config("vit-b-32", layer_scale_init=0.0)
    assert CLIPConfig.from_dict(cfg.to_dict()) == cfg
    assert get_config("ViT-B/32") == get_config("vit-b-32")
    assert get_config("tiny") is not get_config("tiny")
    with pytest.raises(ValueError, match="unknown model preset 'vit-z'"):
        get_config("vit-z")
