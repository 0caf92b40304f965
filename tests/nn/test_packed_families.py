"""Hugging Face families beyond CLIP and ViT under ``convert(fuse=True)`` (lowbit.nn.packed, lowbit.nn.block_norms):
SigLIP, SigLIP 2, DeiT, DINOv2, BEiT, RoBERTa, LLaMA-style decoders. Each packs its q, k, v into one group per
attention, fuses the LayerNorms its block class feeds to one consumer, and computes what the plain model computes
(the bf16 recipe leaves float32 unquantized: float32 rounding only). The listed classes' sources must still call
their projections on the one input (a transformers upgrade that changes that would make packing wrong)."""

from __future__ import annotations

import copy
import importlib
import inspect
import re

import pytest
import torch
from torch import nn

import lowbit
from lowbit.nn import PackedLinear, convert_report
from lowbit.nn.packed import PACKED_PROJECTIONS

SMALL = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2)


def _everything(fqn: str, m: nn.Module) -> bool:
    return True


def _two_towers(t, model: str, config: str, vision: dict) -> tuple[nn.Module, dict]:
    cfg = getattr(t, config)(text_config=dict(vocab_size=100, max_position_embeddings=16, **SMALL),
                             vision_config={**SMALL, **vision})
    gen = torch.Generator().manual_seed(1)
    inputs = dict(input_ids=torch.randint(0, 100, (2, 7), generator=gen))
    if model == "Siglip2Model":  # patches come flattened, with their mask and grid
        inputs.update(pixel_values=torch.randn(2, 4, 3 * 14 * 14, generator=gen),
                      pixel_attention_mask=torch.ones(2, 4, dtype=torch.long),
                      spatial_shapes=torch.tensor([[2, 2], [2, 2]]))
    else:
        inputs["pixel_values"] = torch.randn(2, 3, 28, 28, generator=gen)
    return getattr(t, model)(cfg), inputs


def _vision(t, model: str, config: str) -> tuple[nn.Module, dict]:
    cfg = getattr(t, config)(image_size=28, patch_size=14, **SMALL)
    return getattr(t, model)(cfg), dict(pixel_values=torch.randn(2, 3, 28, 28, generator=torch.Generator().manual_seed(1)))


def _text(t, model: str, config: str, **extra) -> tuple[nn.Module, dict]:
    cfg = getattr(t, config)(vocab_size=100, max_position_embeddings=40, **SMALL, **extra)
    return getattr(t, model)(cfg), dict(input_ids=torch.randint(0, 100, (2, 9), generator=torch.Generator().manual_seed(1)))


# name -> (builder, packed groups, fused LayerNorms (blocks x 2, 0 where the block has RMSNorm or a split MLP))
FAMILIES = {
    "siglip": (lambda t: _two_towers(t, "SiglipModel", "SiglipConfig", dict(image_size=28, patch_size=14)), 4, 8),
    "siglip2": (lambda t: _two_towers(t, "Siglip2Model", "Siglip2Config", dict(num_patches=4, patch_size=14)), 4, 8),
    "deit": (lambda t: _vision(t, "DeiTModel", "DeiTConfig"), 2, 4),
    "dinov2": (lambda t: _vision(t, "Dinov2Model", "Dinov2Config"), 2, 4),
    "beit": (lambda t: _vision(t, "BeitModel", "BeitConfig"), 2, 4),
    "roberta": (lambda t: _text(t, "RobertaModel", "RobertaConfig"), 2, 0),
    "llama-gqa": (lambda t: _text(t, "LlamaModel", "LlamaConfig", num_key_value_heads=1), 2, 0),
}


def _first_output(out) -> torch.Tensor:
    if hasattr(out, "last_hidden_state"):
        return out.last_hidden_state
    return out.logits_per_image  # the two-tower models: both towers and the projections behind it


@pytest.mark.parametrize("family", list(FAMILIES))
def test_each_family_packs_fuses_and_computes_the_plain_models_output(family: str, third_party) -> None:
    t = third_party("transformers")
    build, groups, norms = FAMILIES[family]
    torch.manual_seed(0)
    plain, inputs = build(t)
    plain.eval()
    model = lowbit.convert(copy.deepcopy(plain), "bf16", _everything, fuse=True)
    members = [m for m in model.modules() if isinstance(m, PackedLinear)]
    assert len(members) == 3 * groups and len({id(m.group) for m in members}) == groups
    rep = convert_report(model)
    fused_norms = [k for k, r in rep.fused.items() if "LayerNorm fused" in r]
    assert len(fused_norms) == norms, sorted(rep.fused)
    assert not any("not an attention class whose forward was read" in r for r in rep.not_fused.values())
    with torch.no_grad():
        torch.testing.assert_close(_first_output(model(**inputs)), _first_output(plain(**inputs)),
                                   rtol=1e-5, atol=1e-5)


def test_grouped_query_attention_packs_narrower_keys_and_values(third_party) -> None:
    """LLaMA with one key/value head: the group's slices follow each member's out_features (32, 16, 16); the
    gradients of every projection equal the plain model's."""
    t = third_party("transformers")
    torch.manual_seed(0)
    plain, inputs = _text(t, "LlamaModel", "LlamaConfig", num_key_value_heads=1)
    model = lowbit.convert(copy.deepcopy(plain), "bf16", _everything, fuse=True)
    attn = model.layers[0].self_attn
    assert [attn.q_proj.out_features, attn.k_proj.out_features, attn.v_proj.out_features] == [32, 16, 16]
    assert isinstance(attn.k_proj, PackedLinear) and attn.k_proj.group is attn.q_proj.group
    for m in (plain, model):
        m(**inputs).last_hidden_state.square().mean().backward()
    for (name, p), (_, q) in zip(plain.named_parameters(), model.named_parameters(), strict=True):
        if "_proj" in name:
            torch.testing.assert_close(q.grad, p.grad, rtol=1e-4, atol=1e-6, msg=name)


def test_an_attention_class_not_read_is_reported_not_packed() -> None:
    class MyAttention(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.q_proj, self.k_proj, self.v_proj = (nn.Linear(16, 16) for _ in range(3))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.q_proj(x) + self.k_proj(x) * self.v_proj(x)

    model = lowbit.convert(nn.Sequential(MyAttention()), "bf16", _everything, fuse=True)
    assert not any(isinstance(m, PackedLinear) for m in model.modules())
    why = convert_report(model).not_fused["0.q_proj+k_proj+v_proj"]
    assert "MyAttention is not an attention class whose forward was read" in why


def test_every_listed_class_still_calls_its_projections_on_one_input(third_party) -> None:
    """Read the installed transformers: in each listed class's forward, every projection is called once, each on
    the forward's first argument (packing keeps slices of a GEMM on that tensor)."""
    third_party("transformers")
    checked = 0
    for path, names in PACKED_PROJECTIONS.items():
        module, _, cls = path.rpartition(".")
        try:
            klass = getattr(importlib.import_module(module), cls)
        except (ImportError, AttributeError):
            continue  # not in this transformers version
        forward = inspect.unwrap(klass.forward)
        first = list(inspect.signature(forward).parameters)[1]
        calls = re.findall(r"self\.(\w+)\(([^()]*)\)", inspect.getsource(forward))
        args = {n: [a.strip() for f, a in calls if f == n] for n in names}
        assert all(a == [first] for a in args.values()), (path, args)
        checked += 1
    assert checked >= 10
