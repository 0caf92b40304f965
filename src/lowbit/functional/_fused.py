"""One autograd function for ``[LayerNorm →] Linear [→ activation → Linear]`` under a recipe (SPEC §9).

The three public forms are thin wrappers: :func:`lowbit.functional.mlp` (fc1 → act → fc2),
:func:`lowbit.functional.layernorm_linear` (LN → linear) and :func:`lowbit.functional.layernorm_mlp`
(LN → fc1 → act → fc2). Every kernel is a call into :mod:`lowbit.functional._pieces`:

forward::

    [LN]   codes_h, scale_h, h16?, mean, rstd = layernorm_quantize(x)        (codes only where the recipe quantizes)
    fc1    g, a, _, amax_g = gemm(codes_h, W1q, bias=b1, activation, want_preact, want_amax)
    fc2    codes_g = quantize(g, amax=amax_g);  y = gemm(codes_g, W2q, bias=b2)

backward::

    fc2    db2 = colsum(dY);  codes_dy = quantize(dY)
           dA, _, db1, amax_da = gemm(codes_dy, W2ᵀq, activation, act_grad_preact=a, want_colsum, want_amax)
           dW2 = dYᵀ g (16-bit) or gemm(quantize(dYᵀ), saved codes of gᵀ) per recipe
    fc1    dh = gemm(quantize(dA, amax=amax_da), W1ᵀq);  dW1 = dAᵀ h per recipe
    [LN]   dx, dγ, dβ = LayerNorm backward from the saved mean / rstd

Recipes with row-wise activation codes and a 16-bit wgrad (:func:`row_flow`: switchback, switchback-q,
switchback-m, fp8-switchback) take SPEC §10's flow instead: the producers quantize, every GEMM is plain::

    [LN]   codes_h, scale_h, h16?, mean, rstd = layernorm_quantize(x)
    fc1    a = gemm(codes_h, W1q) + b1;  g16?, codes_g, scale_g = act_quantize(a);  y = gemm(codes_g, W2q) + b2
    bwd    codes_dY, scale_dY, db2 = quantize_rows_colsum(dY);  dg = gemm(codes_dY, W2ᵀq);  dA, codes_dA, scale_dA, db1 = act_backward_quantize(dg, a)
           dh = gemm(codes_dA, W1ᵀq);  dW2 = dYᵀ g16, dW1 = dAᵀ h16 (16-bit);  [LN] backward

(``lowbit.kernels.producers``; the GEMMs are ``lowbit.kernels.matmul.scaled_mm``: Triton or cuBLAS, whichever is
faster for the shape). Every piece is a ``torch.ops.lowbit`` custom op, so ``torch.compile`` traces this function
whole and CUDA graphs replay it.

What each matmul quantizes, and what is saved, is exactly what ``lowbit.functional.linear`` does for the same
recipe (``save``: X 16-bit, X's forward codes, or X quantized for the wgrad), so the fused module computes what
``LowbitLinear → activation → LowbitLinear`` computes: the same codes and scales, and in float32 the same outputs
and gradients bit for bit on the CPU (in 16-bit the fused epilogue rounds once where the composition rounds
twice). The 16-bit hidden activation g is saved only where the recipe's fc2 wgrad needs it, and
``recompute_activation=True`` recomputes it from the saved pre-activation instead.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from lowbit.functional import _pieces as P
from lowbit.functional.linear import _shares_codes, dual_weight
from lowbit.functional.recipe import Quant, Recipe
from lowbit.kernels import ops


@dataclass(frozen=True)
class _Spec:
    recipe: Recipe
    activation: str | None  # None: a single linear (LayerNormLinear)
    eps: float | None  # None: no LayerNorm in front
    recompute_activation: bool = False
    weights_are_copies: bool = False  # autocast's per-step casts: the forward may keep Wᵀ's codes (linear.dual_weight)


def _amax_kind(q: Quant | None) -> str | None:
    """The absmax a producer's epilogue should hand the quantizer of its output (None: the quantizer's own)."""
    if q is None or q.block:
        return None
    return "tensor" if q.scaling == "tensor" else "row"


def _mm(qa, qb, Qa: Quant, Qb: Quant, sim: bool, dtype: torch.dtype, **epilogue):
    """:func:`_pieces.gemm` on two ``(codes, scale)`` operands; simulated recipes dequantize them first."""
    (ca, sa), (cb, sb) = qa, qb
    if sim:
        return P.gemm(P.dequantize_operand(ca, sa, Qa, dtype), P.dequantize_operand(cb, sb, Qb, dtype), None, None,
                      out_dtype=dtype, **epilogue)
    return P.gemm(ca, cb, sa, sb, out_dtype=dtype, block_scaled=Qa.block, **epilogue)


def _dual(recipe: Recipe, need_w: bool) -> bool:
    """X's forward codes and its wgrad codes come from one tensor-wise quantize_dual pass (as in linear.py)."""
    return recipe.save == "wgrad-quantized" and need_w and _shares_codes(recipe.forward.left, recipe.wgrad.right)


def _linear_forward(h16, h_codes, amax_in, weight, bias, recipe: Recipe, need_w: bool, dual_w: bool = False,
                    **epilogue):
    """One linear's forward as ``linear.py`` wires it; returns ``(gemm outputs, saved pair for the wgrad, saved
    weight pair)``: ``(codes of Wᵀ, scale)`` when ``dual_w`` made them with the forward's codes, else ``(W, None)``."""
    fwd, sim, dtype = recipe.forward, recipe.simulated, weight.dtype
    qx = saved = None
    w_saved = (weight, None)
    if fwd.quantized:
        if h_codes is not None:
            qx = h_codes
        elif _dual(recipe, need_w):
            cx, cxt, sx = ops.quantize_dual(h16, fwd.left.format)
            qx, saved = (cx, sx), (cxt, sx)
        else:
            qx = P.quantize(h16, fwd.left, amax=amax_in)
        if dual_w and dual_weight(recipe, weight):
            cw, cwt, sw = ops.quantize_dual(weight, fwd.right.format)
            qw, w_saved = (cw, sw), (cwt, sw)
        else:
            qw = P.quantize(weight, fwd.right, weight=True)
        outs = _mm(qx, qw, fwd.left, fwd.right, sim, dtype, bias=bias, **epilogue)
    else:
        outs = P.gemm(h16, weight, None, None, bias=bias, out_dtype=dtype, **epilogue)
    if saved is None:
        if recipe.save == "forward-quantized":
            saved = qx
        elif recipe.save == "wgrad-quantized":
            saved = P.quantize(h16, recipe.wgrad.right, transpose=True) if need_w else (None, None)
        else:
            saved = (h16, None)
    return outs, saved, w_saved


def _linear_backward(dy2d, saved, w_saved, w_dtype: torch.dtype, recipe: Recipe, need_dx: bool, need_dw: bool, *,
                     amax_in=None, dy_codes=None, **epilogue):
    """One linear's dgrad (with an optional epilogue) and wgrad as ``linear.py`` wires them.

    ``w_saved``: the forward's saved weight pair (``(W, None)``, or Wᵀ's codes and scale). ``dy_codes``: dY's dgrad
    codes and scales, already written by the producer of dY (the activation's backward).
    Returns ``(dx, colsum, amax, dw)`` (``colsum``/``amax`` from the dgrad epilogue when asked)."""
    dg, wg, sim, dtype = recipe.dgrad, recipe.wgrad, recipe.simulated, dy2d.dtype
    weight, w_scale = w_saved
    qdy = qdyt = None
    if need_dx and need_dw and _shares_codes(dg.left, wg.left):
        cdy, cdyt, sdy = ops.quantize_dual(dy2d, dg.left.format)
        qdy, qdyt = (cdy, sdy), (cdyt, sdy)
    dx = col = amax = dw = None
    if need_dx:
        if dg.quantized:
            qdy = qdy or dy_codes or P.quantize(dy2d, dg.left, amax=amax_in)
            qwt = w_saved if w_scale is not None else P.quantize(weight, dg.right, transpose=True, weight=True)
            dx, _, col, amax = _mm(qdy, qwt, dg.left, dg.right, sim, dtype, **epilogue)
        else:
            dx, _, col, amax = P.gemm(dy2d, weight.t(), None, None, out_dtype=dtype, **epilogue)
    if need_dw:
        if wg.quantized:
            qdyt = qdyt or P.quantize(dy2d, wg.left, transpose=True)
            dw = _mm(qdyt, saved, wg.left, wg.right, sim, w_dtype)[0]
        else:
            if recipe.save == "forward-quantized":
                h = P.dequantize_operand(saved[0], saved[1], recipe.forward.left, dtype)
            else:
                h = saved[0]
            dw = dy2d.t() @ h
    return dx, col, amax, dw


def row_flow(recipe: Recipe) -> bool:
    """SPEC §10's data flow: activations quantized row-wise by their producers (LayerNorm, the activation, its
    backward) and every GEMM plain (dequantize + bias). It serves recipes whose forward and dgrad take row-wise
    activation codes and whose wgrad is 16-bit (switchback, switchback-q, switchback-m, fp8-switchback); others keep
    the epilogue-fused flow. All its pieces are custom ops, so ``torch.compile`` captures the whole function."""
    fl, dl = recipe.forward.left, recipe.dgrad.left
    return (not recipe.simulated and fl is not None and dl is not None and fl.scaling == "row"
            and dl.scaling == "row" and not recipe.wgrad.quantized and recipe.save in ("input", "forward-quantized"))


class _FusedFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, ln_w, ln_b, w1, b1, w2, b2, spec: _Spec):
        recipe, act = spec.recipe, spec.activation
        mlp = act is not None
        need = ctx.needs_input_grad
        need_w1, need_w2 = need[3], need[5]
        # Which dgrads the backward runs (as it decides below): fc1's for dh, fc2's for dA.
        need_dh = need[0] or (spec.eps is not None and (need[1] or need[2]))
        need_da = need_dh or need_w1 or need[4]
        dual1, dual2 = spec.weights_are_copies and need_dh, spec.weights_are_copies and need_da
        lin_dtype = w1.dtype
        x2d = x.reshape(-1, x.shape[-1])
        fwd = recipe.forward
        mean = rstd = None
        h_codes = None
        if spec.eps is not None:
            # One pass: LN + the codes fc1's forward reads; the 16-bit output only where something needs it.
            dual = _dual(recipe, need_w1)
            q = fwd.left if fwd.quantized and not dual else None
            want_h16 = q is None or recipe.save in ("input", "wgrad-quantized")
            codes, scale, h16, mean, rstd = P.layernorm_quantize(
                x2d, ln_w, ln_b, spec.eps, q.format if q else None, q.scaling if q else "row",
                out_dtype=lin_dtype, want_y16=want_h16)
            h_codes = (codes, scale) if q is not None else None
        else:
            h16 = x2d
        a = None
        if mlp and row_flow(recipe):
            # fc1 plain (a = dequant + b1); the activation writes g (16-bit only for fc2's 16-bit wgrad) and fc2's
            # codes in one pass; fc2 plain.
            (a, _, _, _), saved1, wq1 = _linear_forward(h16, h_codes, None, w1, b1, recipe, need_w1, dual1)
            want_g = recipe.save == "input" and need_w2 and not spec.recompute_activation
            g, cg, sg = ops.act_quantize(a, act, fwd.left.format, a.dtype, want_g)
            (y, _, _, _), saved2, wq2 = _linear_forward(g if want_g else None, (cg, sg), None, w2, b2, recipe,
                                                        need_w2, dual2)
        elif mlp:
            want_amax = None if _dual(recipe, need_w2) else _amax_kind(fwd.left)
            (g, a, _, amax_g), saved1, wq1 = _linear_forward(h16, h_codes, None, w1, b1, recipe, need_w1, dual1,
                                                             activation=act, want_preact=True, want_amax=want_amax)
            (y, _, _, _), saved2, wq2 = _linear_forward(g, None, amax_g, w2, b2, recipe, need_w2, dual2)
            if saved2[0] is g and spec.recompute_activation:  # the fc2 wgrad takes g in 16-bit: recompute it
                saved2 = (None, None)
        else:
            (y, _, _, _), saved1, wq1 = _linear_forward(h16, h_codes, None, w1, b1, recipe, need_w1, dual1)
            saved2, wq2 = (None, None), (w2, None)
        # The input itself is saved, not its 2-D view: dynamo (torch.compile) refuses a saved view of an input.
        ctx.s1_is_input = saved1[0] is x2d
        if ctx.s1_is_input:
            saved1 = (x, saved1[1])
        ctx.save_for_backward(x if spec.eps is not None else None, ln_w, ln_b, mean, rstd, *saved1, *wq1, a,
                              *saved2, *wq2)
        ctx.w_dtype = w1.dtype
        ctx.spec = spec
        ctx.x_shape = x.shape
        ctx.has_b1, ctx.has_b2 = b1 is not None, b2 is not None
        out_features = (w2 if mlp else w1).shape[0]
        return y.reshape(*x.shape[:-1], out_features)

    @staticmethod
    def backward(ctx, dy):
        x, ln_w, ln_b, mean, rstd, s1a, s1b, w1, w1s, a, s2a, s2b, w2, w2s = ctx.saved_tensors
        wq1, wq2, w_dtype = (w1, w1s), (w2, w2s), ctx.w_dtype
        x2d = x.reshape(-1, x.shape[-1]) if x is not None else None
        if ctx.s1_is_input:
            s1a = s1a.reshape(-1, s1a.shape[-1])
        spec: _Spec = ctx.spec
        recipe, act = spec.recipe, spec.activation
        need = ctx.needs_input_grad
        need_x, need_lnw, need_lnb, need_w1, need_b1, need_w2, need_b2 = need[:7]
        need_ln = spec.eps is not None and (need_x or need_lnw or need_lnb)
        need_dh = need_x or need_ln
        dy2d = dy.reshape(-1, dy.shape[-1])
        dtype = dy2d.dtype
        dx = dlnw = dlnb = dw1 = db1 = dw2 = db2 = None
        if act is not None:
            if spec.recompute_activation and s2a is None and recipe.save == "input" and need_w2:
                s2a = P.act_forward(a, act)  # recompute g from the saved pre-activation
            need_da = need_dh or need_w1 or (need_b1 and ctx.has_b1)
            if need_b2 and ctx.has_b2 and not (row_flow(recipe) and need_da):
                db2 = P.colsum(dy2d).to(dtype)
        if act is not None and row_flow(recipe):
            # dY's codes and fc2's bias gradient in one pass; fc2's dgrad plain; GELU' writes dA (16-bit, fc1's
            # wgrad), its codes for fc1's dgrad and fc1's bias gradient in one pass; fc1's dgrad plain.
            dy_codes = None
            if need_da and need_b2 and ctx.has_b2:
                cdy, sdy, cs2 = ops.quantize_rows_colsum(dy2d, recipe.dgrad.left.format)
                dy_codes, db2 = (cdy, sdy), cs2.to(dtype)
            dg, _, _, dw2 = _linear_backward(dy2d, (s2a, s2b), wq2, w_dtype, recipe, need_da, need_w2,
                                             dy_codes=dy_codes)
            dh = None
            if need_da:
                want_db1 = need_b1 and ctx.has_b1
                da, cda, sda, cs = ops.act_backward_quantize(dg, a, act, recipe.dgrad.left.format, dtype, want_db1)
                db1 = cs.to(dtype) if want_db1 else None
                dh, _, _, dw1 = _linear_backward(da, (s1a, s1b), wq1, w_dtype, recipe, need_dh, need_w1,
                                                 dy_codes=(cda, sda))
        elif act is not None:
            want_amax = None if (need_dh and need_w1 and _shares_codes(recipe.dgrad.left, recipe.wgrad.left)) \
                else _amax_kind(recipe.dgrad.left)
            da, col, amax_da, dw2 = _linear_backward(
                dy2d, (s2a, s2b), wq2, w_dtype, recipe, need_da, need_w2, activation=act, act_grad_preact=a,
                want_colsum=need_b1 and ctx.has_b1, want_amax=want_amax if need_dh else None)
            if need_b1 and ctx.has_b1:
                db1 = col.to(dtype)
            if need_da:
                dh, _, _, dw1 = _linear_backward(da, (s1a, s1b), wq1, w_dtype, recipe, need_dh, need_w1,
                                                 amax_in=amax_da)
            else:
                dh = None
        else:
            dy_codes = None
            if need_b1 and ctx.has_b1 and need_dh and row_flow(recipe):
                cdy, sdy, cs1 = ops.quantize_rows_colsum(dy2d, recipe.dgrad.left.format)
                dy_codes, db1 = (cdy, sdy), cs1.to(dtype)
            elif need_b1 and ctx.has_b1:
                db1 = P.colsum(dy2d).to(dtype)
            dh, _, _, dw1 = _linear_backward(dy2d, (s1a, s1b), wq1, w_dtype, recipe, need_dh, need_w1,
                                             dy_codes=dy_codes)
        if spec.eps is not None:
            if need_ln:
                dx2d, dlnw, dlnb = torch.ops.aten.native_layer_norm_backward(
                    dh.to(x2d.dtype), x2d, [x2d.shape[-1]], mean, rstd, ln_w, ln_b,
                    [need_x, need_lnw and ln_w is not None, need_lnb and ln_b is not None])
                dx = dx2d.reshape(ctx.x_shape) if need_x else None
        elif need_x:
            dx = dh.reshape(ctx.x_shape)
        return dx, dlnw, dlnb, dw1, db1, dw2, db2, None
