"""lowbit.kernels.gemm: the Triton GEMM family and its epilogue hooks against a float64 reference.

On a CPU machine the kernel runs in Triton's interpreter (tests/conftest.py sets TRITON_INTERPRET=1), through
both operand paths: TMA tensor descriptors (rows 16-byte aligned) and pointer loads (odd K). Tolerances: int8
codes multiply exactly, so the float64 reference and the kernel differ only by the final rounding to the output
dtype (at most one ulp of bf16, 2**-8 relative, where float32 and float64 land on two sides of a tie); fp8 codes
multiply exactly in float32 too at these sizes (products of two fp8 values have ≤ 8 significant bits).
"""

from __future__ import annotations

import math

import pytest
import torch

from lowbit.kernels import _reference as R
from lowbit.kernels._common import ACTIVATIONS
from lowbit.kernels.gemm import gemm, gemm_reference

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
BF16_ULP = 2.0**-8
# (M, N, K): aligned rows (TMA path), K not a multiple of 16 (pointer path), tails in M and N.
SHAPES = [(37, 45, 80), (20, 33, 45)]


def _blockq(x: torch.Tensor, fmt: str, square: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Block quantizer for the test: 1×128 blocks along K, or 128×128 blocks (square)."""
    M, K = x.shape
    nk = math.ceil(K / 128)
    xp = torch.nn.functional.pad(x.float(), (0, nk * 128 - K))
    if square:
        nm = math.ceil(M / 128)
        xp = torch.nn.functional.pad(xp, (0, 0, 0, nm * 128 - M))
        scale = R.scale_from_absmax(xp.reshape(nm, 128, nk, 128).abs().amax(dim=(1, 3)), fmt)
        full = scale.repeat_interleave(128, 0).repeat_interleave(128, 1)[:M, :K]
    else:
        scale = R.scale_from_absmax(xp.reshape(M, nk, 128).abs().amax(dim=2), fmt)
        full = scale.repeat_interleave(128, 1)[:, :K]
    return R.quantize_with_scale(x, full, fmt), scale


def _operands(fmt: str, M: int, N: int, K: int, gen: torch.Generator):
    x = torch.randn(M, K, generator=gen).to(DEVICE)
    w = torch.randn(N, K, generator=gen).to(DEVICE)
    if fmt == "bf16":
        return x.bfloat16(), w.bfloat16(), None, None
    qa, sa = R.quantize(x, fmt, "row")
    qb, sb = R.quantize(w, fmt, "tensor")
    return qa, qb, sa, sb


def _fmt(t: torch.Tensor) -> str | None:
    return {torch.int8: "int8", torch.float8_e4m3fn: "e4m3", torch.float8_e5m2: "e5m2"}.get(t.dtype)


def _acc_slack(a, b, sa, sb, blockwise: bool = False) -> torch.Tensor | float:
    """Hopper's fp8 tensor cores add partial products in a reduced-precision adder (about 14 significant bits,
    DeepSeek-V3 §3.3.2), so on a GPU an fp8 output may differ from the exact sum by the recursive-summation bound
    ``K · 2**-14 · Σ|a·b|`` (dequantized). int8 (exact int32) and the interpreter (float32) need no slack."""
    if not (a.is_cuda and b.dtype in (torch.float8_e4m3fn, torch.float8_e5m2)):
        return 0.0
    fa = R.dequant_factor(sa, "e4m3" if a.dtype == torch.float8_e4m3fn else "e5m2").double()
    fb = R.dequant_factor(sb, "e4m3" if b.dtype == torch.float8_e4m3fn else "e5m2").double()
    if blockwise:
        fa, fb = fa.amax(dim=1, keepdim=True), fb.amax()
    s = a.double().abs() @ b.double().abs().t() * fa * (fb.reshape(1, -1) if fb.numel() > 1 else fb)
    return a.shape[1] * 2.0**-14 * s


def _check(got, want, tol_ulps: float = 1.0, slack: torch.Tensor | float = 0.0):
    for name, g, w in zip(got._fields, got, want):
        assert (g is None) == (w is None), name
        if g is None:
            continue
        assert g.shape == w.shape and g.dtype == w.dtype, name
        g64, w64 = g.double(), w.double()
        assert torch.isfinite(g64).all(), name
        # One bf16 ulp of the larger magnitude (float32 vs float64 rounding at ties), plus the float32
        # column-sum's own rounding for colsum.
        bound = tol_ulps * BF16_ULP * w64.abs().clamp_min(1e-30) + 1e-6 * w64.abs().max()
        if isinstance(slack, torch.Tensor):
            # The accumulator's slack, carried through the activation (|act'| ≤ 1.2) and summed for colsum.
            sl = 1.2 * slack
            bound = bound + (sl.sum(0) if name == "colsum" else sl.amax(1, keepdim=True) if g.ndim == 2
                             and g.shape[1] == 1 else sl.amax() if g.ndim == 0 else sl)
        assert ((g64 - w64).abs() <= bound).all(), f"{name}: max err {(g64 - w64).abs().max().item()}"


def _reference(a, b, sa, sb, **kw):
    fa, fb = _fmt(a), _fmt(b)
    opts = dict(bias=None, activation=None, store_preact=False, act_grad_at=None, amax=None, colsum=False,
                blockwise=False, quantize_a=None, out_dtype=torch.bfloat16)
    opts.update(kw)
    return gemm_reference(a, b, sa, sb, fa, fb, acc_dtype=torch.float64, **opts)


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("fmt", ["int8", "e4m3", "bf16"])
def test_plain_and_bias(fmt, shape):
    gen = torch.Generator().manual_seed(1)
    M, N, K = shape
    a, b, sa, sb = _operands(fmt, M, N, K, gen)
    bias = torch.randn(N, generator=gen).bfloat16().to(DEVICE)
    for kw in ({}, {"bias": bias}):
        got = gemm(a, b, sa, sb, backend="triton", **kw)
        _check(got, _reference(a, b, sa, sb, **kw), slack=_acc_slack(a, b, sa, sb))


@pytest.mark.parametrize("activation", ACTIVATIONS)
@pytest.mark.parametrize("fmt", ["int8", "e4m3"])
def test_forward_epilogue_hooks(fmt, activation):
    """fc1's epilogue: bias, stored pre-activation, activation, absmax and column sums of what is stored."""
    gen = torch.Generator().manual_seed(2)
    M, N, K = SHAPES[0]
    a, b, sa, sb = _operands(fmt, M, N, K, gen)
    bias = torch.randn(N, generator=gen).bfloat16().to(DEVICE)
    for amax in ("row", "tensor"):
        kw = dict(bias=bias, activation=activation, store_preact=True, amax=amax, colsum=True)
        got = gemm(a, b, sa, sb, backend="triton", **kw)
        want = _reference(a, b, sa, sb, **kw)
        _check(got, want, tol_ulps=2.0, slack=_acc_slack(a, b, sa, sb))
        # The absmax is of the stored output itself: exactly what the standalone quantizer would compute.
        assert torch.equal(got.amax, R.absmax(got.out, amax))


@pytest.mark.parametrize("activation", ACTIVATIONS)
def test_backward_epilogue_multiplies_by_activation_derivative(activation):
    gen = torch.Generator().manual_seed(3)
    M, N, K = SHAPES[1]
    a, b, sa, sb = _operands("e4m3", M, N, K, gen)
    pre = torch.randn(M, N, generator=gen).bfloat16().to(DEVICE)
    kw = dict(activation=activation, act_grad_at=pre, colsum=True, amax="row")
    got = gemm(a, b, sa, sb, backend="triton", **kw)
    _check(got, _reference(a, b, sa, sb, **kw), tol_ulps=2.0, slack=_acc_slack(a, b, sa, sb))
    # And the derivative itself is PyTorch's: autograd of the activation at the same point.
    x = pre.double().requires_grad_()
    act = {"gelu": lambda t: torch.nn.functional.gelu(t),
           "gelu_tanh": lambda t: torch.nn.functional.gelu(t, approximate="tanh"),
           "quick_gelu": lambda t: t * torch.sigmoid(1.702 * t)}[activation]
    dg = gemm(a, b, sa, sb, backend="triton").out.double()
    (dx,) = torch.autograd.grad(act(x), x, dg)
    assert torch.allclose(got.out.double(), dx, rtol=2 * BF16_ULP, atol=1e-6)


@pytest.mark.parametrize("fmt", ["int8", "e4m3", "e5m2"])
@pytest.mark.parametrize("scaling", ["row", "tensor"])
def test_quantize_on_load_gives_the_quantizers_codes(fmt, scaling):
    """A 16-bit A quantized in the kernel equals the same GEMM on the standalone quantizer's codes."""
    gen = torch.Generator().manual_seed(4)
    for M, N, K in SHAPES:
        x = (torch.randn(M, K, generator=gen) * 3).bfloat16().to(DEVICE)
        x[0] = 0  # an all-zero row: codes 0, finite scale
        w = torch.randn(N, K, generator=gen).to(DEVICE)
        qa, sa = R.quantize(x, fmt, scaling)
        qb, sb = R.quantize(w, "e4m3" if fmt == "e5m2" else fmt, "tensor")
        fused = gemm(x, qb, sa, sb, quantize_a=fmt, backend="triton").out
        unfused = gemm(qa, qb, sa, sb, backend="triton").out
        assert torch.equal(fused, unfused)


@pytest.mark.parametrize("fmt", ["int8", "e4m3"])
def test_block_scaled_operands(fmt):
    gen = torch.Generator().manual_seed(5)
    for M, N, K in [(37, 140, 300), (20, 33, 45)]:
        x = torch.randn(M, K, generator=gen).to(DEVICE)
        w = torch.randn(N, K, generator=gen).to(DEVICE)
        qa, sa = _blockq(x, fmt, square=False)
        qb, sb = _blockq(w, fmt, square=True)
        bias = torch.randn(N, generator=gen).bfloat16().to(DEVICE)
        got = gemm(qa, qb, sa, sb, bias=bias, blockwise=True, backend="triton")
        _check(got, _reference(qa, qb, sa, sb, bias=bias, blockwise=True),
               slack=_acc_slack(qa, qb, sa, sb, blockwise=True))
        # Both operands 1×128-blocked (the wgrad of a block-scaled recipe).
        qb1, sb1 = _blockq(w, fmt, square=False)
        _check(gemm(qa, qb1, sa, sb1, blockwise=True, backend="triton"),
               _reference(qa, qb1, sa, sb1, blockwise=True), slack=_acc_slack(qa, qb1, sa, sb1, blockwise=True))
        # Block scales recover the matmul of the unquantized operands to the codes' precision.
        exact = x.double() @ w.double().t() + bias.double()
        rel = (got.out.double() - exact).norm() / exact.norm()
        assert rel < (0.02 if fmt == "int8" else 0.08)


def test_reference_backend_matches_kernel_and_torch_on_cpu():
    gen = torch.Generator().manual_seed(6)
    a, b, sa, sb = _operands("int8", 24, 40, 64, gen)
    kw = dict(activation="gelu", store_preact=True, amax="row")
    _check(gemm(a, b, sa, sb, backend="torch", **kw), gemm(a, b, sa, sb, backend="triton", **kw))


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        (dict(activation="relu"), ValueError, "activation"),
        (dict(act_grad_at=torch.zeros(3, 3)), ValueError, "act_grad_at needs"),
        (dict(amax="column"), ValueError, "amax"),
        (dict(blockwise=True), ValueError, "block-wise"),
        (dict(quantize_a="e4m3"), TypeError, "quantize_a"),
    ],
)
def test_bad_arguments_name_the_problem(kwargs, error, match):
    a, b, sa, sb = _operands("int8", 8, 8, 32, torch.Generator().manual_seed(0))
    with pytest.raises(error, match=match):
        gemm(a, b, sa, sb, **kwargs)


def test_bad_operands_name_the_problem():
    a, b, sa, sb = _operands("int8", 8, 8, 32, torch.Generator().manual_seed(0))
    with pytest.raises(ValueError, match="same K"):
        gemm(a, b[:, :16], sa, sb)
    with pytest.raises(TypeError, match="operand types"):
        gemm(a, b.float().to(torch.float8_e4m3fn), sa, sb)
    with pytest.raises(ValueError, match="scale"):
        gemm(a, b, None, sb)
    with pytest.raises(ValueError, match="one per row"):
        gemm(a, b, sa[:4], sb)
