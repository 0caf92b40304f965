"""StableAdamW's multi-tensor engines (``foreach=True``, the default off CUDA): tensors bucketed by (device, dtypes,
step), each bucket run by the CPU engine (RMS in cache-sized slices, then torch's fused CPU AdamW kernel with
lr = η) or by ``torch._foreach_*`` ops over whole lists. The arithmetic is SPEC §5 as in
:mod:`lowbit.optim._common`; :mod:`lowbit.optim._stable_adamw` dispatches here.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from lowbit.optim._common import (
    _compute_dtype,
    _foreach_moments_,
    _foreach_update_,
    _grouped,
    _increment,
    _working,
    folded_betas,
)


def _multi_tensor_stable_adamw(
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
    engine: str | None = None,
    host_scalars: bool | None = None,
) -> None:
    """Multi-tensor implementation (the default).

    Tensors are bucketed by (device, dtypes, step) so that β̂1, β̂2 are scalars per bucket. Each bucket runs
    one of two engines (``engine`` forces one; tests use this):

    * ``"cpu"`` (CPU tensors with p, g, m, v of one dtype): RMS reduction in cache-sized slices (reads g
      and v once, no full-size temporaries), then the update by torch's fused CPU AdamW kernel
      ``torch._fused_adamw_`` called with β̂1, β̂2, lr = η_i and unit bias correction, which is exactly
      ``θ − η λ θ − η m / (sqrt(v) + ε)``. torch's foreach AdamW allocates full-size temporaries every
      step; this engine does not, which is why it is faster than torch's foreach AdamW on the CPU.
    * ``"foreach"``: ``torch._foreach_*`` ops. η_i is applied as Python scalars on the CPU and as 0-dim
      device tensors elsewhere (``host_scalars`` forces either), so a CUDA step never syncs the host.
    """
    if not params:
        return
    _increment(state_steps)
    for (device, _pdt, _sdt, step), idx in _grouped(params, exp_avgs, state_steps).items():
        b1, b2 = folded_betas(beta1, beta2, step)
        lists = [[x[i] for i in idx] for x in (params, grads, exp_avgs, exp_avg_sqs, rmss)]
        kw = dict(b1=b1, b2=b2, lr=lr, weight_decay=weight_decay, eps=eps, clip_update=clip_update)
        use = engine or ("cpu" if device.type == "cpu" and _cpu_engine_ok(*lists[:4]) else "foreach")
        if use == "cpu":
            _cpu_bucket(*lists, maximize=maximize, **kw)
        else:
            use_host = device.type == "cpu" if host_scalars is None else host_scalars
            _foreach_bucket(*lists, maximize=maximize, host_scalars=use_host, **kw)


def _cpu_engine_ok(p_: list[Tensor], g_: list[Tensor], m_: list[Tensor], v_: list[Tensor]) -> bool:
    if not hasattr(torch, "_fused_adamw_"):
        return False
    dt = p_[0].dtype
    return all(t.dtype == dt and t.device.type == "cpu" for ts in (p_, g_, m_, v_) for t in ts)


_BIG_STEP: dict[torch.device, Tensor] = {}


def _cpu_bucket(
    p_: list[Tensor],
    g_: list[Tensor],
    m_: list[Tensor],
    v_: list[Tensor],
    r_: list[Tensor],
    *,
    b1: float,
    b2: float,
    lr: float,
    weight_decay: float,
    eps: float,
    clip_update: bool,
    maximize: bool,
) -> None:
    """CPU engine: RMS (phase 1), then torch's fused AdamW kernel with lr = η_i (phase 2).

    Phase 1 reads g and v once: large tensors in cache-sized slices through two reused scratch buffers,
    small ones together with a few ``torch._foreach_*`` calls (their temporaries are small).
    """
    cdt = _compute_dtype(p_[0])
    threads = max(1, torch.get_num_threads())
    span = 65536 * threads
    eps2 = eps * eps
    totals = [0.0] * len(p_)
    small = [i for i, g in enumerate(g_) if g.numel() <= span]
    if small:
        gs = [g_[i] if g_[i].dtype == cdt else g_[i].to(cdt) for i in small]
        u = torch._foreach_mul([v_[i] if v_[i].dtype == cdt else v_[i].to(cdt) for i in small], b2)
        torch._foreach_addcmul_(u, gs, gs, 1.0 - b2)  # v_new
        torch._foreach_clamp_min_(u, eps2)
        torch._foreach_sqrt_(u)
        torch._foreach_div_(u, gs)  # sqrt(max(v_new, ε²)) / g, inverted next (0 where g = 0)
        torch._foreach_reciprocal_(u)
        sq = torch.stack(torch._foreach_norm(u, 2)).double().square().tolist()
        for i, x in zip(small, sq):
            totals[i] = x
    large = [i for i, g in enumerate(g_) if g.numel() > span]
    if large:
        t1 = torch.empty(span, dtype=cdt)
        t2 = torch.empty(span, dtype=cdt)
    for i in large:
        gf, vf = g_[i].reshape(-1), v_[i].reshape(-1)
        total = 0.0
        for j in range(0, gf.numel(), span):
            a, b = gf[j : j + span], vf[j : j + span]
            if a.dtype != cdt:
                a, b = a.to(cdt), b.to(cdt)
            k = a.numel()
            u1, w = t1[:k], t2[:k]
            torch.mul(b, b2, out=u1)
            u1.addcmul_(a, a, value=1.0 - b2)  # v_new
            u1.clamp_min_(eps2)
            torch.div(a, u1, out=w)
            total += float(torch.dot(w, a))  # Σ g² / max(v_new, ε²)
        totals[i] = total
    rms = [math.sqrt(tot / n) if (n := p.numel()) else 0.0 for tot, p in zip(totals, p_)]
    torch._foreach_copy_(r_, list(torch.tensor(rms, dtype=torch.float32).unbind(0)))
    etas = [lr / max(1.0, x) if clip_update else lr for x in rms]
    # one fused call per distinct η (usually: all unclipped tensors together, then each clipped one)
    by_eta: dict[float, list[int]] = {}
    for i, e in enumerate(etas):
        by_eta.setdefault(e, []).append(i)
    big = _BIG_STEP.setdefault(torch.device("cpu"), torch.tensor(2.0**30))  # β^step = 0: no bias correction
    for e, ids in by_eta.items():
        torch._fused_adamw_(
            [p_[i] for i in ids],
            [g_[i] for i in ids],
            [m_[i] for i in ids],
            [v_[i] for i in ids],
            [],
            [big] * len(ids),
            lr=e,
            beta1=b1,
            beta2=b2,
            weight_decay=weight_decay,
            eps=eps,
            amsgrad=False,
            maximize=maximize,
        )


_SQRT_NUMEL: dict[tuple[Any, ...], Tensor] = {}


def _sqrt_numels(p_: list[Tensor], dtype: torch.dtype, device: torch.device) -> Tensor:
    """sqrt(numel) per tensor as one device tensor, cached: building it each step would be an H2D copy."""
    key = (device, dtype, tuple(t.numel() for t in p_))
    out = _SQRT_NUMEL.get(key)
    if out is None:
        if len(_SQRT_NUMEL) >= 32:
            _SQRT_NUMEL.pop(next(iter(_SQRT_NUMEL)))
        out = torch.tensor([max(n, 1) for n in key[2]], dtype=torch.float64).sqrt().to(dtype).to(device)
        _SQRT_NUMEL[key] = out
    return out


def _foreach_bucket(
    p_: list[Tensor],
    g_: list[Tensor],
    m_: list[Tensor],
    v_: list[Tensor],
    r_: list[Tensor],
    *,
    b1: float,
    b2: float,
    lr: float,
    weight_decay: float,
    eps: float,
    clip_update: bool,
    maximize: bool,
    host_scalars: bool,
) -> None:
    """``torch._foreach_*`` engine for one bucket: every op is one call over the list, no per-tensor Python.

    Arithmetic is in the compute dtype ``cdt`` (fp32, fp64 for fp64). When g, m or v are stored in another
    dtype (bf16/fp16), they are copied once into ``cdt`` working lists (``_foreach_copy_``), so that the RMS
    and the update use the *unrounded* m and v, exactly as the reference; m and v are rounded once when
    copied back and θ once when the update is added. Two full-size temporaries at most (``s`` then ``u``).

    Per-tensor η stays on the device (no host sync) unless ``host_scalars``: the one op that needs it
    (θ += u · (−η)) then takes torch's per-tensor loop in C++, which is still a single Python call.
    """
    device = p_[0].device
    cdt = _compute_dtype(p_[0], m_[0])
    gc, mc, vc = _working(g_, cdt), _working(m_, cdt), _working(v_, cdt)
    if maximize:
        gc = torch._foreach_neg(gc)
    _foreach_moments_(gc, mc, vc, b1, b2)

    s = list(torch._foreach_sqrt(vc))  # kept for the update (emptied there)
    c = torch._foreach_clamp_min(s, eps)  # sqrt(max(v, ε²)) = max(sqrt(v), ε)
    torch._foreach_div_(c, gc)  # max(sqrt(v), ε) / g, inverted next (0 where g = 0): no third temporary
    torch._foreach_reciprocal_(c)
    norms = torch._foreach_norm(c, 2)  # sqrt(Σ g² / max(v, ε²))
    del c
    rms = torch.stack(norms).div_(_sqrt_numels(p_, cdt, device))
    torch._foreach_copy_(r_, list(rms.to(torch.float32).unbind(0)))
    eta = lr / rms.clamp_min(1.0) if clip_update else torch.full_like(rms, lr)

    neg_eta = eta.neg()
    if host_scalars:
        neg, fused_add = neg_eta.tolist(), False
    else:  # fp32/fp64 θ: θ += u · (−η) in one addcmul; bf16/fp16 θ: added in fp32, rounded once
        neg, fused_add = list(neg_eta.unbind(0)), p_[0].dtype == cdt
    _foreach_update_(p_, m_, v_, mc, vc, s, neg, eps=eps, weight_decay=weight_decay, fused_add=fused_add)
