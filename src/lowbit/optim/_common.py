"""The arithmetic every StableAdamW path shares (SPEC §5): the leaf module of ``lowbit.optim``.

``_stable_adamw`` (the optimizer, the foreach and CPU engines), ``_fused`` (Triton) and ``_sharded`` (DTensor
parameters) import these at the top and import nothing from each other but through here, as torch's
``optim/adam.py`` builds on ``optim/optimizer.py``:

* ``folded_betas``: β̂1, β̂2, the bias correction folded into the decay rates;
* ``_single_tensor_stable_adamw``: the per-tensor reference (SPEC §5 written out), also the fused path's
  fallback for tensors its kernel cannot address;
* the foreach pieces of one bucket, shared by the foreach engine and the sharded path (which differs only in
  how the RMS is reduced): ``_working`` copies, ``_foreach_moments_`` and ``_foreach_update_``;
* small helpers: ``_compute_dtype``, ``_increment``, ``_grouped``, ``is_dtensor``.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

__all__ = ["folded_betas", "is_dtensor"]


def folded_betas(beta1: float, beta2: float, step: float) -> tuple[float, float]:
    """β̂1, β̂2 of SPEC §5 for step ``step`` (1-based): AdamW's bias correction folded into the decay."""
    if step < 1:
        raise ValueError(f"step must be >= 1, got {step}")
    b1 = beta1 * (1.0 - beta1 ** (step - 1)) / (1.0 - beta1**step) if beta1 > 0 else 0.0
    b2 = beta2 * (1.0 - beta2 ** (step - 1)) / (1.0 - beta2**step) if beta2 > 0 else 0.0
    return b1, b2


def is_dtensor(t: Tensor) -> bool:
    """Whether ``t`` is a ``torch.distributed.tensor.DTensor`` (a sharded parameter, e.g. under FSDP2)."""
    try:
        from torch.distributed.tensor import DTensor
    except ImportError:  # pragma: no cover - torch built without distributed
        return False
    return isinstance(t, DTensor)


def _compute_dtype(*tensors: Tensor) -> torch.dtype:
    """fp64 if any operand is fp64, else fp32: the arithmetic precision of every implementation."""
    return torch.float64 if any(t.dtype == torch.float64 for t in tensors) else torch.float32


_ONE = torch.tensor(1.0)


def _increment(state_steps: list[Tensor]) -> None:
    """step += 1 for CPU step tensors in one call (a wrapped CPU scalar avoids a per-tensor re-wrap)."""
    torch._foreach_add_(state_steps, _ONE, alpha=1.0)


def _grouped(
    params: list[Tensor], exp_avgs: list[Tensor], state_steps: list[Tensor]
) -> dict[tuple[Any, ...], list[int]]:
    """Indices grouped by (device, param dtype, state dtype, step): one scalar β̂ pair per group."""
    groups: dict[tuple[Any, ...], list[int]] = {}
    for i, (p, m, s) in enumerate(zip(params, exp_avgs, state_steps)):
        groups.setdefault((p.device, p.dtype, m.dtype, float(s)), []).append(i)
    return groups


def _single_tensor_stable_adamw(
    params: list[Tensor],
    grads: list[Tensor],
    exp_avgs: list[Tensor],
    exp_avg_sqs: list[Tensor],
    rmss: list[Tensor],
    state_steps: list[Tensor],
    *,
    beta1: float,
    beta2: float,
    lr: float,
    weight_decay: float,
    eps: float,
    clip_update: bool,
    maximize: bool,
) -> None:
    """Reference: SPEC §5 written out literally, one tensor at a time."""
    for p, g, m, v, rms, step_t in zip(params, grads, exp_avgs, exp_avg_sqs, rmss, state_steps):
        step_t += 1
        b1, b2 = folded_betas(beta1, beta2, float(step_t))
        cdt = _compute_dtype(p, m, v)
        gc = g.to(cdt)
        if maximize:
            gc = -gc
        mc, vc, pc = m.to(cdt), v.to(cdt), p.to(cdt)  # the state itself when the dtypes agree
        mc.mul_(b1).add_(gc, alpha=1.0 - b1)
        vc.mul_(b2).addcmul_(gc, gc, value=1.0 - b2)
        if p.numel() == 0:
            r = torch.zeros((), dtype=cdt, device=p.device)
        else:
            r = (gc * gc / vc.clamp_min(eps * eps)).mean().sqrt()
        rms.copy_(r)
        eta = lr / r.clamp_min(1.0) if clip_update else torch.full((), lr, dtype=cdt, device=p.device)
        update = mc / (vc.sqrt() + eps)
        pc.sub_(eta * weight_decay * pc + eta * update)
        for dst, src in ((m, mc), (v, vc), (p, pc)):
            if dst is not src:
                dst.copy_(src)


# ---- the foreach arithmetic of one bucket (one device, dtypes and step), shared by foreach and sharded ------


def _working(ts: list[Tensor], cdt: torch.dtype) -> list[Tensor]:
    """``ts`` itself when already in the compute dtype, else fp32/fp64 working copies (one ``_foreach_copy_``)."""
    if all(t.dtype == cdt for t in ts):
        return ts
    out = [torch.empty_like(t, dtype=cdt) for t in ts]
    torch._foreach_copy_(out, ts)
    return out


def _foreach_moments_(gc: list[Tensor], mc: list[Tensor], vc: list[Tensor], b1: float, b2: float) -> None:
    """m = β̂1 m + (1 − β̂1) g and v = β̂2 v + (1 − β̂2) g² (the updated v, from which SPEC §5 takes the RMS)."""
    torch._foreach_lerp_(mc, gc, 1.0 - b1)
    torch._foreach_mul_(vc, b2)
    torch._foreach_addcmul_(vc, gc, gc, 1.0 - b2)


def _foreach_update_(
    p_: list[Tensor],
    m_: list[Tensor],
    v_: list[Tensor],
    mc: list[Tensor],
    vc: list[Tensor],
    s: list[Tensor],
    neg_eta: list[Tensor] | list[float],
    *,
    eps: float,
    weight_decay: float,
    fused_add: bool,
) -> None:
    """θ += −η (m / (sqrt(v) + ε) + λ θ), then the working m, v copied back into the state (rounded once).

    ``s``: sqrt(v) per tensor, a list that is emptied here once used (ε is added in place), so that its buffers
    are freed before the update's. ``neg_eta``: −η per tensor, as 0-dim tensors (no host
    sync) or Python floats. ``fused_add``: θ += u · (−η) in one ``addcmul`` (θ already in the compute dtype),
    else u · (−η) first and then added, so that a bf16/fp16 θ is rounded once.
    """
    torch._foreach_add_(s, eps)
    u = torch._foreach_div(mc, s)  # m / (sqrt(v) + ε)
    s.clear()  # frees sqrt(v) (the caller's list is this one): at most two full-size temporaries
    if weight_decay != 0.0:
        torch._foreach_add_(u, p_, alpha=weight_decay)  # u = m / (sqrt(v) + ε) + λ θ
    if fused_add:
        torch._foreach_addcmul_(p_, u, neg_eta)  # θ += u · (−η)
    else:
        torch._foreach_mul_(u, neg_eta)
        torch._foreach_add_(p_, u)
    for dst, src in ((m_, mc), (v_, vc)):
        if dst is not src:
            torch._foreach_copy_(dst, src)
