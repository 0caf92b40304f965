"""Block-scaled quantizers and matmul: float64 checks, Triton (interpreter on CPU) == reference, edge cases."""

from __future__ import annotations

import math

import pytest
import torch

from lowbit.kernels import quantize
from lowbit.kernels.blockwise import blockwise_mm, dequantize_blockwise, quantize_blockwise

FMTS = ["int8", "e4m3", "e5m2"]
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


def _blocks64(x: torch.Tensor, block: tuple[int, int]) -> torch.Tensor:
    """float64 absmax of each block, shaped like the returned scales."""
    M, K = x.shape
    bm = block[0]
    mb, kb = (M if bm == 1 else math.ceil(M / bm)), math.ceil(K / 128)
    out = torch.zeros(mb, kb, dtype=torch.float64)
    for i in range(mb):
        for j in range(kb):
            out[i, j] = x[i * bm:(i + 1) * bm, j * 128:(j + 1) * 128].double().abs().max()
    return out


@pytest.mark.parametrize("fmt", FMTS)
@pytest.mark.parametrize("block", [(1, 128), (128, 128)])
@pytest.mark.parametrize("shape", [(3, 300), (130, 129), (5, 128), (2, 7)])
def test_block_scales_and_codes_match_float64(fmt: str, block, shape) -> None:
    torch.manual_seed(0)
    x = torch.randn(shape) * torch.exp(torch.randn(shape))
    codes, scales = quantize_blockwise(x, fmt, block, backend="torch")
    M, K = shape
    mb = M if block[0] == 1 else math.ceil(M / 128)
    assert scales.shape == (mb, math.ceil(K / 128)) and scales.dtype == torch.float32
    amax = _blocks64(x, block)
    if fmt == "int8":
        assert torch.equal(scales.double(), amax)
    else:
        want = (torch.full_like(amax, {"e4m3": 448.0, "e5m2": 57344.0}[fmt]) / amax).float()
        assert torch.equal(scales, want)
    # The codes are those of the tensor-wise quantizer applied to each block on its own.
    for i in range(0, M, block[0]):
        for j in range(0, K, 128):
            blk = x[i:i + block[0], j:j + 128]
            want_codes, _ = quantize(blk.contiguous(), fmt, "tensor", backend="torch")
            got = codes[i:i + block[0], j:j + 128]
            assert torch.equal(got.view(torch.uint8) if fmt != "int8" else got,
                               want_codes.view(torch.uint8) if fmt != "int8" else want_codes)
    # Round trip within half a step per block.
    back = dequantize_blockwise(codes, scales, fmt, torch.float64)
    assert back.shape == x.shape
    tol = {"int8": 0.5 / 127, "e4m3": 2.0**-4, "e5m2": 2.0**-3}[fmt]
    step = amax.repeat_interleave(128, 1)[:, :K]
    if block[0] == 128:
        step = step.repeat_interleave(128, 0)[:M]
    assert bool(((back - x.double()).abs() <= step * tol * 1.0001 + 1e-30).all())


@pytest.mark.parametrize("fmt", FMTS)
def test_zero_blocks_give_zeros_and_nan_stays_in_its_block(fmt: str) -> None:
    x = torch.randn(4, 260)
    x[1, :128] = 0
    x[2, 130] = float("nan")
    codes, scales = quantize_blockwise(x, fmt, (1, 128), backend="torch")
    assert torch.isfinite(scales[1, 0]) and bool((codes[1, :128].float() == 0).all())
    assert torch.isnan(scales[2, 1]) and torch.isfinite(scales[2, 0]) and torch.isfinite(scales[[0, 1, 3]]).all()
    w = torch.zeros(200, 130)
    cw, sw = quantize_blockwise(w, fmt, (128, 128), backend="torch")
    assert bool(torch.isfinite(sw).all()) and bool((cw.float() == 0).all())


@pytest.mark.parametrize("fmt", FMTS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("shape", [(5, 300), (9, 128), (3, 17), (0, 40)])
def test_triton_act_quantizer_is_bit_identical_to_the_reference(fmt: str, dtype, shape) -> None:
    torch.manual_seed(1)
    x = (torch.randn(shape) * torch.exp(2 * torch.randn(shape))).to(dtype).to(DEVICE)
    if x.numel():
        x[0, :3] = 0
        if shape[1] > 128:
            x[-1, 128:] = 0  # an all-zero (partial) block
    ref_c, ref_s = quantize_blockwise(x.cpu(), fmt, (1, 128), backend="torch")
    got_c, got_s = quantize_blockwise(x, fmt, (1, 128), backend="triton")
    assert got_c.dtype == ref_c.dtype and got_c.shape == ref_c.shape
    assert torch.equal(got_s.cpu(), ref_s)
    view = (lambda t: t.view(torch.uint8)) if fmt != "int8" else (lambda t: t)
    assert torch.equal(view(got_c.cpu()), view(ref_c))


def test_triton_act_quantizer_strided_and_leading_dims() -> None:
    x = torch.randn(2, 3, 140, device=DEVICE)
    ref_c, ref_s = quantize_blockwise(x.cpu(), "int8", backend="torch")
    got_c, got_s = quantize_blockwise(x, "int8", backend="triton")
    assert got_s.shape == (2, 3, 2) and torch.equal(got_c.cpu(), ref_c) and torch.equal(got_s.cpu(), ref_s)
    xt = torch.randn(140, 6, device=DEVICE).t()  # non-contiguous rows
    c1, s1 = quantize_blockwise(xt, "e4m3", backend="triton")
    c2, s2 = quantize_blockwise(xt.contiguous().cpu(), "e4m3", backend="torch")
    assert torch.equal(s1.cpu(), s2) and torch.equal(c1.cpu().view(torch.uint8), c2.view(torch.uint8))


@pytest.mark.parametrize(("fa", "fb"), [("int8", "int8"), ("e4m3", "e4m3"), ("e5m2", "e4m3")])
@pytest.mark.parametrize("b_block", [(128, 128), (1, 128)])
def test_blockwise_mm_matches_float64(fa: str, fb: str, b_block) -> None:
    torch.manual_seed(2)
    M, K, N = 7, 300, 130
    a = torch.randn(M, K) * torch.exp(torch.randn(M, K))
    b = torch.randn(N, K)
    bias = torch.randn(N)
    qa, sa = quantize_blockwise(a, fa, (1, 128), backend="torch")
    qb, sb = quantize_blockwise(b, fb, b_block, backend="torch")
    out = blockwise_mm(qa, sa, qb, sb, bias, torch.float32)
    want = dequantize_blockwise(qa, sa, fa, torch.float64) @ dequantize_blockwise(qb, sb, fb, torch.float64).t()
    want = want + bias.double()
    assert float((out.double() - want).norm() / want.norm()) < 2e-6
    # close to the exact product
    exact = a.double() @ b.double().t() + bias.double()
    assert float((out.double() - exact).norm() / exact.norm()) < (0.02 if fa == "int8" else 0.15)
    assert blockwise_mm(qa, sa, qb, sb, None, torch.bfloat16).dtype == torch.bfloat16


def test_bad_input() -> None:
    with pytest.raises(ValueError, match="block must be"):
        quantize_blockwise(torch.randn(4, 8), "int8", (1, 64))
    with pytest.raises(TypeError, match="float32, float16 or bfloat16"):
        quantize_blockwise(torch.ones(4, 8, dtype=torch.int32), "int8")
    with pytest.raises(ValueError, match="2-D"):
        quantize_blockwise(torch.randn(2, 4, 8), "int8", (128, 128))
    qa, sa = quantize_blockwise(torch.randn(4, 8), "int8")
    with pytest.raises(ValueError, match="sb must have shape"):
        blockwise_mm(qa, sa, qa, torch.ones(4, 3), None, torch.float32)
    qf, sf = quantize_blockwise(torch.randn(4, 8), "e4m3")
    with pytest.raises(TypeError, match="cannot multiply"):
        blockwise_mm(qa, sa, qf, sf, None, torch.float32)
    with pytest.raises(ValueError, match="non-finite"):
        quantize_blockwise(torch.tensor([[float("nan"), 1.0]]), "int8", check=True)


@pytest.mark.parametrize("fmt", ["int8", "e4m3"])
@pytest.mark.parametrize("block", [(1, 128), (128, 128)])
def test_compiled_block_quantizer_gives_the_eager_codes(fmt: str, block) -> None:
    """Under torch.compile the block quantizer traces its PyTorch reference (inductor fuses it); the codes and
    scales equal the eager ones (Triton for 1×128 on a GPU, the reference on the CPU)."""
    torch.manual_seed(4)
    x = torch.randn(20, 200, device=DEVICE) * 3
    x[1] = 0.0
    eager = quantize_blockwise(x, fmt, block)
    torch._dynamo.reset()
    got = torch.compile(lambda t: quantize_blockwise(t, fmt, block), fullgraph=True)(x)
    assert torch.equal(got[0].view(torch.int8), eager[0].view(torch.int8)) and torch.equal(got[1], eager[1])
