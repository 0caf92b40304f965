"""Compiled quantization modes (lowbit.kernels.ops): ``kernel`` calls lowbit's quantizers as opaque ops,
``inductor`` traces the reference numerics so inductor can fuse them; both give the same codes as eager."""

from __future__ import annotations

import pytest
import torch
from functorch.compile import make_boxed_func
from torch._dynamo.backends.common import aot_autograd

from lowbit.kernels import ops

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


def _input(rows: int, cols: int) -> torch.Tensor:
    torch.manual_seed(3)
    x = torch.randn(rows, cols, device=DEVICE) * 3
    x[1] = 0.0  # an all-zero row: codes 0, int8 scale 0, fp8 scale at its floor
    x[2, :4] = torch.tensor([127.0, 63.5, -0.5, 1.5])  # exact halves: int8 codes round half to even
    return x


@pytest.mark.parametrize("fmt", ["int8", "e4m3", "e5m2"])
@pytest.mark.parametrize(("granularity", "transpose"), [("row", False), ("column", True), ("tensor", False),
                                                       ("tensor", True)])
def test_inductor_mode_gives_the_kernel_codes(fmt: str, granularity: str, transpose: bool) -> None:
    """The traced reference, compiled by inductor, writes bit-identical codes and scales to the eager quantizer
    (Triton on a GPU or under the interpreter)."""
    x = _input(24, 40)
    eager_q, eager_s = ops.quantize(x, fmt, granularity, transpose)
    torch._dynamo.reset()
    with ops.compiled_quantize_mode("inductor"):
        q, s = torch.compile(lambda t: ops.quantize(t, fmt, granularity, transpose), fullgraph=True)(x)
    assert q.dtype == eager_q.dtype and q.shape == eager_q.shape and s.shape == eager_s.shape
    assert torch.equal(q.view(torch.int8), eager_q.view(torch.int8))  # bitwise, fp8 codes included
    assert torch.equal(s, eager_s)


@pytest.mark.parametrize("fmt", ["int8", "e4m3"])
def test_inductor_mode_dual_matches(fmt: str) -> None:
    x = _input(24, 40)
    eager = ops.quantize_dual(x, fmt)
    torch._dynamo.reset()
    with ops.compiled_quantize_mode("inductor"):
        got = torch.compile(lambda t: ops.quantize_dual(t, fmt), fullgraph=True)(x)
    for a, b in zip(got, eager, strict=True):
        assert torch.equal(a.view(torch.int8) if a.dtype != torch.float32 else a,
                           b.view(torch.int8) if b.dtype != torch.float32 else b)


def _recorded_ops(recipe: str, mode: str) -> set[str]:
    """Names of the ops in the forward and backward graphs AOT autograd hands to the compiler."""
    from lowbit.nn import LowbitLinear

    seen: set[str] = set()

    def record(gm: torch.fx.GraphModule, _inputs):
        seen.update(str(n.target) for n in gm.graph.nodes if n.op == "call_function")
        return make_boxed_func(gm)

    torch._dynamo.reset()
    layer = LowbitLinear(32, 24, recipe=recipe).to(DEVICE)
    x = torch.randn(10, 32, device=DEVICE, requires_grad=True)
    with ops.compiled_quantize_mode(mode):
        out = torch.compile(layer, fullgraph=True, backend=aot_autograd(fw_compiler=record, bw_compiler=record))(x)
    out.sum().backward()
    return seen


@pytest.mark.parametrize("recipe", ["switchback", "fp8-tensorwise"])
def test_modes_decide_what_the_graph_holds(recipe: str) -> None:
    kernel, inductor = _recorded_ops(recipe, "kernel"), _recorded_ops(recipe, "inductor")
    quantize_ops = {"lowbit.quantize.default", "lowbit.quantize_dual.default"}
    assert kernel & quantize_ops, kernel
    assert not inductor & quantize_ops, inductor  # traced into aten ops inductor can fuse
    assert "lowbit.scaled_mm.default" in kernel and "lowbit.scaled_mm.default" in inductor  # matmuls stay ops
    assert "aten.amax.default" in inductor and "aten.amax.default" not in kernel  # the absmax, now visible


@pytest.mark.parametrize("recipe", ["switchback", "switchback-m", "fp8-tensorwise", "int8-all"])
def test_layer_compiled_with_inductor_quantization_matches_eager(recipe: str) -> None:
    """A LowbitLinear compiled by inductor in ``inductor`` mode: the same output and gradients as eager."""
    from lowbit.nn import LowbitLinear

    torch.manual_seed(0)
    layer = LowbitLinear(48, 40, recipe=recipe).to(DEVICE)
    x = torch.randn(3, 16, 48, device=DEVICE, requires_grad=True)
    eager = layer(x)
    eager.square().sum().backward()
    ref = (eager.detach(), x.grad.clone(), layer.weight.grad.clone(), layer.bias.grad.clone())
    x.grad = layer.weight.grad = layer.bias.grad = None
    torch._dynamo.reset()
    with ops.compiled_quantize_mode("inductor"):
        out = torch.compile(layer, fullgraph=True)(x)
        out.square().sum().backward()
    got = (out.detach(), x.grad, layer.weight.grad, layer.bias.grad)
    for name, a, b in zip(("out", "dx", "dw", "db"), got, ref, strict=True):
        # same codes, same matmul op: only the float32 order of inductor's fused bias/grad sums may differ
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5, msg=lambda m, n=name: f"{recipe} {n}: {m}")


def test_mode_validation_and_restore() -> None:
    assert ops.compiled_quantize() == "kernel"
    with pytest.raises(ValueError, match=r"compiled quantization must be one of \('kernel', 'inductor', 'mixed'\)"):
        ops.set_compiled_quantize("triton")
    with ops.compiled_quantize_mode("inductor"):
        assert ops.compiled_quantize() == "inductor"
    assert ops.compiled_quantize() == "kernel"


def test_float64_quotient_rounds_like_float32_division() -> None:
    """The compiled reference divides in float64 and rounds once (inductor's Triton float32 ``/`` is approximate);
    that must equal the correctly rounded float32 quotient, over a wide range of magnitudes."""
    g = torch.Generator().manual_seed(0)
    a = torch.randn(1 << 18, generator=g) * torch.exp2(torch.randint(-60, 60, (1 << 18,), generator=g).float())
    b = torch.randn(1 << 18, generator=g) * torch.exp2(torch.randint(-60, 60, (1 << 18,), generator=g).float())
    a = torch.cat([a, torch.tensor([448.0, 127.0, 1.0, 57344.0])])
    b = torch.cat([b, torch.tensor([3.0, 7.0, 3.0, 1e-30])])
    assert torch.equal((a.double() / b.double()).float(), a / b)
