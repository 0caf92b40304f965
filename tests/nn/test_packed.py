"""Packed projections (lowbit.nn.packed): Hugging Face CLIP's q/k/v as one GEMM under convert(fuse=True), with
layer_norm1 fused in; the group's reuse by identity, its fallbacks, compile (fullgraph) and unconvert."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

import lowbit
from lowbit.nn import LayerNormAlias, PackedLinear, ProjectionGroup, convert_report, unconvert
from lowbit.nn import packed as packed_mod
from lowbit.nn.compile import repeated_blocks


def _everything(fqn: str, m: nn.Module) -> bool:
    return True


def _group(recipe: str = "bf16", e: int = 16, bias: bool = True) -> tuple[list[nn.Linear], ProjectionGroup]:
    torch.manual_seed(0)
    plain = [nn.Linear(e, e, bias=bias) for _ in range(3)]
    group = ProjectionGroup([])
    for slot, m in enumerate(plain):
        new = PackedLinear.from_linear(m, recipe)
        new.group, new.slot = group, slot
        group.members.append(new)
    return plain, group


def _count_linears(monkeypatch) -> list[int]:
    calls: list[int] = []
    real = packed_mod.linear
    monkeypatch.setattr(packed_mod, "linear", lambda x, w, *a, **k: calls.append(w.shape[0]) or real(x, w, *a, **k))
    return calls


def test_one_gemm_for_three_calls_on_one_tensor(monkeypatch) -> None:
    """q, k, v called on one tensor: one E -> 3E matmul, each member's output its nn.Linear's (float32 rounding),
    and nothing kept after the third call."""
    calls = _count_linears(monkeypatch)
    plain, group = _group()
    x = torch.randn(2, 5, 16)
    outs = [m(x) for m in group.members]
    assert calls == [48] and group._kept is None
    for got, p in zip(outs, plain, strict=True):
        torch.testing.assert_close(got, p(x), rtol=1e-5, atol=1e-6)


def test_another_input_drops_the_kept_slices_and_computes_its_own(monkeypatch) -> None:
    """Cross-attention (k and v on another tensor): correct outputs; the kept slices of the first tensor are dropped
    at the first call with another input, so nothing outlives the forward. A member called later in the forward
    without a kept slice computes its own slice (so no later call finds stale slices)."""
    calls = _count_linears(monkeypatch)
    plain, group = _group()
    x, y = torch.randn(2, 5, 16), torch.randn(2, 7, 16)
    q, k, v = group.members[0](x), group.members[1](y), group.members[2](y)
    assert calls == [48, 16, 16] and group._kept is None
    for got, p, inp in zip((q, k, v), plain, (x, y, y), strict=True):
        torch.testing.assert_close(got, p(inp), rtol=1e-5, atol=1e-6)



@pytest.mark.parametrize("order", [(1, 2, 0), (2, 0, 1), (0, 2, 1)])
def test_whichever_member_a_forward_calls_first_packs(order: tuple[int, ...], monkeypatch) -> None:
    """An attention class may call key and value before query: the first call of a round packs in any order, the
    others take their slices, and the round ends clean; a member called twice (a forward that skipped one) starts a
    new round instead of reading a slice of the previous input."""
    calls = _count_linears(monkeypatch)
    plain, group = _group()
    for _ in range(2):  # two forwards
        x = torch.randn(3, 16)
        outs = {i: group.members[i](x) for i in order}
        assert group._kept is None and group._called == 0
        for i, got in outs.items():
            torch.testing.assert_close(got, plain[i](x), rtol=1e-5, atol=1e-6)
    assert calls == [48, 48]
    calls.clear()
    x, y = torch.randn(3, 16), torch.randn(3, 16)
    group.members[0](x)  # packs, keeps k and v of x
    q = group.members[0](y)  # q again: a new round, nothing of x is read
    assert calls == [48, 48]
    torch.testing.assert_close(q, plain[0](y), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(group.members[1](y), plain[1](y), rtol=1e-5, atol=1e-6)


def test_a_member_without_a_bias_packs_with_zeros(monkeypatch) -> None:
    """BEiT's k_proj has no bias: the packed bias holds zeros there; each output is its nn.Linear's, and the
    members' bias gradients are their own."""
    calls = _count_linears(monkeypatch)
    torch.manual_seed(0)
    plain = [nn.Linear(16, 16), nn.Linear(16, 16, bias=False), nn.Linear(16, 8)]
    group = ProjectionGroup([])
    for slot, m in enumerate(copy.deepcopy(plain)):  # (from_linear shares the parameters: the copy has its own)
        new = PackedLinear.from_linear(m, "bf16")
        new.group, new.slot = group, slot
        group.members.append(new)
    x = torch.randn(4, 16)
    outs = [m(x) for m in group.members]
    assert calls == [40]
    for got, p in zip(outs, plain, strict=True):
        torch.testing.assert_close(got, p(x), rtol=1e-5, atol=1e-6)
    sum(o.square().sum() for o in outs).backward()
    sum(p(x).square().sum() for p in plain).backward()
    for got, p in zip(group.members, plain, strict=True):
        torch.testing.assert_close(got.weight.grad, p.weight.grad, rtol=1e-5, atol=1e-5)
        if p.bias is not None:
            torch.testing.assert_close(got.bias.grad, p.bias.grad, rtol=1e-5, atol=1e-5)


def test_members_with_different_recipes_run_apart(monkeypatch) -> None:
    calls = _count_linears(monkeypatch)
    plain, group = _group("switchback-sim")
    group.members[1].recipe = lowbit.functional.get_recipe("bf16")  # e.g. re-converted with a filter rejecting it
    x = torch.randn(4, 16)
    outs = [m(x) for m in group.members]
    assert calls == [16, 16, 16]
    torch.testing.assert_close(outs[1], plain[1](x), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("recipe", ["switchback-sim", "fp8-switchback-sim"])
def test_gradients_reach_each_member_within_the_recipes_error(recipe: str) -> None:
    """Backward through the packed GEMM: each member's weight, bias and the input get their gradient (the recipe's
    quantized dgrad, so within its error of nn.Linear's; the wgrad is 16-bit, exact to rounding)."""
    plain, group = _group(recipe)
    x = torch.randn(3, 5, 16, requires_grad=True)
    xp = x.detach().clone().requires_grad_(True)
    g = [torch.randn(3, 5, 16) for _ in range(3)]
    sum((m(x) * gi).sum() for m, gi in zip(group.members, g, strict=True)).backward()
    sum((p(xp) * gi).sum() for p, gi in zip(plain, g, strict=True)).backward()
    bound = 0.03 if recipe.startswith("switchback") else 0.15  # int8 / e5m2 x e4m3 dgrad (test_linear.py's bounds)
    assert float((x.grad - xp.grad).norm() / xp.grad.norm()) < bound
    for m, p in zip(group.members, plain, strict=True):
        torch.testing.assert_close(m.bias.grad, p.bias.grad, rtol=1e-5, atol=1e-5)
        assert float((m.weight.grad - p.weight.grad).norm() / p.weight.grad.norm()) < bound


def test_fuse_norm_checks_its_width() -> None:
    _, group = _group()
    with pytest.raises(ValueError, match=r"normalizes \(8,\), not the projections' in_features \(16,\)"):
        group.fuse_norm(nn.LayerNorm(8))


# ---- Hugging Face CLIP, converted with fuse=True -------------------------------------------------------------------
def _hf_clip(transformers) -> tuple[nn.Module, dict[str, torch.Tensor]]:
    small = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2)
    torch.manual_seed(0)
    # the text tower pools at each sequence's first eos token: the last position here, which attends to all (pooled at
    # position 0, as with the default eos id outside this vocabulary, its last layer's q and k get no gradient)
    model = transformers.CLIPModel(transformers.CLIPConfig(
        text_config=dict(vocab_size=100, max_position_embeddings=8, eos_token_id=99, bos_token_id=98, **small),
        projection_dim=16, vision_config=dict(image_size=28, patch_size=14, **small)))
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(1, 98, (2, 8), generator=g)
    ids[:, -1] = 99
    return model, {"pixel_values": torch.randn(2, 3, 28, 28, generator=g), "input_ids": ids}


def test_hf_clip_packs_each_attention_and_fuses_layer_norm1(third_party, monkeypatch) -> None:
    """Per CLIPAttention one group of q/k/v (state_dict keys unchanged), layer_norm1 an identity alias whose
    normalization the group applies, one packed matmul per attention call, nothing kept after the forward; unconvert
    gives back nn.Linear and nn.LayerNorm with the plain model's outputs."""
    transformers = third_party("transformers")
    plain, inputs = _hf_clip(transformers)
    plain.eval()
    model = lowbit.convert(copy.deepcopy(plain), "bf16", _everything, fuse=True)
    assert list(model.state_dict()) == list(plain.state_dict())
    attns = [m for m in model.modules() if type(m).__name__ == "CLIPAttention"]
    assert len(attns) == 4
    for a in attns:
        members = [a.q_proj, a.k_proj, a.v_proj]
        assert all(type(m) is PackedLinear for m in members) and len({id(m.group) for m in members}) == 1
        assert isinstance(a.q_proj.group.layer_norm, LayerNormAlias)
    rep = convert_report(model)
    assert sum(r == "q_proj + k_proj + v_proj as one GEMM over their concatenated weights"
               for r in rep.fused.values()) == 4
    assert "vision_model.encoder.layers.1.self_attn.q_proj+k_proj+v_proj" in rep.fused  # one short row per group
    # 26 linears converted (2 towers x 2 layers x 6, 2 projections); 4 groups of 3 run as 4 GEMMs: 18 GEMMs
    assert rep.launch_note().startswith("note: the 26 8-bit layer(s) (18 GEMMs: q/k/v packed) issue about 126 more")
    calls = _count_linears(monkeypatch)
    layernorm_calls: list[int] = []
    real_ln = packed_mod.layernorm_linear
    monkeypatch.setattr(packed_mod, "layernorm_linear",
                        lambda x, lw, lb, w, *a, **k: layernorm_calls.append(w.shape[0]) or real_ln(x, lw, lb, w, *a, **k))
    with torch.no_grad():
        got, want = model(**inputs), plain(**inputs)
    assert calls == [] and layernorm_calls == [96] * 4  # one packed LayerNorm + GEMM per attention
    assert all(a.q_proj.group._kept is None for a in attns)
    torch.testing.assert_close(got.logits_per_image, want.logits_per_image, rtol=1e-5, atol=1e-5)
    back = unconvert(model)
    assert [type(m) for m in back.modules()] == [type(m) for m in plain.modules()]
    with torch.no_grad():
        assert torch.equal(back(**inputs).logits_per_image, want.logits_per_image)


def test_hf_clip_packed_compiles_whole_and_matches_eager(third_party) -> None:
    """Each CLIPEncoderLayer compiled with fullgraph=True (the kept slices are attribute writes dynamo replays; no
    graph break) gives eager's outputs and gradients, fp8-switchback under bf16 autocast."""
    transformers = third_party("transformers")

    def build() -> nn.Module:
        model, _ = _hf_clip(transformers)
        return lowbit.convert(model, "fp8-switchback", _everything, fuse=True).train()

    _, inputs = _hf_clip(transformers)
    eager, compiled = build(), build()
    blocks = repeated_blocks(compiled)
    assert blocks and all(type(b).__name__ == "CLIPEncoderLayer" for b in blocks)
    for block in blocks:
        block.compile(backend="aot_eager", fullgraph=True)
    outs = []
    for model in (eager, compiled):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = model(**inputs, return_loss=True)
        out.loss.backward()
        outs.append(out.logits_per_image.float())
        assert all(m.group._kept is None for m in model.modules() if isinstance(m, PackedLinear))
    torch.testing.assert_close(outs[1], outs[0], rtol=0, atol=0)
    for (name, p), q in zip(eager.named_parameters(), compiled.parameters(), strict=True):
        if p.grad is not None:
            torch.testing.assert_close(q.grad, p.grad, rtol=1e-5, atol=1e-6, msg=name)


def test_a_copy_gets_its_own_group() -> None:
    """deepcopy (and torch.save of the module) copies the group once: the copy's members share a new group that
    refers to them, not to the original's members."""
    plain, group = _group()
    copied = copy.deepcopy(nn.ModuleList(group.members))
    assert copied[0].group is copied[2].group and copied[0].group is not group
    assert all(a is b for a, b in zip(copied[0].group.members, copied, strict=True))
    x = torch.randn(3, 16)
    torch.testing.assert_close(copied[1](x), plain[1](x), rtol=1e-5, atol=1e-6)


def test_hf_vit_packs_and_fuses_both_layernorms(third_party) -> None:
    """transformers 5's ViT (ViTAttention with q/k/v, ViTLayer's layernorm_before -> attention, layernorm_after ->
    ViTMLP): packed and fused, outputs float32-exact unquantized; transformers 4's ViT (split MLP, ViTSelfAttention)
    has nothing of this to fuse."""
    transformers = third_party("transformers")
    torch.manual_seed(0)
    plain = transformers.ViTModel(transformers.ViTConfig(image_size=28, patch_size=14, hidden_size=32,
                                                         intermediate_size=64, num_hidden_layers=2,
                                                         num_attention_heads=2)).eval()
    pixels = torch.randn(2, 3, 28, 28, generator=torch.Generator().manual_seed(1))
    model = lowbit.convert(copy.deepcopy(plain), "bf16", _everything, fuse=True)
    fused = sorted(k for k, r in convert_report(model).fused.items() if "LayerNorm fused" in r)
    if transformers.__version__.startswith("4."):
        assert fused == [] and not any(isinstance(m, PackedLinear) for m in model.modules())
        return
    assert fused == sorted(f"layers.{i}.{n}" for i in (0, 1) for n in (
        f"layernorm_before → layers.{i}.attention.q_proj", f"layernorm_after → layers.{i}.mlp"))
    assert sum(isinstance(m, PackedLinear) for m in model.modules()) == 6
    with torch.no_grad():
        torch.testing.assert_close(model(pixel_values=pixels).last_hidden_state,
                                   plain(pixel_values=pixels).last_hidden_state, rtol=1e-5, atol=1e-5)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA (run on the GPU host)")
@pytest.mark.parametrize("recipe", ["fp8-switchback", "switchback"])
def test_hf_clip_packed_under_cuda_graphs(recipe: str, third_party) -> None:
    """On the GPU, each CLIPEncoderLayer compiled with CUDA graphs (mode="reduce-overhead", fullgraph=True): the
    packed, LayerNorm-fused conversion trains (finite loss, a gradient on every q/k/v weight and LayerNorm), nothing
    kept past a replayed step, and its logits within the recipe's error of the plain bf16 model's."""
    transformers = third_party("transformers")
    plain, inputs = _hf_clip(transformers)
    plain = plain.cuda().train()
    inputs = {k: v.cuda() for k, v in inputs.items()}
    model = lowbit.convert(copy.deepcopy(plain), recipe, _everything, fuse=True)
    assert sum(isinstance(m, PackedLinear) for m in model.modules()) == 12
    for block in repeated_blocks(model):
        block.compile(mode="reduce-overhead", fullgraph=True)
    for _ in range(3):  # warm-up, record, replay
        torch.compiler.cudagraph_mark_step_begin()  # a new step: the previous step's graph outputs may be overwritten
        with torch.autocast("cuda", dtype=torch.bfloat16):
            out = model(**inputs, return_loss=True)
        model.zero_grad(set_to_none=True)
        out.loss.backward()
    assert torch.isfinite(out.loss)
    assert all(m.group._kept is None for m in model.modules() if isinstance(m, PackedLinear))
    for name, p in model.named_parameters():
        if "q_proj" in name or "k_proj" in name or "v_proj" in name or "layer_norm1" in name:
            assert p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0, name
    with torch.no_grad(), torch.autocast("cuda", dtype=torch.bfloat16):
        want = plain(**inputs).logits_per_image.float()
        torch.compiler.cudagraph_mark_step_begin()
        got = model(**inputs).logits_per_image.float().clone()
    assert float((got - want).norm() / want.norm()) < 0.15 * 9**0.5  # e5m2's per-layer bound, 9 layers in series


class _MeasuringFilter:
    """A stand-in for lowbit.nn.measured_filter: records the shape it is asked about and accepts where out ≥ 64."""

    def __init__(self) -> None:
        self.asked: dict[str, tuple[int, int]] = {}

    def __call__(self, fqn: str, m: nn.Linear) -> bool:
        self.asked[fqn] = (m.in_features, m.out_features)
        return m.out_features >= 64

    def measurement(self, fqn: str, m: nn.Linear) -> tuple[float, str]:
        return (1.2 if m.out_features >= 64 else 0.9), f"8×{m.in_features}→{m.out_features}"

    def reason(self, fqn: str, m: nn.Linear) -> str:
        return f"measured slower at {m.in_features}→{m.out_features}"


@pytest.mark.parametrize("fuse", [True, False])
def test_a_measuring_filter_is_asked_about_the_packed_shape(fuse: bool, third_party) -> None:
    """With fuse=True a filter that measures sees q/k/v as the E -> 3E GEMM they will run as (32 -> 96 here: accepted,
    so the three convert and pack); per linear, E -> E (32 -> 32: rejected). A plain callable filter always sees the
    real E -> E linear."""
    transformers = third_party("transformers")
    model, _ = _hf_clip(transformers)
    filt = _MeasuringFilter()
    model = lowbit.convert(model, "bf16", filt, fuse=fuse)
    q = "vision_model.encoder.layers.0.self_attn.q_proj"
    assert filt.asked[q] == ((32, 96) if fuse else (32, 32))
    assert filt.asked["vision_model.encoder.layers.0.self_attn.out_proj"] == (32, 32)
    row = next(r for r in convert_report(model).rows() if r["layer"] == q)
    if fuse:
        assert isinstance(model.get_submodule(q), PackedLinear) and row["measured_at"] == "8×32→96", row
    else:
        assert type(model.get_submodule(q)) is nn.Linear and "measured slower at 32→32" in row["detail"], row
    plain_asked: list[tuple[int, int]] = []
    lowbit.convert(_hf_clip(transformers)[0], "bf16",
                   lambda fqn, m: plain_asked.append((m.in_features, m.out_features)) or True, fuse=True)
    assert (32, 96) not in plain_asked


@pytest.mark.parametrize("decoder", [False, True])
def test_hf_bert_encoder_packs_and_a_decoder_does_not(decoder: bool, third_party) -> None:
    """BERT's self-attention (query, key, value on hidden_states) packs in an encoder, outputs float32-exact
    unquantized; a decoder's is left per linear with the reason (its cache or cross-attention may skip key/value)."""
    transformers = third_party("transformers")
    torch.manual_seed(0)
    cfg = transformers.BertConfig(vocab_size=100, max_position_embeddings=16, hidden_size=32, intermediate_size=64,
                                  num_hidden_layers=2, num_attention_heads=2, is_decoder=decoder)
    plain = transformers.BertModel(cfg).eval()
    ids = torch.randint(1, 100, (2, 8), generator=torch.Generator().manual_seed(1))
    model = lowbit.convert(copy.deepcopy(plain), "bf16", _everything, fuse=True)
    rep = convert_report(model)
    key = "encoder.layer.0.attention.self.query+key+value"
    if decoder:
        assert not any(isinstance(m, PackedLinear) for m in model.modules())
        assert "a decoder's attention" in rep.not_fused[key]
    else:
        assert sum(isinstance(m, PackedLinear) for m in model.modules()) == 6 and key in rep.fused
    with torch.no_grad():
        torch.testing.assert_close(model(input_ids=ids).last_hidden_state, plain(input_ids=ids).last_hidden_state,
                                   rtol=1e-5, atol=1e-5)


def test_hf_clip_packed_with_activation_checkpointing(third_party) -> None:
    """Hugging Face's activation checkpointing recomputes each layer's forward in the backward: the packed group
    packs again there (kept slices matched by the recomputed tensor) and the gradients equal those without it."""
    transformers = third_party("transformers")
    plain, inputs = _hf_clip(transformers)
    a = lowbit.convert(copy.deepcopy(plain), "switchback-sim", _everything, fuse=True).train()
    b = copy.deepcopy(a)
    enable = getattr(b, "activation_checkpointing_enable", None) or b.gradient_checkpointing_enable
    enable()
    for m in (a, b):
        m(**inputs, return_loss=True).loss.backward()
    grads = dict(a.named_parameters())
    for name, p in b.named_parameters():
        if p.grad is not None:
            torch.testing.assert_close(p.grad, grads[name].grad, rtol=0, atol=0, msg=name)
    assert all(m.group._kept is None for m in b.modules() if isinstance(m, PackedLinear))
