"""lowbit.functional.linear: every recipe against a float64 re-computation of its numerics and the exact linear."""

from __future__ import annotations

import sys

import pytest
import torch

from lowbit.functional import RECIPES, Matmul, Quant, Recipe, get_recipe, linear
from lowbit.kernels import quantize
from lowbit.kernels.blockwise import dequantize_blockwise, quantize_blockwise

QUANTIZED = [name for name, r in RECIPES.items() if r.quantized]


def _deq64(codes: torch.Tensor, scale: torch.Tensor, fmt: str) -> torch.Tensor:
    """float64 value of (codes, scale) laid out inner-dim-last with a [rows, 1] or [] scale."""
    c, s = codes.double(), scale.double()
    return c * s / 127 if fmt == "int8" else c / s


def _operand64(t: torch.Tensor, q: Quant | None, transpose: bool, weight: bool = False) -> torch.Tensor:
    """The operand as the recipe feeds it to its matmul (inner dim last), in float64."""
    if q is None:
        return (t.t() if transpose else t).double()
    if q.scaling == "block":  # 128×128 blocks of a weight (transposed with it), 1×128 along the inner dim otherwise
        if weight:
            codes, scale = quantize_blockwise(t, q.format, (128, 128), backend="torch")
            value = dequantize_blockwise(codes, scale, q.format, torch.float64)
            return value.t() if transpose else value
        src = (t.t() if transpose else t).contiguous()
        codes, scale = quantize_blockwise(src, q.format, (1, 128), backend="torch")
        return dequantize_blockwise(codes, scale, q.format, torch.float64)
    vector = q.scaling != "tensor"
    if transpose:
        codes, scale = quantize(t, q.format, "column" if vector else "tensor", transpose=True)
    else:
        codes, scale = quantize(t, q.format, "row" if vector else "tensor")
    return _deq64(codes, scale, q.format)


def recipe_reference(x, w, b, g, recipe: Recipe):
    """Forward, dX, dW of ``recipe`` wired by hand, every matmul in float64."""
    x2 = x.reshape(-1, x.shape[-1])
    g2 = g.reshape(-1, g.shape[-1])
    f, d, wg = recipe.forward, recipe.dgrad, recipe.wgrad
    y = _operand64(x2, f.left, False) @ _operand64(w, f.right, False, weight=True).t() + b.double()
    dx = _operand64(g2, d.left, False) @ _operand64(w, d.right, True, weight=True).t()
    if wg.quantized:
        dw = _operand64(g2, wg.left, True) @ _operand64(x2, wg.right, True).t()
    elif recipe.save == "forward-quantized":
        dw = g2.double().t() @ _operand64(x2, f.left, False)
    else:
        dw = g2.double().t() @ x2.double()
    return y.reshape(*x.shape[:-1], -1), dx.reshape(x.shape), dw, g2.double().sum(0)


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.double() - b).norm() / b.norm().clamp_min(1e-30))


# Loose tolerance against the exact linear, by the worst format in the recipe (relative Frobenius error).
EXACT_TOL = {"int8": 0.03, "e4m3": 0.08, "e5m2": 0.15}


@pytest.mark.parametrize("name", QUANTIZED)
def test_recipe_matches_its_float64_numerics_and_the_exact_linear(name: str) -> None:
    recipe = RECIPES[name]
    torch.manual_seed(1)
    x = torch.randn(3, 7, 48, requires_grad=True)
    w = (torch.randn(40, 48) / 7).requires_grad_()
    b = torch.randn(40, requires_grad=True)
    y = linear(x, w, b, recipe)
    g = torch.randn_like(y)
    dx, dw, db = torch.autograd.grad(y, [x, w, b], g)
    assert y.dtype == dx.dtype == dw.dtype == torch.float32
    ry, rdx, rdw, rdb = recipe_reference(x.detach(), w.detach(), b.detach(), g, recipe)
    # Tight: the same numerics up to float32 rounding of the epilogue / simulated matmul.
    for got, want in ((y, ry), (dx, rdx), (dw, rdw), (db, rdb)):
        assert _rel(got, want) < 2e-6, name
    # Loose: close to the exact linear; an unquantized wgrad is exact to float32 precision.
    x64, w64 = x.detach().double(), w.detach().double()
    ey = x64 @ w64.t() + b.detach().double()
    edx = g.double() @ w64
    edw = g.double().reshape(-1, 40).t() @ x64.reshape(-1, 48)
    tol = max(EXACT_TOL[f] for f in recipe.formats)
    assert _rel(y, ey) < tol and _rel(dx, edx) < tol and _rel(dw, edw) < tol
    if not recipe.wgrad.quantized and recipe.save == "input":
        assert _rel(dw, edw) < 1e-6


def test_bf16_recipe_is_f_linear() -> None:
    x, w, b = torch.randn(5, 8), torch.randn(4, 8), torch.randn(4)
    assert torch.equal(linear(x, w, b, "bf16"), torch.nn.functional.linear(x, w, b))


def test_shapes_without_bias_and_odd_dims() -> None:
    x = torch.randn(2, 3, 5, 19, requires_grad=True)
    w = torch.randn(13, 19, requires_grad=True)
    y = linear(x, w, None, "switchback")
    assert y.shape == (2, 3, 5, 13)
    y.sum().backward()
    assert x.grad.shape == x.shape and w.grad.shape == w.shape
    # empty batch
    e = linear(torch.randn(0, 19), w, None, "switchback")
    assert e.shape == (0, 13)


def test_autocast_bf16_casts_like_f_linear() -> None:
    x = torch.randn(16, 32)
    w = torch.randn(24, 32, requires_grad=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = linear(x, w, None, "switchback")
    assert y.dtype == torch.bfloat16
    y.float().sum().backward()
    assert w.grad is not None and w.grad.dtype == torch.float32


def test_nan_input_fast_mode_propagates_and_checked_mode_raises(monkeypatch) -> None:
    x = torch.randn(4, 16)
    x[1, 3] = float("nan")
    w = torch.randn(8, 16)
    y = linear(x, w, None, "switchback")
    assert bool(torch.isnan(y[1]).all()) and bool(torch.isfinite(y[[0, 2, 3]]).all())
    monkeypatch.setenv("LOWBIT_CHECK_FINITE", "1")
    with pytest.raises(ValueError, match="non-finite"):
        linear(x, w, None, "switchback")


def test_bad_input() -> None:
    w = torch.randn(8, 16)
    with pytest.raises(ValueError, match="last dim must be in_features=16"):
        linear(torch.randn(4, 15), w, None, "switchback")
    with pytest.raises(TypeError, match="dtypes differ"):
        linear(torch.randn(4, 16, dtype=torch.float16), w, None, "switchback")
    with pytest.raises(TypeError, match="floating"):
        linear(torch.ones(4, 16, dtype=torch.int64), w, None, "switchback")
    with pytest.raises(ValueError, match="bias must have shape"):
        linear(torch.randn(4, 16), w, torch.randn(9), "switchback")
    with pytest.raises(ValueError, match="unknown recipe 'int4'"):
        linear(torch.randn(4, 16), w, None, "int4")


def test_recipe_validation() -> None:
    assert get_recipe("switchback") is RECIPES["switchback"]
    with pytest.raises(ValueError, match="cannot be scaled column-wise"):
        Recipe("bad", forward=Matmul(Quant("int8", "column"), Quant("int8", "tensor")))
    with pytest.raises(ValueError, match="quantizes one operand"):
        Recipe("bad", forward=Matmul(Quant("int8", "row"), None))
    with pytest.raises(ValueError, match="mixes int8 with fp8"):
        Recipe("bad", forward=Matmul(Quant("int8", "row"), Quant("e4m3", "tensor")))
    with pytest.raises(ValueError, match="format must be"):
        Quant("int4", "row")  # type: ignore[arg-type]
    assert RECIPES["switchback-sim"].simulated and not RECIPES["switchback"].simulated
    assert "X int8 row-wise, W int8 tensor-wise" in RECIPES["switchback"].describe()


@pytest.mark.parametrize("name", ["switchback", "fp8-tensorwise"])
def test_torch_compile_fullgraph_matches_eager(name: str) -> None:
    """The ops are torch.library custom ops: dynamo traces the layer without graph breaks."""
    torch._dynamo.reset()
    from lowbit.nn import LowbitLinear

    layer = LowbitLinear(32, 24, recipe=name)
    x = torch.randn(10, 32, requires_grad=True)
    eager = layer(x)
    eager.sum().backward()
    g_eager = x.grad.clone()
    x.grad = None
    compiled = torch.compile(layer, fullgraph=True, backend="aot_eager")
    out = compiled(x)
    out.sum().backward()
    assert torch.allclose(out, eager, rtol=1e-6, atol=1e-6)
    assert torch.allclose(x.grad, g_eager, rtol=1e-6, atol=1e-6)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA (run on the GPU host)")
@pytest.mark.parametrize("name", [n for n in QUANTIZED if not RECIPES[n].uses_fp8
                                  or (torch.cuda.is_available() and torch.cuda.get_device_capability() >= (8, 9))])
@pytest.mark.parametrize("fp8_matmul", ["auto", "triton", "cublas"])
def test_cuda_triton_path_matches_cpu_reference(name: str, fp8_matmul: str, monkeypatch) -> None:
    """The Triton kernels (CUDA) and the PyTorch reference (CPU) give the same layer, fwd and bwd; fp8
    recipes with each matmul backend (cuBLAS only where it takes the operands)."""
    if fp8_matmul != "auto" and not RECIPES[name].uses_fp8:
        pytest.skip("the fp8 matmul backend only applies to fp8 recipes")
    monkeypatch.setenv("LOWBIT_FP8_MATMUL", fp8_matmul)
    torch.manual_seed(2)
    x = torch.randn(2, 100, 96)
    w = torch.randn(80, 96) / 10
    b = torch.randn(80)
    g = torch.randn(2, 100, 80)
    outs = []
    for dev in ("cpu", "cuda"):
        xs, ws, bs = (t.to(dev).requires_grad_() for t in (x, w, b))
        y = linear(xs, ws, bs, name)
        grads = torch.autograd.grad(y, [xs, ws, bs], g.to(dev))
        outs.append([t.detach().cpu() for t in (y, *grads)])
    # int8 accumulates exactly in int32 on both; Hopper's fp8 tensor cores accumulate with a reduced-precision
    # adder (about 2**-13 relative per partial sum), so fp8 gets a looser bound than float32 rounding.
    tol = 2e-3 if RECIPES[name].uses_fp8 else 1e-5
    for cpu, gpu in zip(*outs):
        assert _rel(gpu, cpu.double()) < tol, (name, _rel(gpu, cpu.double()))
        print(name, _rel(gpu, cpu.double()))


@pytest.mark.parametrize(("name", "dual_calls"), [("fp8-tensorwise", 2), ("fp8-tensorwise-sim", 2),
                                                  ("fp8-switchback", 0), ("fp8-rowwise", 0)])
def test_tensorwise_recipes_quantize_x_and_dy_once_for_both_layouts(name: str, dual_calls: int, monkeypatch) -> None:
    """X (forward + saved for wgrad) and dY (dgrad + wgrad) share one quantize_dual pass when the recipe gives
    both uses the same tensor-wise Quant; the results are the same as with separate passes."""
    from lowbit.kernels import ops

    calls = []
    real = ops.quantize_dual
    monkeypatch.setattr(ops, "quantize_dual", lambda x, fmt: calls.append(fmt) or real(x, fmt))
    torch.manual_seed(4)
    x = torch.randn(3, 20, 48, requires_grad=True)
    w = torch.randn(32, 48, requires_grad=True)
    g = torch.randn(3, 20, 32)
    y = linear(x, w, None, name)
    dx, dw = torch.autograd.grad(y, [x, w], g)
    assert len(calls) == dual_calls
    monkeypatch.setattr(ops, "quantize_dual", lambda x, fmt: pytest.fail("not expected"))
    monkeypatch.setattr(sys.modules["lowbit.functional.linear"], "_shares_codes", lambda a, b: False)
    y2 = linear(x, w, None, name)
    dx2, dw2 = torch.autograd.grad(y2, [x, w], g)
    assert torch.equal(y, y2) and torch.equal(dx, dx2) and torch.equal(dw, dw2)


@pytest.mark.parametrize(("name", "one_pass"), [("switchback", True), ("fp8-switchback", True),
                                              ("fp8-switchback-sim", True), ("fp8-tensorwise", False),
                                              ("fp8-blockwise", False)])
def test_row_wise_dy_codes_and_the_bias_gradient_come_from_one_pass(name: str, one_pass: bool, monkeypatch) -> None:
    """Recipes whose dgrad takes dY row-wise get dY's codes and the bias gradient (dY's column sums) from one
    quantize_rows_colsum pass, with the gradients of a separate row quantizer and float32 sum (Triton on a GPU,
    the reference here); other recipes, and a layer without a bias, never call it."""
    from lowbit.kernels import ops

    calls = []
    real = ops.quantize_rows_colsum
    monkeypatch.setattr(ops, "quantize_rows_colsum", lambda t, fmt: calls.append(fmt) or real(t, fmt))
    recipe = RECIPES[name]
    gpu_ok = torch.cuda.is_available() and (not recipe.uses_fp8 or torch.cuda.get_device_capability() >= (8, 9))
    device = "cuda" if gpu_ok and not recipe.simulated else "cpu"
    torch.manual_seed(5)
    x = torch.randn(3, 20, 256, device=device, requires_grad=True)
    w = torch.randn(128, 256, device=device, requires_grad=True)
    b = torch.randn(128, device=device, requires_grad=True)
    g = torch.randn(3, 20, 128, device=device)
    grads = torch.autograd.grad(linear(x, w, b, name), [x, w, b], g)
    assert len(calls) == int(one_pass)
    torch.autograd.grad(linear(x, w, None, name), [x, w], g)
    assert len(calls) == int(one_pass)  # no bias: the plain row quantizer
    monkeypatch.setattr(ops, "quantize_rows_colsum", lambda t, fmt: (*ops.quantize(t, fmt, "row", False),
                                                                     t.sum(0, dtype=torch.float32)))
    again = torch.autograd.grad(linear(x, w, b, name), [x, w, b], g)
    for got, want in zip(grads[:2], again[:2], strict=True):
        assert torch.equal(got, want)
    # float32 column sums of 60 rows in another order (the kernel's per-program partials): n·eps·Σ|g| bounds it
    bound = 60 * torch.finfo(torch.float32).eps * float(g.reshape(-1, 128).abs().sum(0).max())
    torch.testing.assert_close(grads[2], again[2], rtol=0, atol=0 if device == "cpu" else bound)


@pytest.mark.skipif(not (torch.cuda.is_available() and torch.cuda.get_device_capability() >= (8, 9)),
                    reason="needs an fp8 GPU")
@pytest.mark.parametrize("name", ["fp8-switchback", "fp8-tensorwise", "fp8-rowwise"])
def test_cuda_bf16_layer_cublas_matches_triton(name: str, monkeypatch) -> None:
    """In bf16 (where the auto backend may pick torch._scaled_mm) the cuBLAS and Triton fp8 matmuls give the
    same layer, fwd and bwd, to bf16 rounding; all dims are multiples of 16 so cuBLAS takes every matmul."""
    torch.manual_seed(3)
    x = torch.randn(2, 128, 96, device="cuda", dtype=torch.bfloat16)
    w = (torch.randn(80, 96, device="cuda") / 10).bfloat16()
    b = torch.randn(80, device="cuda", dtype=torch.bfloat16)
    g = torch.randn(2, 128, 80, device="cuda", dtype=torch.bfloat16)
    outs = {}
    for backend in ("triton", "cublas"):
        monkeypatch.setenv("LOWBIT_FP8_MATMUL", backend)
        xs, ws, bs = (t.clone().requires_grad_() for t in (x, w, b))
        y = linear(xs, ws, bs, name)
        outs[backend] = [y, *torch.autograd.grad(y, [xs, ws, bs], g)]
    for t, c in zip(outs["triton"], outs["cublas"]):
        assert _rel(c.float(), t.double()) < 1e-2, (name, _rel(c.float(), t.double()))


@pytest.mark.parametrize("name", [n for n in QUANTIZED if "block" in n])
def test_block_recipes_with_several_blocks_per_dimension(name: str) -> None:
    """K, N and the token count all span several 128-blocks, the last one partial."""
    recipe = RECIPES[name]
    torch.manual_seed(5)
    x = torch.randn(2, 70, 200, requires_grad=True)
    w = (torch.randn(150, 200) / 14).requires_grad_()
    b = torch.randn(150, requires_grad=True)
    y = linear(x, w, b, recipe)
    g = torch.randn_like(y)
    got = (y, *torch.autograd.grad(y, [x, w, b], g))
    want = recipe_reference(x.detach(), w.detach(), b.detach(), g, recipe)
    for t, r in zip(got, want):
        assert _rel(t, r) < 2e-6, name
