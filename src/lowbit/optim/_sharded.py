"""StableAdamW on sharded parameters (DTensors, e.g. FSDP2's ``fully_shard``, sharded on dim 0).

SPEC §5's RMS is a statistic of the *whole* tensor: ``RMS = sqrt(Σ g²/max(v, ε²) / numel)``. With FSDP each
rank holds one shard of g, m, v and θ, so each rank computes its shard's partial sum Σ g²/max(v, ε²); the sums
of all tensors of the step are stacked into one vector and reduced with **one** ``all_reduce(SUM)`` per
(device mesh, sharded mesh dims), then divided by the tensor's global ``numel``. Everything else in SPEC §5 is
elementwise, so it runs on the local shards (``DTensor.to_local()``, views of the parameters' storage) with
the foreach engine's own pieces (``lowbit.optim._common``: working copies, moments, update): the update equals
the unsharded one up to the summation order of the RMS (fp32 rounding).

Placements: ``Shard(d)`` mesh dims are reduced over, ``Replicate()`` dims are not (HSDP: every replica
holds the same partial sums). ``Partial`` parameters are rejected.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist
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

__all__ = ["sharded_stable_adamw"]


def _reduce_key(p: Any) -> tuple[Any, tuple[int, ...]]:
    """(mesh, mesh dims whose placement is a Shard): the process groups the partial sums are summed over."""
    from torch.distributed.tensor import Partial, Shard

    dims = []
    for i, pl in enumerate(p.placements):
        if isinstance(pl, Partial):
            raise TypeError(f"StableAdamW cannot step a parameter with a Partial placement ({p.placements})")
        if isinstance(pl, Shard):
            dims.append(i)
    return p.device_mesh, tuple(dims)


def sharded_stable_adamw(
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
    clip_update: bool = True,
    maximize: bool = False,
) -> None:
    """One StableAdamW step over DTensor parameters, the RMS reduced over whole tensors (see module doc).

    ``params``, ``grads``, ``exp_avgs`` and ``exp_avg_sqs`` are DTensors with the same placements;
    ``rmss`` are plain 0-dim tensors (the global RMS is written there, identical on every rank);
    ``state_steps`` are 0-dim CPU tensors, incremented here.
    """
    if not params:
        return
    _increment(state_steps)
    loc = [[t.to_local() for t in ts] for ts in (params, grads, exp_avgs, exp_avg_sqs)]
    buckets = _grouped(loc[0], loc[2], state_steps)  # one scalar β̂ pair and one compute dtype per bucket
    eps2 = eps * eps
    partial = [torch.zeros((), dtype=torch.float64)] * len(params)  # placeholders, replaced below
    work: dict[tuple[Any, ...], tuple[list[Tensor], list[Tensor], list[Tensor]]] = {}
    # ---- phase 1: m, v updated (in working copies), local Σ g² / max(v, ε²) per tensor
    for key, idx in buckets.items():
        _device, _pdt, _sdt, step = key
        b1, b2 = folded_betas(beta1, beta2, step)
        p_, g_, m_, v_ = ([ts[i] for i in idx] for ts in loc)
        cdt = _compute_dtype(p_[0], m_[0])
        gc, mc, vc = _working(g_, cdt), _working(m_, cdt), _working(v_, cdt)
        if maximize:
            gc = torch._foreach_neg(gc)
        _foreach_moments_(gc, mc, vc, b1, b2)
        c = torch._foreach_clamp_min(vc, eps2)
        torch._foreach_div_(c, gc)  # max(v, ε²) / g, inverted next (0 where g = 0)
        torch._foreach_reciprocal_(c)
        torch._foreach_mul_(c, gc)  # g² / max(v, ε²)
        sums = [x.sum(dtype=torch.float64) if x.numel() else torch.zeros((), dtype=torch.float64, device=x.device) for x in c]
        for i, s in zip(idx, sums):
            partial[i] = s
        work[key] = (gc, mc, vc)
    # ---- one all_reduce per (mesh, sharded dims) of the stacked partial sums
    groups: dict[Any, list[int]] = {}
    for i, p in enumerate(params):
        groups.setdefault(_reduce_key(p), []).append(i)
    total = [0.0] * len(params)
    for (mesh, dims), idx in groups.items():
        stacked = torch.stack([partial[i].to(loc[0][idx[0]].device) for i in idx])
        for d in dims:
            dist.all_reduce(stacked, op=dist.ReduceOp.SUM, group=mesh.get_group(d))
        for i, x in zip(idx, stacked.unbind(0)):
            total[i] = x
    rms_all = [
        (total[i] / max(params[i].numel(), 1)).sqrt() if params[i].numel() else torch.zeros((), dtype=torch.float64)
        for i in range(len(params))
    ]
    # ---- phase 2: the update on the local shards, η = lr / max(1, RMS)
    for key, idx in buckets.items():
        _gc, mc, vc = work[key]
        p_, _g, m_, v_ = ([ts[i] for i in idx] for ts in loc)
        cdt = mc[0].dtype
        device = p_[0].device
        rms = torch.stack([rms_all[i].to(device) for i in idx])
        torch._foreach_copy_([rmss[i] for i in idx], list(rms.to(torch.float32).unbind(0)))
        eta = (lr / rms.clamp_min(1.0)) if clip_update else torch.full_like(rms, lr)
        neg_eta = list(eta.neg().to(cdt).unbind(0))
        _foreach_update_(p_, m_, v_, mc, vc, list(torch._foreach_sqrt(vc)), neg_eta, eps=eps, weight_decay=weight_decay,
                         fused_add=False)
