"""The weight's dgrad codes: made in the forward's pass and saved when W is autocast's per-step copy.

Under bf16 autocast with fp32 parameters, ``linear`` (and the fused functions) receive a fresh bf16 copy of W each
step. For recipes whose forward and dgrad take W tensor-wise in one format, the forward quantizes W and Wᵀ in one
``quantize_dual`` pass and saves Wᵀ's codes (1 byte per element) instead of the 16-bit copy (2 bytes); the backward
then skips W's absmax and transposed cast. The numbers are the same, bit for bit, as quantizing W again in the
backward, which is what still happens for a weight that is a parameter itself (a bf16 model, FSDP's gathered W).
"""

from __future__ import annotations

import pytest
import torch

from lowbit.functional import RECIPES, layernorm_linear, layernorm_mlp, linear, mlp
from lowbit.kernels import ops

SHARING = ["switchback", "fp8-switchback", "fp8-tensorwise", "int8-all"]
NOT_SHARING = ["switchback-q", "fp8-rowwise", "switchback-block"]
EIGHT_BIT = (torch.int8, torch.float8_e4m3fn, torch.float8_e5m2)


def _params(gen: torch.Generator, dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """bf16-representable values, so that fp32 parameters and their bf16 twins feed the linears the same numbers;
    the LayerNorm's parameters stay float32 (autocast runs it in float32)."""
    shapes = {"ln_w": (32,), "ln_b": (32,), "w1": (64, 32), "b1": (64,), "w2": (16, 64), "b2": (16,)}
    values = {k: (0.2 * torch.randn(s, generator=gen)).bfloat16() for k, s in shapes.items()}
    return {k: v.to(torch.float32 if k.startswith("ln") else dtype).requires_grad_() for k, v in values.items()}


def _run(kind: str, x: torch.Tensor, p: dict[str, torch.Tensor], name: str):
    if kind == "linear":
        return linear(x, p["w1"], p["b1"], name)
    if kind == "mlp":
        return mlp(x, p["w1"], p["b1"], p["w2"], p["b2"], "gelu", name)
    if kind == "layernorm_linear":
        return layernorm_linear(x, p["ln_w"], p["ln_b"], p["w1"], p["b1"], name)
    return layernorm_mlp(x, p["ln_w"], p["ln_b"], p["w1"], p["b1"], p["w2"], p["b2"], "gelu", name)


def _forward_backward(kind: str, name: str, param_dtype: torch.dtype, monkeypatch: pytest.MonkeyPatch,
                      device: str = "cpu"):
    """Forward under bf16 autocast, recording what autograd saves; then the backward, counting W's transposed
    quantizations. Returns (output, grads, saved [(dtype, shape, tensor)], transposed weight quantizations)."""
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(2, 9, 32, generator=gen).to(device).requires_grad_()
    p = {k: v.detach().to(device).requires_grad_() for k, v in _params(gen, param_dtype).items()}
    dy = torch.randn(2, 9, 16 if "mlp" in kind else 64, generator=gen).to(device)
    saved: list[tuple[torch.dtype, tuple[int, ...], torch.Tensor]] = []
    hooks = torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append((t.dtype, tuple(t.shape), t)) or t,
                                                     lambda t: t)
    with hooks, torch.autocast(device, dtype=torch.bfloat16):
        y = _run(kind, x, p, name)
    weight_shapes = {tuple(p["w1"].shape), tuple(p["w2"].shape)}
    transposed = []
    real = ops.quantize

    def counting(t, fmt, granularity, transpose=False):
        if transpose and tuple(t.shape) in weight_shapes:
            transposed.append(tuple(t.shape))
        return real(t, fmt, granularity, transpose)

    monkeypatch.setattr(ops, "quantize", counting)
    y.backward(dy.to(y.dtype))
    monkeypatch.undo()
    grads = [x.grad] + [p[k].grad for k in ("ln_w", "ln_b", "w1", "b1", "w2", "b2")]
    return y, grads, saved, transposed, p


KINDS = ["linear", "mlp", "layernorm_linear", "layernorm_mlp"]
FP8_GPU = torch.cuda.is_available() and torch.cuda.get_device_capability() >= (8, 9)
DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(not FP8_GPU, reason="needs an fp8 GPU"))]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("name", SHARING)
def test_fp32_params_save_the_dgrad_codes_not_the_bf16_copy(kind: str, name: str, device: str,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    y, grads, saved, transposed, p = _forward_backward(kind, name, torch.float32, monkeypatch, device)
    fc = ["w1", "w2"] if "mlp" in kind else ["w1"]
    for k in fc:
        n, m = p[k].shape
        assert (torch.bfloat16, (n, m)) not in [(d, s) for d, s, _ in saved], (k, "16-bit copy saved")
        assert any(d in EIGHT_BIT and s == (m, n) for d, s, _ in saved), (k, "no Wᵀ codes saved")
    assert transposed == [], "the backward quantized W again"
    # The same numbers as quantizing W again in the backward (the weights handed over as bf16 tensors).
    y16, grads16, _, transposed16, _ = _forward_backward(kind, name, torch.bfloat16, monkeypatch, device)
    assert len(transposed16) == len(fc)
    assert torch.equal(y, y16)
    for a, b in zip(grads, grads16):
        assert (a is None) == (b is None)
        if a is not None:
            assert torch.equal(a.to(b.dtype), b)


@pytest.mark.parametrize("kind", ["linear", "layernorm_mlp"])
@pytest.mark.parametrize("name", SHARING[:2])
def test_a_parameter_weight_is_saved_as_itself(kind: str, name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """A bf16 parameter (a bf16 model; FSDP's gathered W, which FSDP frees after the forward) is saved as the
    parameter itself, not as codes that would outlive it."""
    _, _, saved, transposed, p = _forward_backward(kind, name, torch.bfloat16, monkeypatch)
    assert any(t is p["w1"] for _, _, t in saved)
    assert not any(d in EIGHT_BIT and s == tuple(p["w1"].shape[::-1]) for d, s, _ in saved)
    assert transposed


@pytest.mark.parametrize("name", NOT_SHARING)
def test_recipes_with_vector_or_block_weight_scales_keep_the_copy(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    assert RECIPES[name].forward.right.scaling != "tensor"
    _, _, saved, _, p = _forward_backward("linear", name, torch.float32, monkeypatch)
    assert (torch.bfloat16, tuple(p["w1"].shape)) in [(d, s) for d, s, _ in saved]


def test_no_input_grad_no_dgrad_codes(monkeypatch: pytest.MonkeyPatch) -> None:
    """A first layer (input without grad) runs no dgrad: nothing for it is made or saved."""
    calls = []
    real = ops.quantize_dual
    monkeypatch.setattr(ops, "quantize_dual", lambda t, fmt: calls.append(tuple(t.shape)) or real(t, fmt))
    w = torch.randn(64, 32, requires_grad=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = linear(torch.randn(5, 32), w, None, "fp8-switchback")
    y.float().sum().backward()
    assert calls == [] and w.grad is not None


@pytest.mark.parametrize("name", ["fp8-switchback", "fp8-tensorwise"])
def test_compiled_the_weight_is_quantized_once_per_step(name: str) -> None:
    """Under torch.compile AOTAutograd's partitioner already moved Wᵀ's quantization into the forward; with W's
    two layouts from one ``quantize_dual``, the forward and backward graphs quantize W once (one absmax pass)."""
    from functorch.compile import make_boxed_func
    from torch._dynamo.backends.common import aot_autograd

    calls: list[tuple[str, tuple[int, ...]]] = []

    def record(gm: torch.fx.GraphModule, _inputs):
        for n in gm.graph.nodes:
            if n.op == "call_function" and str(n.target).startswith(("lowbit.quantize", "lowbit.quantize_dual")):
                calls.append((str(n.target), tuple(n.args[0].meta["val"].shape)))
        return make_boxed_func(gm)

    torch._dynamo.reset()
    w = torch.nn.Parameter(0.1 * torch.randn(64, 32))
    x = torch.randn(16, 32, requires_grad=True)

    def f(x):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            return linear(x, w, None, name)

    y = torch.compile(f, fullgraph=True, backend=aot_autograd(fw_compiler=record, bw_compiler=record))(x)
    y.float().sum().backward()
    assert [c for c in calls if c[1] == (64, 32)] == [("lowbit.quantize_dual.default", (64, 32))], calls
