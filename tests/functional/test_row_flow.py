"""SPEC §10's row-wise data flow (``lowbit.functional._fused.row_flow``): the producers write the row codes
(LayerNorm, GELU, GELU′), every GEMM is plain, and torch.compile captures the whole fused block.

Its numbers are the per-linear recipe path's: bit for bit in float32 on the CPU (test_mlp.py checks every recipe),
and in bfloat16 too, since the CPU twins run the same PyTorch ops as the per-linear layers and the codes are the
standalone quantizer's. On the GPU (``gpu`` tests) the Triton producers and plain GEMMs agree with the CPU within the
quantization's bound, eagerly, compiled and replayed as a CUDA graph.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from lowbit.functional import RECIPES
from lowbit.functional._fused import row_flow
from lowbit.kernels import ops
from lowbit.nn import LayerNormLinear, LayerNormMLP, LowbitMLP

ROW = [n for n, r in RECIPES.items() if row_flow(r)]


def test_which_recipes_take_the_row_flow() -> None:
    assert set(ROW) == {"switchback", "switchback-q", "switchback-m", "fp8-switchback"}


def _per_linear(m: LayerNormMLP) -> nn.Module:
    """The per-linear recipe path with the same parameters: LayerNorm → LowbitLinear → GELU → LowbitLinear."""
    return nn.Sequential(m.layer_norm, m.fc1, nn.GELU(), m.fc2)


def _run(module: nn.Module, x: torch.Tensor, g: torch.Tensor, params: list | None = None) -> list[torch.Tensor]:
    """Output, input gradient and the gradients of ``params`` (default: the module's parameters, in their order)."""
    params = list(module.parameters()) if params is None else params
    xi = x.clone().requires_grad_()
    y = module(xi)
    y.backward(g)
    out = [y.detach(), xi.grad] + [p.grad.clone() for p in params]
    for p in params:
        p.grad = None
    return out


@pytest.mark.parametrize("name", ROW)
def test_bf16_row_flow_is_the_per_linear_path(name: str, monkeypatch) -> None:
    """bfloat16 end to end on the CPU: the fused block equals LayerNorm → LowbitLinear → GELU → LowbitLinear bit for
    bit (the producers' twins run the per-linear layers' ops), and the producers did the quantizing."""
    torch.manual_seed(1)
    m = LayerNormMLP(48, 136, recipe=name, dtype=torch.bfloat16)
    with torch.no_grad():
        m.norm.weight.normal_()
        m.norm.bias.normal_()
    calls = []
    for fn in ("act_quantize", "act_backward_quantize", "layernorm_quantize", "quantize_rows_colsum"):
        real = getattr(ops, fn)
        monkeypatch.setattr(ops, fn, lambda *a, _r=real, _n=fn, **k: calls.append(_n) or _r(*a, **k))
    x = torch.randn(3, 11, 48, dtype=torch.bfloat16)
    g = torch.randn(3, 11, 48, dtype=torch.bfloat16)
    params = list(m.parameters())
    got = _run(m, x, g, params)
    assert calls == ["layernorm_quantize", "act_quantize", "quantize_rows_colsum", "act_backward_quantize"]
    want = _run(_per_linear(m), x, g, params)
    for i, (a, b) in enumerate(zip(got, want)):
        assert a.dtype == b.dtype and torch.equal(a, b), (name, i, float((a.float() - b.float()).abs().max()))


@pytest.mark.parametrize("mode", ["kernel", "inductor"])
@pytest.mark.parametrize("name", ["fp8-switchback", "switchback", "switchback-m"])
def test_compile_captures_the_fused_block_whole(name: str, mode: str, monkeypatch) -> None:
    """fullgraph=True: dynamo traces the fused function (custom ops only, no graph break; in ``inductor``
    compiled-quantize mode the producers' PyTorch twins) and it computes the eager numbers bit for bit; the per-linear
    composition does not run."""
    from lowbit.functional.linear import _LowbitLinearFunction

    def refuse(ctx, *args):
        raise RuntimeError("the per-linear path ran")

    monkeypatch.setattr(_LowbitLinearFunction, "forward", staticmethod(refuse))
    torch.manual_seed(2)
    for m in (LowbitMLP(32, 72, recipe=name), LayerNormMLP(32, 72, recipe=name), LayerNormLinear(32, 40, recipe=name)):
        x = torch.randn(2, 5, 32)
        g = torch.randn(2, 5, m(x).shape[-1])
        eager = _run(m, x, g)
        torch._dynamo.reset()
        with ops.compiled_quantize_mode(mode):
            compiled = _run(torch.compile(m, fullgraph=True, backend="aot_eager"), x, g)
        for i, (a, b) in enumerate(zip(compiled, eager)):
            assert torch.equal(a, b), (name, type(m).__name__, i)


def test_compiled_fused_clip_blocks_have_no_graph_break() -> None:
    """convert_clip(fuse=True) as the trainer uses it: each block compiled with fullgraph=True (a graph break would
    raise); the compiled blocks give the eager step's loss and gradients bit for bit (float32: bf16 attention on a CPU
    without AVX-512 is not implemented by PyTorch)."""
    from lowbit.models import CLIP, clip_loss, convert_clip, get_config

    torch.manual_seed(5)
    model = convert_clip(CLIP(get_config("tiny")), "fp8-switchback", fuse=True)
    cfg = get_config("tiny")
    images = torch.randn(3, 3, cfg.vision.image_size, cfg.vision.image_size)
    texts = torch.randint(0, cfg.text.vocab_size, (3, cfg.text.context_length))

    def step() -> list[torch.Tensor]:
        img, txt, scale = model(images, texts)
        clip_loss(img, txt, scale).backward()
        out = [p.grad.clone() for p in model.parameters() if p.grad is not None]
        model.zero_grad()
        return out

    eager = step()
    torch._dynamo.reset()
    for block in [*model.visual.blocks, *model.text.blocks]:
        block.compile(fullgraph=True, backend="aot_eager")
    for a, b in zip(step(), eager):
        assert torch.equal(a, b)


@pytest.mark.parametrize("module", ["LayerNormMLP", "LayerNormLinear"])
def test_compiled_under_bf16_autocast_equals_eager(module: str) -> None:
    """The trainer's setting: bf16 autocast, the LayerNorm in float32 and the linears in bf16, fullgraph."""
    torch.manual_seed(6)
    m = LayerNormMLP(32, 72, recipe="fp8-switchback") if module == "LayerNormMLP" else \
        LayerNormLinear(32, 48, recipe="switchback")
    x = torch.randn(4, 7, 32)

    def run(fn) -> list[torch.Tensor]:
        xi = x.clone().requires_grad_()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            y = fn(xi)
        y.float().square().sum().backward()
        out = [y.detach(), xi.grad] + [p.grad.clone() for p in m.parameters()]
        m.zero_grad()
        return out

    eager = run(m)
    assert eager[0].dtype == torch.bfloat16
    torch._dynamo.reset()
    for a, b in zip(run(torch.compile(m, fullgraph=True, backend="aot_eager")), eager):
        assert torch.equal(a, b)


def test_recompute_activation_in_the_row_flow() -> None:
    torch.manual_seed(3)
    m = LowbitMLP(24, 64, recipe="fp8-switchback")
    r = LowbitMLP(24, 64, recipe="fp8-switchback", recompute_activation=True)
    r.load_state_dict(m.state_dict())
    x, g = torch.randn(9, 24), torch.randn(9, 24)
    for a, b in zip(_run(m, x, g), _run(r, x, g)):
        assert torch.equal(a, b)


# --- GPU -----------------------------------------------------------------------------------------------------------

CUDA = torch.cuda.is_available()
FP8 = CUDA and torch.cuda.get_device_capability() >= (8, 9)


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.double() - b.double()).norm() / b.double().norm())


@pytest.mark.gpu
@pytest.mark.skipif(not CUDA, reason="needs CUDA (run on the GPU host)")
@pytest.mark.parametrize("name", ["fp8-switchback", "switchback", "switchback-m"])
def test_cuda_row_flow_eager_compiled_and_graphed(name: str) -> None:
    """A bf16 LayerNorm → MLP block (512 tokens, 256 → 1024 → 256) on the GPU: eager against the CPU run of the same
    block, and torch.compile (inductor) and a CUDA graph of it against eager. Bounds: the GPU's 16-bit LayerNorm and
    GELU outputs differ from the CPU's by bf16 roundings, so codes at a rounding boundary flip between devices, each
    by one step; an int8 step is absmax/127, about 0.028 sigma of these Gaussian rows, so even every code moved by
    one step stays under 3e-2 normwise (measured on an H100: 0.008 for switchback-m's weight gradient); fp8 2e-2
    (its flips are rarer: a step is relative to the value), plus fp8's reduced-precision accumulation. Compiled and
    graphed runs call the same kernels (inductor may fuse the surrounding bf16 ops differently: bf16 rounding, 1e-2)."""
    if RECIPES[name].uses_fp8 and not FP8:
        pytest.skip("fp8 needs compute capability 8.9")
    torch.manual_seed(4)
    m = LayerNormMLP(256, 1024, recipe=name, dtype=torch.bfloat16)
    x = torch.randn(4, 128, 256, dtype=torch.bfloat16)
    g = torch.randn(4, 128, 256, dtype=torch.bfloat16)
    cpu = _run(m, x, g)
    m = m.cuda()
    xc, gc = x.cuda(), g.cuda()
    eager = _run(m, xc, gc)
    tol = 2e-2 if RECIPES[name].uses_fp8 else 3e-2
    for i, (a, b) in enumerate(zip(eager, cpu)):
        assert _rel(a.cpu(), b) < tol, (name, "cuda vs cpu", i, _rel(a.cpu(), b))
    torch._dynamo.reset()
    compiled = torch.compile(m)
    _run(compiled, xc, gc)  # compile (and autotune) before timing nothing: a first call
    for i, (a, b) in enumerate(zip(_run(compiled, xc, gc), eager)):
        assert _rel(a, b) < 1e-2, (name, "compiled vs eager", i, _rel(a, b))
    xg = xc.clone().requires_grad_()
    graphed = torch.cuda.make_graphed_callables(m, (xg,))
    y = graphed(xg)
    y.backward(gc)
    assert _rel(y.detach(), eager[0]) < 1e-2 and _rel(xg.grad, eager[1]) < 1e-2, name
