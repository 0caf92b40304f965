"""``gemm``: the matmul every lowbit layer runs, with the elementwise work of its neighbours fused in.

``out = epilogue(dequant(A) @ dequant(B)ᵀ)`` for ``A [M, K]`` and ``B [N, K]`` (both inner-dimension-last,
like ``x`` and an ``nn.Linear`` weight), where the operands are int8 / fp8 codes with their scales, or 16-bit
tensors (no scales). The epilogue hooks, each optional:

* ``bias`` (``[N]``) is added; ``activation`` (``"gelu"``, ``"gelu_tanh"``, ``"quick_gelu"``) is applied;
  ``preact`` receives the pre-activation (``store_preact=True``: what the backward needs);
* ``act_grad_at``: backward of the activation: ``out = round(A @ Bᵀ) · act'(act_grad_at)`` (fc2's dgrad);
* ``amax="row" | "tensor"``: absmax of the stored output (what the next quantizer needs);
* ``colsum=True``: column sums of the stored output in float32 (a bias gradient).

Scales: ``[]`` (per tensor), ``[M, 1]`` / ``[N, 1]`` (one per row of the operand), or with ``blockwise=True``
``[M, ⌈K/128⌉]`` for A (1×128 blocks along K) and ``[⌈N/128⌉, ⌈K/128⌉]`` for B (128×128 blocks). Scales are
what the quantizers return: ``absmax`` for int8, ``fmax / absmax`` for fp8.

``quantize_a="int8" | "e4m3" | "e5m2"``: A is 16-bit and ``scale_a`` its finished quantizer scale; the codes
are formed while loading (bit-identical to quantizing first).

Every value is computed in float32 from the float32 (or exact int32) accumulator and rounded once to the
output dtype; the activation sees the pre-activation rounded to the output dtype, as the unfused layers do.
On CUDA (and CPU tensors under ``TRITON_INTERPRET=1``) the Triton kernel runs; elsewhere the PyTorch
reference below computes the same.
"""

from __future__ import annotations

import math
from typing import Literal, NamedTuple

import torch

from lowbit.kernels import _reference as reference
from lowbit.kernels._common import (  # SCALE_*: how an operand is scaled (the kernel's A_SCALE / B_SCALE)
    ACTIVATIONS,
    FLOAT_DTYPES,
    FP8_FORMATS,
    SCALE_BLOCK,
    SCALE_NONE,
    SCALE_TENSOR,
    SCALE_VECTOR,
    Activation,
    Format,
    use_triton,
)
from lowbit.kernels.blockwise import BLOCK


class GemmOutput(NamedTuple):
    out: torch.Tensor
    preact: torch.Tensor | None
    amax: torch.Tensor | None
    colsum: torch.Tensor | None


def _fmt_of(t: torch.Tensor) -> Format | None:
    if t.dtype == torch.int8:
        return "int8"
    return FP8_FORMATS.get(t.dtype)


def _scale_mode(s: torch.Tensor | None, rows: int, K: int, blockwise: bool, block_rows: bool, name: str) -> int:
    """0 none, 1 tensor, 2 one per row, 3 block; raises on a shape that fits none."""
    if s is None:
        return SCALE_NONE
    if not isinstance(s, torch.Tensor) or s.dtype != torch.float32:
        raise TypeError(f"gemm: {name} must be a float32 tensor, got {getattr(s, 'dtype', type(s).__name__)}")
    if blockwise:
        nk = math.ceil(K / BLOCK)
        # A: 1×128 blocks [M, ⌈K/128⌉]. B: 128×128 blocks [⌈N/128⌉, ⌈K/128⌉] (a weight), or 1×128 blocks
        # [N, ⌈K/128⌉] (an activation: the wgrad of a block-scaled recipe multiplies two of them).
        allowed = [(rows, nk)] + ([(math.ceil(rows / BLOCK), nk)] if block_rows else [])
        if tuple(s.shape) not in allowed:
            raise ValueError(f"gemm: block-wise {name} must have shape {' or '.join(map(str, map(list, allowed)))}, "
                             f"got {list(s.shape)}")
        return SCALE_BLOCK
    if s.numel() == 1 and s.ndim <= 2:
        return SCALE_TENSOR
    if tuple(s.shape) == (rows, 1):
        return SCALE_VECTOR
    raise ValueError(f"gemm: {name} must have shape [{rows}, 1] (one per row) or [] (per tensor), "
                     f"got {list(s.shape)}")


def gemm(
    a: torch.Tensor,
    b: torch.Tensor,
    scale_a: torch.Tensor | None = None,
    scale_b: torch.Tensor | None = None,
    *,
    bias: torch.Tensor | None = None,
    activation: Activation | None = None,
    store_preact: bool = False,
    act_grad_at: torch.Tensor | None = None,
    amax: Literal["row", "tensor"] | None = None,
    colsum: bool = False,
    blockwise: bool = False,
    quantize_a: Format | None = None,
    out_dtype: torch.dtype = torch.bfloat16,
    backend: Literal["auto", "torch", "triton"] = "auto",
) -> GemmOutput:
    """See the module docstring. Returns ``GemmOutput(out, preact, amax, colsum)`` (``None`` where not asked)."""
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1]:
        raise ValueError(f"gemm: expected a [M, K] and b [N, K] with the same K, got {list(a.shape)} and "
                         f"{list(b.shape)}")
    if a.device != b.device:
        raise ValueError(f"gemm: operands on different devices ({a.device}, {b.device})")
    if out_dtype not in FLOAT_DTYPES:
        raise TypeError(f"gemm: out_dtype must be float32, float16 or bfloat16, got {out_dtype}")
    M, K = a.shape
    N = b.shape[0]
    fb = _fmt_of(b)
    if quantize_a is not None:
        if a.dtype not in FLOAT_DTYPES:
            raise TypeError(f"gemm: quantize_a needs a 16/32-bit A, got {a.dtype}")
        if (quantize_a == "int8") != (fb == "int8") or fb is None:
            raise TypeError(f"gemm: quantize_a={quantize_a!r} cannot multiply B's codes ({b.dtype})")
        if blockwise or scale_a is None:
            raise ValueError("gemm: quantize_a needs a per-row or per-tensor scale_a (not block-wise)")
        fa: Format | None = quantize_a
    else:
        fa = _fmt_of(a)
        if (fa is None) != (fb is None) or (fa == "int8") != (fb == "int8"):
            raise TypeError(f"gemm: operand types do not match ({a.dtype} @ {b.dtype})")
        if fa is None and a.dtype != b.dtype:
            raise TypeError(f"gemm: 16-bit operands must share a dtype ({a.dtype} @ {b.dtype})")
    if (fb is None) != (scale_b is None) or (fa is None) != (scale_a is None):
        raise ValueError("gemm: codes need scales and 16-bit operands take none")
    a_mode = _scale_mode(scale_a, M, K, blockwise, False, "scale_a")
    b_mode = _scale_mode(scale_b, N, K, blockwise, True, "scale_b")
    if blockwise and (a_mode != 3 or b_mode != 3):
        raise ValueError("gemm: blockwise=True needs block scales for both operands")
    if activation is not None and activation not in ACTIVATIONS:
        raise ValueError(f"gemm: activation must be one of {ACTIVATIONS} or None, got {activation!r}")
    if act_grad_at is not None:
        if activation is None:
            raise ValueError("gemm: act_grad_at needs the activation whose derivative to apply")
        if act_grad_at.shape != (M, N):
            raise ValueError(f"gemm: act_grad_at must have shape [{M}, {N}], got {list(act_grad_at.shape)}")
        if store_preact:
            raise ValueError("gemm: store_preact and act_grad_at cannot be combined")
    if bias is not None and (bias.shape != (N,) or bias.device != a.device):
        raise ValueError(f"gemm: bias must have shape [{N}] on {a.device}, got {list(bias.shape)} on {bias.device}")
    if amax not in (None, "row", "tensor"):
        raise ValueError(f"gemm: amax must be 'row', 'tensor' or None, got {amax!r}")

    if M and N and K and use_triton(a, backend, "gemm"):
        from lowbit.kernels import _triton_gemm as triton_gemm

        preact = torch.empty((M, N), dtype=out_dtype, device=a.device) if store_preact else None
        aux = act_grad_at if act_grad_at is not None else preact
        out, am, cs = triton_gemm.launch(
            a, b, scale_a, scale_b, a_mode, b_mode, bias=bias, activation=activation,
            act_grad=act_grad_at is not None, aux=aux, store_preact=store_preact, amax=amax, colsum=colsum,
            qload_fmt=quantize_a, out_dtype=out_dtype,
        )
        return GemmOutput(out, preact, am, cs)
    return gemm_reference(a, b, scale_a, scale_b, fa, fb, bias=bias, activation=activation,
                          store_preact=store_preact, act_grad_at=act_grad_at, amax=amax, colsum=colsum,
                          blockwise=blockwise, quantize_a=quantize_a, out_dtype=out_dtype)


def activation_forward(x: torch.Tensor, activation: Activation) -> torch.Tensor:
    """The activation in float32, in the kernel's formulas (erf GELU, tanh GELU, QuickGELU)."""
    if activation == "gelu":
        return 0.5 * x * (1.0 + torch.erf(x * 0.7071067811865476))
    if activation == "gelu_tanh":
        return 0.5 * x * (1.0 + torch.tanh(0.7978845608028654 * (x + 0.044715 * x * x * x)))
    return x * torch.sigmoid(1.702 * x)


def activation_grad(x: torch.Tensor, activation: Activation) -> torch.Tensor:
    """d activation / dx in float32 (the forms of PyTorch's ``gelu_backward`` and QuickGELU's autograd)."""
    if activation == "gelu":
        cdf = 0.5 * (1.0 + torch.erf(x * 0.7071067811865476))
        return cdf + x * torch.exp(-0.5 * x * x) * 0.3989422804014327
    if activation == "gelu_tanh":
        x_sq = x * x
        t = torch.tanh(0.7978845608028654 * (x + 0.044715 * x_sq * x))
        return 0.5 * (1.0 + t) + 0.5 * x * (1.0 - t * t) * 0.7978845608028654 * (1.0 + 3.0 * 0.044715 * x_sq)
    s = torch.sigmoid(1.702 * x)
    return s + 1.702 * x * s * (1.0 - s)


def gemm_reference(
    a, b, scale_a, scale_b, fa: Format | None, fb: Format | None, *, bias, activation, store_preact, act_grad_at,
    amax, colsum, blockwise, quantize_a, out_dtype, acc_dtype: torch.dtype = torch.float32,
) -> GemmOutput:
    """PyTorch twin of the Triton kernel (``acc_dtype=float64`` for exact tests)."""
    if quantize_a is not None:
        a = reference.quantize_with_scale(a, scale_a, quantize_a)
    if blockwise:
        acc = torch.zeros((a.shape[0], b.shape[0]), dtype=acc_dtype, device=a.device)
        fa_blk = reference.dequant_factor(scale_a, fa).to(acc_dtype)
        fb_blk = reference.dequant_factor(scale_b, fb).to(acc_dtype)
        fb_cols = fb_blk if fb_blk.shape[0] == b.shape[0] else fb_blk.repeat_interleave(BLOCK, dim=0)[: b.shape[0]]
        for kb in range(fa_blk.shape[1]):
            ks = slice(kb * BLOCK, (kb + 1) * BLOCK)
            part = a[:, ks].to(acc_dtype) @ b[:, ks].to(acc_dtype).t()
            acc = acc + part * fa_blk[:, kb : kb + 1] * fb_cols[:, kb].reshape(1, -1)
        c = acc
    else:
        c = a.to(acc_dtype) @ b.to(acc_dtype).t()
        if scale_a is not None:
            c = c * reference.dequant_factor(scale_a, fa).to(acc_dtype)
        if scale_b is not None:
            fbf = reference.dequant_factor(scale_b, fb).to(acc_dtype)
            c = c * (fbf.reshape(1, -1) if fbf.numel() > 1 else fbf.reshape(()))
    if bias is not None:
        c = c + bias.to(acc_dtype)
    preact = None
    if act_grad_at is not None:
        c = c.to(out_dtype).to(acc_dtype) * activation_grad(act_grad_at.to(acc_dtype), activation)
    else:
        if store_preact:
            preact = c.to(out_dtype)
        if activation is not None:
            c = activation_forward(c.to(out_dtype).to(acc_dtype), activation)
    out = c.to(out_dtype)
    am = cs = None
    if amax is not None:
        am = reference.absmax(out, amax)
    if colsum:
        cs = out.float().sum(0)
    return GemmOutput(out, preact, am, cs)

