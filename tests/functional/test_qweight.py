"""``QuantizedWeight``: a weight handed to ``linear`` as its tensor-wise codes + scale (FSDP2's 8-bit all-gather)
gives the same forward output and the same input / weight gradients as the 16-bit weight, bit for bit, for
every recipe that can gather 8-bit; codes quantized piecewise with the whole tensor's absmax equal the whole
tensor's codes. CPU (PyTorch reference numerics); on a GPU also against the Triton quantizer and matmul that the
16-bit gather's path runs (the shard is quantized with the reference arithmetic, which must match them)."""

from __future__ import annotations

import pytest
import torch

from lowbit.functional import linear
from lowbit.functional.qweight import QuantizedWeight, quantize_with_amax
from lowbit.functional.recipe import RECIPES, Quant, get_recipe
from lowbit.kernels import ops
from lowbit.train.fsdp8 import allgather_8bit_format

EIGHT_BIT = ["switchback", "switchback-m", "int8-all", "fp8-switchback", "fp8-tensorwise", "switchback-sim",
             "fp8-switchback-sim"]
TENSORWISE_W = ("switchback", "switchback-m", "int8-all", "fp8-switchback", "fp8-tensorwise")


def test_eligible_recipes() -> None:
    got = {name: allgather_8bit_format(name) for name in RECIPES}
    assert {n for n, f in got.items() if f} == {n for n in RECIPES if n.removesuffix("-sim") in TENSORWISE_W}
    assert got["switchback"] == got["switchback-m"] == got["int8-all"] == "int8"
    assert got["fp8-switchback"] == got["fp8-tensorwise"] == "e4m3"
    for name in ("bf16", "switchback-q", "llm-int8", "fp8-rowwise"):  # W row-wise (or 16-bit): 16-bit gather
        assert got[name] is None, name


CUDA = [pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA"))]


@pytest.mark.parametrize("device", ["cpu", *CUDA])
@pytest.mark.parametrize("fmt", ["int8", "e4m3"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_pieces_with_global_absmax_equal_whole_tensor_codes(fmt: str, dtype: torch.dtype, device: str) -> None:
    g = torch.Generator().manual_seed(0)
    rows, cols = (37, 24) if device == "cpu" else (1030, 768)
    w = (torch.randn(rows, cols, generator=g) * torch.logspace(-3, 1, cols)).to(dtype).to(device)
    codes, scale = ops.quantize(w, fmt, "tensor", False)
    amax = torch.stack([p.float().abs().amax() for p in w.split(10)]).amax()
    pieces = [quantize_with_amax(p, amax, fmt) for p in w.split(10)]
    assert all(torch.equal(s, scale) for _, s in pieces)
    assert torch.equal(torch.cat([c for c, _ in pieces]).view(torch.uint8), codes.view(torch.uint8))


@pytest.mark.parametrize("device", ["cpu", *CUDA])
@pytest.mark.parametrize("name", EIGHT_BIT)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_linear_with_quantized_weight_is_exact(name: str, dtype: torch.dtype, device: str,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    def no_dequantize(*args, **kwargs):
        raise AssertionError("the linear fell back to the dequantized weight")

    monkeypatch.setattr(QuantizedWeight, "dequantize", no_dequantize)
    recipe = get_recipe(name)
    if device == "cuda" and recipe.uses_fp8 and not recipe.simulated and torch.cuda.get_device_capability() < (8, 9):
        pytest.skip("needs an fp8 GPU")
    fmt = allgather_8bit_format(recipe)
    g = torch.Generator().manual_seed(1)
    x = torch.randn(3, 5, 24, generator=g).to(dtype).to(device)
    w = (0.2 * torch.randn(16, 24, generator=g)).to(dtype).to(device)
    b = torch.randn(16, generator=g).to(dtype).to(device)
    dy = torch.randn(3, 5, 16, generator=g).to(dtype).to(device)

    def run(weight: torch.Tensor) -> tuple[torch.Tensor, ...]:
        xx, bb = x.clone().requires_grad_(), b.clone().requires_grad_()
        y = linear(xx, weight, bb, recipe)
        y.backward(dy)
        return y.detach(), xx.grad, weight.grad, bb.grad

    want = run(w.clone().requires_grad_())
    codes, scale = quantize_with_amax(w, w.float().abs().amax(), fmt)
    qw = QuantizedWeight(codes, scale, fmt, dtype, requires_grad=True)
    got = run(qw)
    assert type(got[2]) is torch.Tensor and got[2].dtype == dtype  # a plain 16-bit gradient for FSDP to reduce
    for a, c in zip(got, want):
        assert torch.equal(a, c)


@pytest.mark.parametrize("name", ["switchback", "fp8-switchback"])
def test_under_autocast_codes_of_the_cast_weight(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """fp32 parameters under bf16 autocast: ``linear`` casts W to bf16 and quantizes that; the gathered codes are
    made from the bf16 values (``source_dtype``), and the cast of the ``QuantizedWeight`` keeps them."""
    monkeypatch.setattr(QuantizedWeight, "dequantize", lambda *a, **k: (_ for _ in ()).throw(AssertionError))
    g = torch.Generator().manual_seed(2)
    x, w, dy = torch.randn(6, 24, generator=g), 0.2 * torch.randn(16, 24, generator=g), torch.randn(6, 16, generator=g)
    wb = w.to(torch.bfloat16)
    codes, scale = quantize_with_amax(wb, wb.float().abs().amax(), allgather_8bit_format(name))
    outs = []
    for weight in (w.clone().requires_grad_(), QuantizedWeight(codes, scale, allgather_8bit_format(name), torch.float32,
                                                               torch.bfloat16, requires_grad=True)):
        xx = x.clone().requires_grad_()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            y = linear(xx, weight, None, name)
        y.backward(dy.to(y.dtype))
        outs.append((y, xx.grad, weight.grad))
    for a, b in zip(*outs):
        assert torch.equal(a, b)


def test_quantized_weight_behaves_like_a_weight() -> None:
    w = torch.randn(8, 4)
    codes, scale = quantize_with_amax(w, w.abs().amax(), "int8")
    qw = QuantizedWeight(codes, scale, "int8", torch.float32)
    assert qw.shape == w.shape and qw.dtype == torch.float32 and qw.device == w.device
    v = torch.as_strided(qw, (6, 4), (4, 1), 0)  # FSDP crops the padded all-gather output this way
    assert isinstance(v, QuantizedWeight) and torch.equal(v.codes, codes[:6])
    p = torch.nn.Parameter(qw, requires_grad=True)
    assert isinstance(p, QuantizedWeight) and p.requires_grad
    deq = qw * 1  # any other op runs on the dequantized values
    assert type(deq) is torch.Tensor and torch.allclose(deq, w, atol=float(w.abs().max()) / 127)
    with pytest.raises(ValueError, match="int8 tensor-wise"):
        qw.codes_for(Quant("int8", "row"), False)
    with pytest.raises(TypeError, match="cannot stand for"):
        qw.to(torch.bfloat16)
    q16 = QuantizedWeight(codes, scale, "int8", torch.float32, source_dtype=torch.bfloat16)
    assert isinstance(q16.to(torch.bfloat16), QuantizedWeight)  # autocast's cast: the codes are of bf16 values
