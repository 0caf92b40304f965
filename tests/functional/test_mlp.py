"""Fused MLP / LayerNorm→Linear / LayerNorm→MLP: the unfused composition's numbers, every recipe and activation.

Contract (issue #17): the fused function computes what ``LowbitLinear → activation → LowbitLinear`` (and
``nn.LayerNorm → ...``) computes with the same recipe: the same codes and scales, so in float32 on the CPU the
outputs and every gradient are *bit-identical* (``torch.equal``). The unfused composition itself is checked
against float64 re-computations of each recipe in test_linear.py; here the fused one is also checked against the
exact float64 MLP within the recipe's quantization tolerance.
"""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from lowbit.functional import RECIPES, layernorm_linear, layernorm_mlp, mlp
from lowbit.nn import LowbitLinear

ALL = list(RECIPES)
BLOCK = [n for n in RECIPES if "block" in n]


class QuickGELU(nn.Module):
    """open_clip's / HF's QuickGELU, as written there."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.sigmoid(1.702 * x)


ACTS = {"gelu": nn.GELU(), "gelu_tanh": nn.GELU(approximate="tanh"), "quick_gelu": QuickGELU()}
EXACT_TOL = {"int8": 0.03, "e4m3": 0.08, "e5m2": 0.15}


def _layers(name: str, d: int, h: int, o: int, bias: bool = True) -> tuple[LowbitLinear, LowbitLinear]:
    fc1 = LowbitLinear(d, h, bias=bias, recipe=name)
    fc2 = LowbitLinear(h, o, bias=bias, recipe=name)
    with torch.no_grad():
        fc2.weight.mul_(3)  # keep fc2's output comparable to its input
    return fc1, fc2


def _grads(y: torch.Tensor, params: list[torch.Tensor], g: torch.Tensor) -> list[torch.Tensor]:
    return [y, *torch.autograd.grad(y, [p for p in params if p is not None], g)]


def _assert_identical(got: list[torch.Tensor], want: list[torch.Tensor], what: str) -> None:
    names = ["out", "dx", *[f"grad{i}" for i in range(len(got) - 2)]]
    for n, a, b in zip(names, got, want):
        assert a.dtype == b.dtype and a.shape == b.shape, (what, n)
        assert torch.equal(a, b), (what, n, float((a - b).abs().max()))


@pytest.mark.parametrize("activation", list(ACTS))
@pytest.mark.parametrize("name", ALL)
def test_fused_mlp_is_bit_identical_to_the_unfused_composition(name: str, activation: str) -> None:
    """Odd widths, two leading batch dims, float32 on the CPU."""
    torch.manual_seed(0)
    fc1, fc2 = _layers(name, 19, 37, 23)
    x = torch.randn(2, 5, 19, requires_grad=True)
    params = [x, fc1.weight, fc1.bias, fc2.weight, fc2.bias]
    want = fc2(ACTS[activation](fc1(x)))
    g = torch.randn_like(want)
    want = _grads(want, params, g)
    got = _grads(mlp(x, fc1.weight, fc1.bias, fc2.weight, fc2.bias, activation, name), params, g)
    _assert_identical(got, want, f"{name}/{activation}")


@pytest.mark.parametrize("name", [*BLOCK, "switchback", "fp8-tensorwise", "switchback-m"])
def test_fused_mlp_several_blocks_no_bias(name: str) -> None:
    """Widths and the token count spanning several 128-blocks (last one partial); no biases."""
    torch.manual_seed(1)
    fc1, fc2 = _layers(name, 150, 260, 140, bias=False)
    x = torch.randn(3, 50, 150, requires_grad=True)
    params = [x, fc1.weight, fc2.weight]
    want = fc2(ACTS["gelu"](fc1(x)))
    g = torch.randn_like(want)
    want = _grads(want, params, g)
    got = _grads(mlp(x, fc1.weight, None, fc2.weight, None, "gelu", name), params, g)
    _assert_identical(got, want, name)


@pytest.mark.parametrize("activation", list(ACTS))
@pytest.mark.parametrize("name", [n for n in ALL if not n.endswith("-sim")])
def test_fused_mlp_close_to_the_exact_float64_mlp(name: str, activation: str) -> None:
    torch.manual_seed(2)
    fc1, fc2 = _layers(name, 48, 96, 40)
    x = torch.randn(4, 9, 48, requires_grad=True)
    params = [x, fc1.weight, fc1.bias, fc2.weight, fc2.bias]
    y = mlp(x, fc1.weight, fc1.bias, fc2.weight, fc2.bias, activation, name)
    g = torch.randn_like(y)
    got = _grads(y, params, g)
    p64 = [p.detach().double().requires_grad_() for p in params]
    y64 = nn.functional.linear(ACTS[activation](nn.functional.linear(p64[0], p64[1], p64[2])), p64[3], p64[4])
    want = _grads(y64, p64, g.double())
    recipe = RECIPES[name]
    tol = max((EXACT_TOL[f] for f in recipe.formats), default=1e-6) * 2  # two layers of quantization noise
    for a, b in zip(got, want):
        rel = float((a.double() - b).norm() / b.norm())
        assert rel < tol, (name, activation, rel)


@pytest.mark.parametrize("name", ["switchback", "fp8-switchback", "bf16", "switchback-block"])
def test_recompute_activation_gives_the_same_gradients_and_saves_less(name: str) -> None:
    torch.manual_seed(3)
    fc1, fc2 = _layers(name, 32, 80, 24)
    x = torch.randn(6, 32, requires_grad=True)
    params = [x, fc1.weight, fc1.bias, fc2.weight, fc2.bias]
    g = torch.randn(6, 24)
    outs, saved = [], []
    for recompute in (False, True):
        ys: list[torch.Tensor] = []
        kept = _saved(lambda r=recompute, ys=ys: ys.append(mlp(x, fc1.weight, fc1.bias, fc2.weight, fc2.bias, "gelu", name,
                                                        recompute_activation=r)))
        outs.append(_grads(ys[0], params, g))
        saved.append(sum(math.prod(s) * torch.empty((), dtype=dt).element_size() for dt, s in kept))
    _assert_identical(outs[1], outs[0], name)
    assert saved[1] == saved[0] - 6 * 80 * 4  # the hidden activation g (float32) is no longer kept


def _saved(fn) -> list[tuple[torch.dtype, tuple[int, ...]]]:
    out: list[tuple[torch.dtype, tuple[int, ...]]] = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: out.append((t.dtype, tuple(t.shape))) or t,
                                                  lambda t: t):
        fn()
    return out


@pytest.mark.parametrize(("name", "hidden_16bit", "hidden_codes"), [
    ("switchback", 2, 0),           # pre-activation a (for GELU') and g (fc2's 16-bit wgrad)
    ("switchback-m", 1, 1),         # a, and g as int8 codes + row scales (SPEC §3: X as int8 + row scales)
    ("fp8-tensorwise", 1, 1),       # a, and gᵀ as fp8 codes for the fp8 wgrad
    ("fp8-blockwise", 1, 1),        # a, and gᵀ as e4m3 codes + 1×128 block scales
    ("bf16", 2, 0),
])
def test_what_the_fused_mlp_saves_for_the_backward(name: str, hidden_16bit: int, hidden_codes: int) -> None:
    fc1, fc2 = _layers(name, 32, 80, 24)
    x = torch.randn(6, 32, requires_grad=True)
    saved = _saved(lambda: mlp(x, fc1.weight, fc1.bias, fc2.weight, fc2.bias, "gelu", name))
    hidden = [(dt, s) for dt, s in saved if math.prod(s) == 6 * 80]
    assert sum(dt == torch.float32 for dt, _ in hidden) == hidden_16bit, saved
    assert sum(dt != torch.float32 for dt, _ in hidden) == hidden_codes, saved


def test_bad_input_raises_as_lowbit_linear_does() -> None:
    w1, b1, w2, b2 = torch.randn(16, 8), torch.randn(16), torch.randn(8, 16), torch.randn(8)
    with pytest.raises(ValueError, match="last dim must be in_features=8"):
        mlp(torch.randn(4, 7), w1, b1, w2, b2)
    with pytest.raises(TypeError, match="dtypes differ"):
        mlp(torch.randn(4, 8, dtype=torch.float16), w1, b1, w2, b2)
    with pytest.raises(TypeError, match="floating"):
        mlp(torch.ones(4, 8, dtype=torch.int64), w1, b1, w2, b2)
    with pytest.raises(ValueError, match="bias must have shape"):
        mlp(torch.randn(4, 8), w1, torch.randn(9), w2, b2)
    with pytest.raises(ValueError, match="fc2's weight must be"):
        mlp(torch.randn(4, 8), w1, b1, torch.randn(8, 15), b2)
    with pytest.raises(ValueError, match="bias must have shape"):
        mlp(torch.randn(4, 8), w1, b1, w2, torch.randn(3))
    with pytest.raises(ValueError, match="activation must be one of"):
        mlp(torch.randn(4, 8), w1, b1, w2, b2, "relu")
    with pytest.raises(ValueError, match="unknown recipe 'int4'"):
        mlp(torch.randn(4, 8), w1, b1, w2, b2, "gelu", "int4")
    with pytest.raises(ValueError, match="ln_weight must have shape"):
        layernorm_mlp(torch.randn(4, 8), torch.ones(7), None, w1, b1, w2, b2)
    with pytest.raises(TypeError, match="dtypes differ"):
        layernorm_linear(torch.randn(4, 8).half(), torch.ones(8).half(), None, w1, b1)
    with pytest.raises(ValueError, match="eps must be > 0"):
        layernorm_linear(torch.randn(4, 8), None, None, w1, b1, "switchback", 0.0)
    # empty batch
    assert mlp(torch.randn(0, 8), w1, b1, w2, b2).shape == (0, 8)
    assert layernorm_mlp(torch.randn(2, 0, 8), None, None, w1, b1, w2, b2).shape == (2, 0, 8)


def test_nan_fast_mode_propagates_and_checked_mode_raises(monkeypatch) -> None:
    w1, w2 = torch.randn(16, 8), torch.randn(8, 16)
    x = torch.randn(4, 8)
    x[1, 3] = float("nan")
    y = mlp(x, w1, None, w2, None)
    assert bool(torch.isnan(y[1]).all()) and bool(torch.isfinite(y[[0, 2, 3]]).all())
    monkeypatch.setenv("LOWBIT_CHECK_FINITE", "1")
    with pytest.raises(ValueError, match="non-finite"):
        mlp(x, w1, None, w2, None)


def test_autocast_bf16_and_bf16_inputs() -> None:
    fc1, fc2 = _layers("switchback", 32, 64, 32)
    x = torch.randn(8, 32)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = mlp(x, fc1.weight, fc1.bias, fc2.weight, fc2.bias)
        y_ref = fc2(ACTS["gelu"](fc1(x)))
    assert y.dtype == torch.bfloat16
    y.float().sum().backward()
    assert fc1.weight.grad is not None and fc1.weight.grad.dtype == torch.float32
    # 16-bit: the fused epilogue rounds once where the composition rounds twice: equal at bf16 precision
    assert float((y.float() - y_ref.float()).norm() / y_ref.float().norm()) < 1e-2
    ln = nn.LayerNorm(32)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        z = layernorm_linear(x, ln.weight, ln.bias, fc1.weight, fc1.bias)
        z_ref = fc1(ln(x))
    assert z.dtype == torch.bfloat16 and float((z.float() - z_ref.float()).norm() / z_ref.float().norm()) < 1e-2


@pytest.mark.parametrize("name", ALL)
def test_layernorm_mlp_and_linear_are_bit_identical_to_the_unfused_composition(name: str) -> None:
    torch.manual_seed(4)
    d = 150 if "block" in name else 24
    ln = nn.LayerNorm(d)
    with torch.no_grad():
        ln.weight.normal_()
        ln.bias.normal_()
    fc1, fc2 = _layers(name, d, 2 * d + 3, 17)
    x = torch.randn(2, 7, d, requires_grad=True)
    params = [x, ln.weight, ln.bias, fc1.weight, fc1.bias, fc2.weight, fc2.bias]
    for activation in ("gelu", "quick_gelu"):
        want = fc2(ACTS[activation](fc1(ln(x))))
        g = torch.randn_like(want)
        want = _grads(want, params, g)
        got = _grads(layernorm_mlp(x, ln.weight, ln.bias, fc1.weight, fc1.bias, fc2.weight, fc2.bias, activation,
                                   name, ln.eps), params, g)
        _assert_identical(got, want, f"{name}/{activation}")
    want = fc1(ln(x))
    g = torch.randn_like(want)
    want = _grads(want, params[:5], g)
    got = _grads(layernorm_linear(x, ln.weight, ln.bias, fc1.weight, fc1.bias, name, ln.eps), params[:5], g)
    _assert_identical(got, want, name)


def test_layernorm_fusion_writes_codes_and_skips_the_16bit_output_where_unneeded(monkeypatch) -> None:
    """switchback-m needs only the codes of LN(x) (its wgrad dequantizes them): no 16-bit [T, d] LN output is
    saved; switchback keeps it for the 16-bit wgrad."""
    from lowbit.functional import _pieces

    calls = []
    real = _pieces.layernorm_quantize
    monkeypatch.setattr(_pieces, "layernorm_quantize",
                        lambda *a, **k: calls.append((a[4], a[5], k.get("want_y16"))) or real(*a, **k))
    ln = nn.LayerNorm(32)
    fc1 = LowbitLinear(32, 48)
    x = torch.randn(5, 32, requires_grad=True)
    for name, want in (("switchback-m", ("int8", "row", False)), ("switchback", ("int8", "row", True)),
                       ("fp8-blockwise", ("e4m3", "block", True)), ("bf16", (None, "row", True))):
        calls.clear()
        saved = _saved(lambda name=name: layernorm_linear(x, ln.weight, ln.bias, fc1.weight, fc1.bias, name))
        assert calls == [want], name
        if name == "switchback-m":
            assert sum(dt == torch.float32 and s == (5, 32) for dt, s in saved) == 1  # x itself (LN backward)


@pytest.mark.parametrize("name", ["switchback", "fp8-blockwise", "switchback-block-sim"])
def test_torch_compile_fullgraph_matches_eager(name: str) -> None:
    torch._dynamo.reset()
    from lowbit.nn import LowbitMLP

    m = LowbitMLP(32, 140, recipe=name)
    x = torch.randn(10, 32, requires_grad=True)
    eager = m(x)
    eager.sum().backward()
    g_eager = x.grad.clone()
    x.grad = None
    compiled = torch.compile(m, fullgraph=True, backend="aot_eager")
    out = compiled(x)
    out.sum().backward()
    assert torch.allclose(out, eager, rtol=1e-6, atol=1e-6)
    assert torch.allclose(x.grad, g_eager, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("name", ["fp8-tensorwise", "switchback-block"])
def test_torch_compile_takes_the_per_linear_composition(name: str, monkeypatch) -> None:
    """Outside SPEC §10's row-wise flow, the fused modules compute the per-linear composition under torch.compile
    (custom ops dynamo and CUDA graphs can capture) instead of the fused function, whose Triton GEMM launches with
    epilogue hooks would break the graph on a GPU. (Row-wise recipes: tests/functional/test_row_flow.py.)"""
    torch._dynamo.reset()
    from lowbit.functional import _fused
    from lowbit.nn import LayerNormLinear, LayerNormMLP, LowbitMLP

    torch.manual_seed(0)
    mods = [LowbitMLP(32, 72, recipe=name), LayerNormMLP(32, 72, recipe=name), LayerNormLinear(32, 48, recipe=name)]
    x = torch.randn(2, 5, 32)
    eager = []
    for m in mods:
        xi = x.clone().requires_grad_()
        y = m(xi)
        y.square().sum().backward()
        eager.append((y.detach(), xi.grad, [p.grad.clone() for p in m.parameters()]))
        m.zero_grad()

    def refuse(ctx, *args):
        raise RuntimeError("the fused function ran under torch.compile")

    # dynamo traces an autograd.Function's forward (not its apply): refuse there
    monkeypatch.setattr(_fused._FusedFunction, "forward", staticmethod(refuse))
    for m, (y0, gx0, gp0) in zip(mods, eager):
        xi = x.clone().requires_grad_()
        y = torch.compile(m, fullgraph=True, backend="aot_eager")(xi)
        y.square().sum().backward()
        # the same codes and scales as the fused function: float32 rounding apart (summation order)
        assert torch.allclose(y, y0, rtol=1e-5, atol=1e-5), type(m).__name__
        assert torch.allclose(xi.grad, gx0, rtol=1e-4, atol=1e-5), type(m).__name__
        for p, g0 in zip(m.parameters(), gp0):
            assert torch.allclose(p.grad, g0, rtol=1e-4, atol=1e-4), type(m).__name__
        with pytest.raises(RuntimeError, match="fused function ran"):
            m(x)  # eager still takes the fused function


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA (run on the GPU host)")
@pytest.mark.parametrize("name", [n for n in ALL if not RECIPES[n].uses_fp8
                                  or (torch.cuda.is_available() and torch.cuda.get_device_capability() >= (8, 9))])
def test_cuda_fused_mlp_matches_cpu(name: str) -> None:
    torch.manual_seed(5)
    fc1, fc2 = _layers(name, 96, 200, 96)
    x = torch.randn(2, 100, 96)
    g = torch.randn(2, 100, 96)
    outs = []
    for dev in ("cpu", "cuda"):
        p = [t.detach().to(dev).requires_grad_() for t in (x, fc1.weight, fc1.bias, fc2.weight, fc2.bias)]
        y = mlp(*p, "gelu", name)
        outs.append([t.detach().cpu() for t in _grads(y, p, g.to(dev))])
    # CUDA and the CPU compute the float32 pre-quantization values in different orders (and GELU with different
    # erf code), so a value at a rounding boundary can take the neighbouring code. A flipped code moves that
    # operand element by one quantization step: ≤ absmax/127 for int8 (≈ 4/127 of a Gaussian row's RMS), ≤ 2**-3
    # of the value for e4m3. Allowing up to 1% flipped codes bounds the relative error by √0.01 · step: 3e-3 for
    # int8, 1.25e-2 for fp8 (plus Hopper's reduced-precision fp8 accumulation); a wrong scale, layout or missing
    # epilogue step errs by O(1). Unquantized (bf16) runs differ only by float32 rounding.
    r = RECIPES[name]
    tol = 2e-2 if r.uses_fp8 else (5e-3 if r.quantized else 1e-5)
    for c, d in zip(*outs):
        assert float((d.double() - c.double()).norm() / c.double().norm()) < tol, name


@pytest.mark.parametrize("name", ALL)
def test_empty_batch_and_partial_requires_grad(name: str) -> None:
    """No tokens; only the weights, only the input, or only a bias needing gradients."""
    w1, w2 = torch.randn(16, 8, requires_grad=True), torch.randn(8, 16, requires_grad=True)
    b1 = torch.randn(16, requires_grad=True)
    for fn in (mlp, lambda x, *a: layernorm_mlp(x, None, None, *a)):
        x = torch.randn(0, 8, requires_grad=True)
        fn(x, w1, None, w2, None, "gelu", name).sum().backward()
        assert x.grad.shape == (0, 8) and bool((w1.grad == 0).all())
        w1.grad = None
        fn(torch.randn(5, 8), w1, None, w2, None, "gelu", name).sum().backward()
        assert w1.grad is not None and w2.grad is not None
        x = torch.randn(5, 8, requires_grad=True)
        fn(x, w1.detach(), b1, w2.detach(), None, "quick_gelu", name).sum().backward()
        assert x.grad is not None and b1.grad is not None
        x.grad = b1.grad = w1.grad = w2.grad = None
