"""convert_clip(fuse=True): CLIP blocks run LayerNormLinear / LayerNormMLP with unchanged state_dict keys."""

from __future__ import annotations

import io

import pytest
import torch
from torch import nn

from lowbit.models import CLIP, clip_loss, convert_clip, get_config
from lowbit.nn import LayerNormAlias, LayerNormLinear, LayerNormMLP, LowbitLinear, convert_report, unconvert


@pytest.mark.parametrize("recipe", ["switchback", "fp8-blockwise-sim"])
def test_fused_clip_matches_per_linear_conversion_and_keeps_keys(recipe: str) -> None:
    torch.manual_seed(0)
    plain = CLIP(get_config("tiny"))
    buf = io.BytesIO()
    torch.save(plain.state_dict(), buf)
    keys = list(plain.state_dict())

    def load() -> CLIP:
        m = CLIP(get_config("tiny"))
        buf.seek(0)
        m.load_state_dict(torch.load(buf, weights_only=True))
        return m

    unfused = convert_clip(load(), recipe, fuse=False)
    fused = load()
    convert_clip(fused, recipe, fuse=True)
    block = fused.visual.blocks[0]
    assert isinstance(block.ln1, LayerNormAlias) and isinstance(block.attn.qkv, LayerNormLinear)
    assert isinstance(block.ln2, LayerNormAlias) and isinstance(block.mlp, LayerNormMLP)
    assert isinstance(block.mlp.fc, LowbitLinear) and block.mlp.activation == "gelu"
    assert list(fused.state_dict()) == keys
    # a checkpoint of the plain model loads into the fused one (plain tensors, weights_only)
    buf.seek(0)
    fused.load_state_dict(torch.load(buf, weights_only=True))
    rep = convert_report(fused)
    assert "visual.blocks.0.ln2 → visual.blocks.0.mlp" in rep.fused and "text.blocks.1.mlp" in rep.fused
    images, tokens = torch.randn(2, 3, 32, 32), torch.randint(1, 200, (2, 16))
    outs = []
    for m in (unfused, fused):
        loss = clip_loss(*m(images, tokens))
        loss.backward()
        outs.append((loss.detach(), {n: p.grad.clone() for n, p in m.named_parameters()}))
    assert torch.equal(outs[0][0], outs[1][0])  # float32 on the CPU: the same numbers
    for name, g in outs[0][1].items():
        assert torch.equal(g, outs[1][1][name]), name
    # back to plain modules; the numbers of the plain model
    unconvert(fused)
    assert type(fused.visual.blocks[0].ln2) is nn.LayerNorm and type(fused.visual.blocks[0].attn.qkv) is nn.Linear
    assert list(fused.state_dict()) == keys
    ref = load()
    assert torch.equal(fused.encode_image(images), ref.encode_image(images))


def test_fused_clip_filters_and_init_still_apply() -> None:
    model = convert_clip(CLIP(get_config("tiny")), "switchback-sim", keep_last_blocks=1, fuse=True)
    last = model.visual.blocks[-1]
    assert type(last.ln2) is nn.LayerNorm and type(last.mlp.fc) is nn.Linear
    assert isinstance(model.visual.blocks[0].mlp, LayerNormMLP)
    model.init_weights()  # re-initialising a converted model reaches the aliased LayerNorms too
    assert torch.equal(model.visual.blocks[0].ln2.weight, torch.ones_like(model.visual.blocks[0].ln2.weight))
    auto = convert_clip(CLIP(get_config("tiny")), "switchback-sim", layers="auto", fuse=True)
    assert all(type(m) in (nn.Linear, nn.LayerNorm) for m in auto.modules() if isinstance(m, (nn.Linear, nn.LayerNorm)))
