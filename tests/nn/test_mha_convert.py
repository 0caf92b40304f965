"""LowbitMultiheadAttention: PyTorch's nn.MultiheadAttention outputs (masks, is_causal, batch_first both ways, cross
attention), its parameters and state_dict keys, convert/unconvert, the need_weights fallback, and
nn.TransformerEncoderLayer before and after conversion."""

from __future__ import annotations

import copy
import io
import logging

import pytest
import torch
from torch import nn

import lowbit
from lowbit.functional import RECIPES
from lowbit.nn import LowbitMultiheadAttention, convert, convert_report, unconvert

E, H, L, S, N = 32, 4, 5, 7, 3
# float32 agreement: the same matmuls and SDPA in another order (packed vs chunked projections), a few ulp
F32 = dict(rtol=1e-5, atol=1e-6)
# relative Frobenius error of a quantized recipe against the exact layer (tests/functional/test_linear.py's bound
# for one linear; the attention output passes through two quantized matmuls and a softmax that averages)
EXACT_TOL = {"int8": 0.03, "e4m3": 0.08, "e5m2": 0.15}


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.detach().double() - b.detach().double()).norm() / b.detach().double().norm())


def _pair(batch_first: bool, recipe: str = "bf16", **kw) -> tuple[nn.MultiheadAttention, LowbitMultiheadAttention]:
    torch.manual_seed(0)
    plain = nn.MultiheadAttention(E, H, batch_first=batch_first, **kw)
    with torch.no_grad():  # non-zero biases, so that a bias mix-up shows
        plain.in_proj_bias.normal_()
        plain.out_proj.bias.normal_()
    return plain, LowbitMultiheadAttention.from_module(copy.deepcopy(plain), recipe)


def _inputs(batch_first: bool, mode: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    q = torch.randn(N, L, E, generator=g)
    if mode == "self":
        k = v = q
    elif mode == "kv":  # encoder-decoder: one memory tensor for key and value
        k = v = torch.randn(N, S, E, generator=g)
    else:
        k, v = torch.randn(N, S, E, generator=g), torch.randn(N, S, E, generator=g)
    if not batch_first:
        q, k, v = (t.transpose(0, 1).contiguous() for t in (q, k, v))
        k = q if mode == "self" else k
        v = k if mode in ("self", "kv") else v
    return q, k, v


def _masks(kind: str, src: int) -> dict:
    g = torch.Generator().manual_seed(2)
    pad = torch.zeros(N, src, dtype=torch.bool)
    pad[0, -2:] = True  # the first sample's last two keys are padding
    causal = nn.Transformer.generate_square_subsequent_mask(L)  # float -inf above the diagonal
    return {
        "none": {},
        "bool-2d": {"attn_mask": torch.rand(L, src, generator=g) < 0.3},
        "float-3d": {"attn_mask": torch.randn(N * H, L, src, generator=g)},
        "padding-bool": {"key_padding_mask": pad},
        "padding-float": {"key_padding_mask": torch.zeros(N, src).masked_fill(pad, float("-inf"))},
        "both": {"attn_mask": torch.randn(L, src, generator=g), "key_padding_mask": torch.zeros(N, src).masked_fill(
            pad, float("-inf"))},
        "causal": {"attn_mask": causal, "is_causal": True},
        "causal+padding": {"attn_mask": causal.isinf(), "key_padding_mask": pad, "is_causal": True},
    }[kind]


MASKS = ["none", "bool-2d", "float-3d", "padding-bool", "padding-float", "both", "causal", "causal+padding"]


@pytest.mark.parametrize("batch_first", [True, False])
@pytest.mark.parametrize(("mode", "masks"), [(m, k) for m in ("self", "kv", "cross") for k in MASKS
                                             if m == "self" or not k.startswith("causal")])  # causal: square
def test_same_outputs_and_gradients_as_pytorch(batch_first: bool, mode: str, masks: str) -> None:
    plain, low = _pair(batch_first)
    q, k, v = _inputs(batch_first, mode)
    kw = _masks(masks, q.shape[1 if batch_first else 0] if mode == "self" else S)
    want, _ = plain(q, k, v, need_weights=False, **kw)
    got, weights = low(q, k, v, need_weights=False, **kw)
    assert weights is None and got.shape == want.shape and got.is_contiguous()
    torch.testing.assert_close(got, want, **F32)
    g = torch.randn_like(want)
    want_grads = torch.autograd.grad(want, list(plain.parameters()), g)
    got_grads = torch.autograd.grad(got, list(low.parameters()), g)
    for a, b in zip(got_grads, want_grads, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("batch_first", [True, False])
def test_unbatched_input(batch_first: bool) -> None:
    plain, low = _pair(batch_first)
    x = torch.randn(L, E)
    pad = torch.tensor([False] * (L - 1) + [True])
    torch.testing.assert_close(low(x, x, x, need_weights=False, key_padding_mask=pad)[0],
                               plain(x, x, x, need_weights=False, key_padding_mask=pad)[0], **F32)


@pytest.mark.parametrize("name", ["switchback-sim", "fp8-switchback-sim"])
def test_quantized_recipe_within_its_error(name: str) -> None:
    plain, low = _pair(True, name)
    q, k, v = _inputs(True, "self")
    with torch.no_grad():
        want = plain.double()(q.double(), k.double(), v.double(), need_weights=False)[0]
    got = low(q, k, v, need_weights=False)[0]
    err = _rel(got, want)
    assert 0 < err < max(EXACT_TOL[f] for f in RECIPES[name].formats), err
    got.sum().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in low.parameters())


def test_need_weights_runs_pytorchs_path_and_says_so_once(caplog) -> None:
    plain, low = _pair(False, "switchback-sim")
    q, k, v = _inputs(False, "self")
    with caplog.at_level(logging.WARNING, logger="lowbit.nn.attention"):
        out, w = low(q, k, v)  # need_weights=True is PyTorch's default
        low(q, k, v)
    want, want_w = plain(q, k, v)
    assert torch.equal(out, want) and torch.equal(w, want_w)
    assert caplog.text.count("need_weights=True") == 1 and "16-bit" in caplog.text


def test_state_dict_isinstance_and_checkpoints_both_ways() -> None:
    plain, low = _pair(False, "switchback")
    assert isinstance(low, nn.MultiheadAttention) and "recipe='switchback'" in repr(low)
    assert list(low.state_dict()) == list(plain.state_dict()) == [
        "in_proj_weight", "in_proj_bias", "out_proj.weight", "out_proj.bias"]
    buf = io.BytesIO()
    torch.save(low.state_dict(), buf)
    buf.seek(0)
    fresh = nn.MultiheadAttention(E, H)
    fresh.load_state_dict(torch.load(buf, weights_only=True))
    for a, b in zip(fresh.parameters(), plain.parameters(), strict=True):
        assert torch.equal(a, b)
    other = LowbitMultiheadAttention(E, H, recipe="switchback-sim")
    other.load_state_dict(plain.state_dict())
    q, k, v = _inputs(False, "self")
    assert torch.equal(other(q, k, v, need_weights=False)[0],
                       LowbitMultiheadAttention.from_module(plain, "switchback-sim")(q, k, v, need_weights=False)[0])


def test_convert_and_unconvert_share_parameters() -> None:
    model = nn.Sequential(nn.MultiheadAttention(E, H))
    params = [id(p) for p in model.parameters()]
    convert(model, "switchback-sim", lambda fqn, m: True)
    assert type(model[0]) is LowbitMultiheadAttention and [id(p) for p in model.parameters()] == params
    rep = convert_report(model)
    assert set(rep.converted) == {"0.in_proj", "0.out_proj"}
    assert [(r["layer"], r["shape"], r["status"]) for r in rep.rows()] == [
        ("0.in_proj", f"{E}→{3 * E}", "converted"), ("0.out_proj", f"{E}→{E}", "converted")]
    convert(model, "fp8-switchback-sim", lambda fqn, m: True)  # a second convert changes the recipe
    assert model[0].recipe.name == "fp8-switchback-sim"
    unconvert(model)
    assert type(model[0]) is nn.MultiheadAttention and not hasattr(model[0], "recipe")
    assert [id(p) for p in model.parameters()] == params


def test_unsupported_modules_stay_and_the_report_says_why() -> None:
    model = nn.ModuleDict({"kv": nn.MultiheadAttention(E, H, kdim=16, vdim=16),
                           "bias_kv": nn.MultiheadAttention(E, H, add_bias_kv=True),
                           "zero": nn.MultiheadAttention(E, H, add_zero_attn=True),
                           "small": nn.MultiheadAttention(E, H)})
    convert(model, "switchback")  # the default filter: E = 32 is too small
    assert all(type(m) is nn.MultiheadAttention for m in model.values())
    rows = {r["layer"]: r for r in convert_report(model).rows()}
    assert rows["kv.in_proj"]["cause"] == "unsupported" and "kdim/vdim" in rows["kv.in_proj"]["detail"]
    assert "add_bias_kv" in rows["bias_kv.out_proj"]["detail"] and "add_zero_attn" in rows["zero.in_proj"]["detail"]
    assert rows["small.in_proj"]["cause"] == rows["small.out_proj"]["cause"] == "too small"
    table = convert_report(model).table()
    assert "kv.in_proj" in table and "16-bit (unsupported)" in table and "16-bit (too small)" in table
    with pytest.raises(ValueError, match="add_zero_attn"):
        LowbitMultiheadAttention(E, H, add_zero_attn=True)
    # the filter sees both projections; rejecting one keeps both (one forward runs them)
    convert(model, "switchback", lambda fqn, m: not fqn.endswith("small.out_proj"))
    assert type(model["small"]) is nn.MultiheadAttention
    assert "sibling out_proj" in convert_report(model).skipped["small.in_proj"]


def _encoder(batch_first: bool) -> nn.TransformerEncoder:
    torch.manual_seed(0)
    layer = nn.TransformerEncoderLayer(E, H, 4 * E, dropout=0.0, batch_first=batch_first)
    return nn.TransformerEncoder(layer, 2, enable_nested_tensor=False)


@pytest.mark.parametrize("batch_first", [True, False])
def test_transformer_encoder_layer_trains_and_keeps_its_fast_path(batch_first: bool) -> None:
    plain = _encoder(batch_first)
    low = convert(copy.deepcopy(plain), "bf16", lambda fqn, m: True)
    assert all(type(m.self_attn) is LowbitMultiheadAttention for m in low.layers)
    x = torch.randn(N, L, E) if batch_first else torch.randn(L, N, E)
    pad = torch.zeros(N, L, dtype=torch.bool)
    pad[1, -1] = True
    mask = nn.Transformer.generate_square_subsequent_mask(L)
    kw = dict(mask=mask, src_key_padding_mask=pad, is_causal=True)
    torch.testing.assert_close(low(x, **kw), plain(x, **kw), **F32)  # training: our forward
    plain.eval()
    low.eval()
    with torch.inference_mode():  # eval, no grad: the encoder layer's own fused kernel (batch_first only)
        torch.testing.assert_close(low(x, src_key_padding_mask=pad), plain(x, src_key_padding_mask=pad), **F32)
    quant = convert(copy.deepcopy(plain).train(), "switchback-sim", lambda fqn, m: True)
    with torch.no_grad():
        want = plain.double()(x.double(), **{**kw, "mask": mask.double()})
    assert _rel(quant(x, **kw), want) < EXACT_TOL["int8"]


def test_compiles_without_graph_breaks() -> None:
    _, low = _pair(True, "switchback-sim")
    q, k, v = _inputs(True, "self")
    compiled = torch.compile(low, backend="eager", fullgraph=True)
    torch.testing.assert_close(compiled(q, k, v, need_weights=False)[0], low(q, k, v, need_weights=False)[0],
                               rtol=0, atol=0)


def test_exported_at_the_top_level() -> None:
    assert lowbit.LowbitMultiheadAttention is LowbitMultiheadAttention and lowbit.convert_report is convert_report


def test_transformer_encoder_nested_tensor_inference_unchanged() -> None:
    """TransformerEncoder's nested-tensor fast path (eval, no grad, padding mask) checks the layer's type and
    reads its parameters directly: conversion leaves it as it was."""
    torch.manual_seed(0)
    plain = nn.TransformerEncoder(nn.TransformerEncoderLayer(E, H, 4 * E, batch_first=True), 2).eval()
    low = convert(copy.deepcopy(plain), "switchback-sim", lambda fqn, m: True)
    assert plain.use_nested_tensor and low.use_nested_tensor
    x, pad = torch.randn(N, L, E), torch.zeros(N, L, dtype=torch.bool)
    pad[0, -2:] = True
    with torch.inference_mode():
        torch.testing.assert_close(low(x, src_key_padding_mask=pad), plain(x, src_key_padding_mask=pad), **F32)


@pytest.mark.parametrize("batch_first", [True, False])
@pytest.mark.parametrize("batched", [True, False])
@pytest.mark.parametrize(("inputs", "matmuls"), [("qqq", 1), ("qkk", 2), ("qqv", 2), ("qkv", 3)])
def test_in_projection_matmuls_follow_the_callers_tensors(batch_first: bool, batched: bool, inputs: str, matmuls: int,
                                                          monkeypatch) -> None:
    """Self-attention (one tensor passed three times) runs one packed in-projection whatever the layout: the check
    is made on the caller's tensors, before the transposes of batch_first=False or the unbatched reshape make three
    tensors of one; key = value (or query = key) runs two, three distinct inputs three (plus out_proj each)."""
    import lowbit.nn.attention as attention

    calls = []
    real = attention.linear
    monkeypatch.setattr(attention, "linear", lambda x, w, *a, **k: calls.append(w.shape[0]) or real(x, w, *a, **k))
    m = LowbitMultiheadAttention(16, 2, batch_first=batch_first, recipe="bf16")
    shape = ((2, 5, 16) if batch_first else (5, 2, 16)) if batched else (5, 16)
    x, y, z = (torch.randn(shape) for _ in range(3))
    args = {"qqq": (x, x, x), "qkk": (x, y, y), "qqv": (x, x, z), "qkv": (x, y, z)}[inputs]
    m(*args, need_weights=False)
    assert len(calls) == matmuls + 1 and calls[-1] == 16 and sum(calls[:-1]) == 48


# ---- a LayerNorm fused in front (open_clip's ln_1 → attn, convert(fuse=True)) -------------------------------------
def _fused_pair(recipe: str) -> tuple[nn.LayerNorm, nn.MultiheadAttention, LowbitMultiheadAttention]:
    from lowbit.nn import LayerNormAlias

    plain_ln, plain, low = nn.LayerNorm(E), *_pair(True, recipe)
    with torch.no_grad():
        plain_ln.weight.normal_()
        plain_ln.bias.normal_()
    low.fuse_norm(LayerNormAlias.from_layernorm(copy.deepcopy(plain_ln), "attn"))
    return plain_ln, plain, low


@pytest.mark.parametrize("inputs", ["qqq", "qkk", "qqv", "qkv"])
@pytest.mark.parametrize("recipe", ["bf16", "switchback-sim"])
def test_fused_layernorm_normalizes_the_query_and_what_is_the_query(inputs: str, recipe: str) -> None:
    """With a LayerNorm fused in, the module takes the LayerNorm's *input* as query and normalizes it (and key /
    value where they are that same tensor, as open_clip's self-attention passes them); a different key / value is
    projected as it comes. Outputs and gradients (the LayerNorm's parameters included) match LayerNorm followed by
    PyTorch's module: to float32 rounding unquantized, within the int8 error quantized."""
    plain_ln, plain, low = _fused_pair(recipe)
    g = torch.Generator().manual_seed(3)
    x, y, z = (torch.randn(N, L, E, generator=g, requires_grad=True) for _ in range(3))
    args = {"qqq": (x, x, x), "qkk": (x, y, y), "qqv": (x, x, z), "qkv": (x, y, z)}[inputs]
    h = plain_ln(x)
    want = plain(*(h if t is x else t for t in args), need_weights=False)[0]
    got = low(*args, need_weights=False)[0]
    (gw := torch.randn(want.shape, generator=g))
    want_grads = torch.autograd.grad(want, [x, plain_ln.weight, plain.in_proj_weight], gw)
    got_grads = torch.autograd.grad(got, [x, low.layer_norm.weight, low.in_proj_weight], gw)
    if RECIPES[recipe].quantized:
        assert 0 < _rel(got, want) < EXACT_TOL["int8"]
        for a, b in zip(got_grads, want_grads, strict=True):
            assert _rel(a, b) < 2 * EXACT_TOL["int8"]  # the backward's two quantized matmuls in series
    else:
        torch.testing.assert_close(got, want, **F32)
        for a, b in zip(got_grads, want_grads, strict=True):
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


def test_fused_layernorm_in_the_need_weights_fallback_and_compiled() -> None:
    plain_ln, plain, low = _fused_pair("switchback-sim")
    x = torch.randn(N, L, E)
    h = plain_ln(x)
    out, weights = low(x, x, x)  # need_weights=True: PyTorch's path, the LayerNorm applied first
    want, want_weights = plain(h, h, h)
    torch.testing.assert_close(out, want, **F32)
    torch.testing.assert_close(weights, want_weights, **F32)
    compiled = torch.compile(low, backend="eager", fullgraph=True)
    torch.testing.assert_close(compiled(x, x, x, need_weights=False)[0], low(x, x, x, need_weights=False)[0],
                               rtol=0, atol=0)


def test_fuse_norm_checks_its_width_and_unconvert_drops_it() -> None:
    _, _, low = _fused_pair("bf16")
    with pytest.raises(ValueError, match=r"normalizes \(16,\), not embed_dim \(32,\)"):
        low.fuse_norm(nn.LayerNorm(16))
    assert "LayerNorm fused in front" in repr(low)
    back = low.to_module()
    assert type(back) is nn.MultiheadAttention and not hasattr(back, "_norm_ref")
    assert back.in_proj_weight is low.in_proj_weight
