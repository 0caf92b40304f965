"""Fused (Triton) StableAdamW step: one persistent launch per bucket, phase 2 re-reading g and v from L2.

**Bytes per parameter.** torch's fused AdamW reads p, g, m, v and writes p, m, v: 7 values, 28 B per fp32
parameter, 14 B for bf16 p, g, m, v (the bench's bf16 rows keep the moments in the parameter's dtype),
18 B for bf16 p, g with fp32 m, v (``state_dtype=torch.float32``). StableAdamW needs a full reduction over
the tensor's *updated* second moment before any of its elements may be updated (SPEC §5), so it has two
phases per tensor:

* phase 1 reads g and v (8 B fp32 / 4 B bf16), forms v_new = β̂2 v + (1 − β̂2) g² in registers and reduces
  Σ g² / max(v_new, ε²) over a tile to one partial (nothing else is written);
* phase 2 does the AdamW-style update of a tile (the 28 / 14 / 18 B above) with η = lr / max(1, RMS).

HBM traffic is ``AdamW bytes + (fraction of phase-2 reads of g, v that miss L2) × (g + v bytes)``: 28 B +
8 B × miss for fp32, 14 B + 4 B × miss for bf16. Everything here serves to keep that miss fraction small
and the GPU busy:

* **One launch per bucket and step** (plus a 4-byte-per-tensor memset), whatever the number of tensors: a
  persistent grid (``programs_per_sm`` × SMs) takes *work items* — a phase-1 or phase-2 tile of one
  tensor — from a ticket counter (an atomic) in the order of a static item table. The tables (item order,
  per-tensor numel / tile counts / partial slots) depend only on the sizes and are built once and cached
  (:mod:`lowbit.optim._fused_plan`);
  the per-tensor element offsets from one base pointer per role are rebuilt only when an address changes
  (``data_ptr``-keyed), e.g. when gradients are re-allocated.
* **Interleaved phases for L2 reuse.** The item table streams phase-1 tiles in tensor order and inserts a
  tensor's phase-2 tiles as soon as its last phase-1 tile is ``lag`` phase-1 tiles behind the stream
  (``lag`` = ``l2_budget_bytes`` of g + v, and at least ``min_lag_grids`` × grid tiles so that phase-2 tiles
  seldom wait): g and v are re-read soon after they were first read, while they are likely still in the
  50 MB L2 of an H100. A tensor larger than that has its phase-2 tiles in reverse order, so its most
  recently read tail is re-read first. Phase-1 loads are ``evict_last``, phase-2 accesses ``evict_first``.
  Measured on an H100 (ViT-H/14, defaults): fp32 ≈ 1.14× torch's fused AdamW (≈ 32 B/param effective:
  about half of the g, v re-reads miss L2, the lag being bounded below by the ~1000 tiles in flight), bf16
  ≈ 1.01× (14 B + a few hits-missed). Bigger tiles were faster (fewer tickets/atomics per byte) down to
  16 k-element phase-1 tiles; a lag under half a grid makes phase-2 tiles wait.
* **RMS without a second pass or a host sync.** Each phase-1 tile stores its partial, then increments the
  tensor's counter (acq_rel atomic); the tile that completes the count sums the tensor's partials in a
  fixed order (deterministic, no float atomics), stores RMS into ``state['rms']`` and bumps the counter
  once more (release). A phase-2 tile polls that counter (acquire) and then reads one float.
* **No deadlock by construction:** tickets are taken in increasing order by running programs, a phase-2
  tile only waits for phase-1 tiles with smaller tickets, and phase-1 tiles never wait. Under
  ``TRITON_INTERPRET=1`` (programs run one after another) the first program simply takes every ticket in
  order.
* **Launch count** for CLIP ViT-H/14 (686 tensors, 986 M parameters): 1 kernel + 1 memset per step (the
  previous chunked design needed one launch per L2-sized chunk: ~330 fp32 / ~165 bf16 at 24 MB).

bf16/fp16 tensors are loaded as 16-byte vectors (8 elements per thread with the default ``block`` 1024 and 4
warps, when every base and offset is 16-element aligned), upcast to fp32 in registers, and rounded once
when stored. The kernel also runs under ``TRITON_INTERPRET=1`` on CPU tensors (the tests do, at tiny sizes).
"""

from __future__ import annotations

import contextlib

import numpy as np
import torch
from torch import Tensor

from lowbit.optim._common import _increment, _single_tensor_stable_adamw, folded_betas
from lowbit.optim._fused_plan import (
    _OK_DTYPES,
    _PREPARED,
    FusedConfig,
    _Bucket,
    _offsets,
    _plan_for,
    _prepare,
    config,
    config_key,
)

try:
    import triton
    import triton.language as tl

    _HAVE_TRITON = True
except ImportError:  # pragma: no cover - triton is a linux dependency
    _HAVE_TRITON = False

__all__ = [
    "FusedConfig",
    "check_fused_device",
    "config",
    "fused_available",
    "fused_stable_adamw",
    "interpreter_mode",
]


def interpreter_mode() -> bool:
    """True when Triton kernels run in the CPU interpreter (TRITON_INTERPRET=1 at import)."""
    if not _HAVE_TRITON:
        return False
    return type(_stable_adamw_kernel).__name__ == "InterpretedFunction"


def fused_available(tensors: list[Tensor]) -> bool:
    """Whether the fused path is the right default for these tensors: Triton and all on CUDA, fused dtypes."""
    if not _HAVE_TRITON or not tensors or interpreter_mode():
        return False
    return all(t.device.type == "cuda" and t.dtype in _OK_DTYPES for t in tensors)


def check_fused_device(p: Tensor) -> None:
    """Raise if ``fused=True`` cannot run on this parameter (called at state initialisation)."""
    if not _HAVE_TRITON:
        raise RuntimeError("fused=True needs Triton, which is not installed")
    if p.dtype not in (torch.float32, torch.bfloat16, torch.float16):
        raise TypeError(f"fused=True supports float32/bfloat16/float16 parameters, got {p.dtype}")
    if p.device.type == "cuda":
        return
    if p.device.type == "cpu" and interpreter_mode():
        return
    raise ValueError(
        f"fused=True needs CUDA tensors (CPU tensors only with TRITON_INTERPRET=1), got device {p.device}"
    )


if _HAVE_TRITON:

    @triton.jit
    def _phase1_tile(
        g_base,
        v_base,
        r_base,
        offs,
        ttab,
        partials,
        cnt,
        t,
        start,
        b2,
        w2,
        eps_sq,
        BLOCK: tl.constexpr,
        TILE1: tl.constexpr,
        RBLOCK: tl.constexpr,
        ALIGNED: tl.constexpr,
    ):
        """Partial Σ g² / max(v_new, ε²) over one tile; the tile that completes the tensor writes its RMS."""
        n = tl.load(ttab + 4 * t)
        k1 = tl.load(ttab + 4 * t + 1)
        pst = tl.load(ttab + 4 * t + 2)
        goff = tl.load(offs + 5 * t + 1)
        voff = tl.load(offs + 5 * t + 3)
        if ALIGNED:
            goff = tl.multiple_of(goff, 16)
            voff = tl.multiple_of(voff, 16)
        end = tl.minimum(n, start + TILE1)
        acc = tl.zeros([BLOCK], dtype=tl.float32)
        lane = tl.arange(0, BLOCK).to(tl.int64)
        for it in range(tl.cdiv(end - start, BLOCK)):
            base = start + it * BLOCK
            idx = base + lane
            if base + BLOCK <= end:
                g = tl.load(g_base + goff + idx, eviction_policy="evict_last").to(tl.float32)
                v = tl.load(v_base + voff + idx, eviction_policy="evict_last").to(tl.float32)
            else:
                mask = idx < end
                g = tl.load(g_base + goff + idx, mask=mask, other=0.0, eviction_policy="evict_last")
                v = tl.load(v_base + voff + idx, mask=mask, other=0.0, eviction_policy="evict_last")
                g = g.to(tl.float32)
                v = v.to(tl.float32)
            gg = g * g
            vn = b2 * v + w2 * gg
            acc += tl.div_rn(gg, tl.maximum(vn, eps_sq))
        tl.store(partials + pst + start // TILE1, tl.sum(acc, axis=0))
        tl.debug_barrier()
        done = tl.atomic_add(cnt + t, 1, sem="acq_rel")  # publishes the partial
        if done == k1 - 1:  # the last tile of this tensor: all partials are in
            tl.debug_barrier()
            racc = tl.zeros([RBLOCK], dtype=tl.float32)
            rl = tl.arange(0, RBLOCK).to(tl.int64)
            for j in range(0, k1, RBLOCK):
                ri = j + rl
                racc += tl.load(partials + pst + ri, mask=ri < k1, other=0.0, cache_modifier=".cg")
            rms = tl.sqrt_rn(tl.div_rn(tl.sum(racc, axis=0), n.to(tl.float32)))
            tl.store(r_base + tl.load(offs + 5 * t + 4), rms)
            tl.debug_barrier()
            tl.atomic_add(cnt + t, 1, sem="release")  # count k1 + 1: RMS is readable

    @triton.jit
    def _phase2_tile(
        p_base,
        g_base,
        m_base,
        v_base,
        r_base,
        offs,
        ttab,
        cnt,
        t,
        start,
        lr,
        wd,
        w1,
        b2,
        w2,
        eps,
        BLOCK: tl.constexpr,
        TILE2: tl.constexpr,
        CLIP: tl.constexpr,
        MAXIMIZE: tl.constexpr,
        ALIGNED: tl.constexpr,
    ):
        """Wait for the tensor's RMS, then the update of one tile."""
        n = tl.load(ttab + 4 * t)
        k1 = tl.load(ttab + 4 * t + 1)
        ready = tl.atomic_add(cnt + t, 0, sem="acquire")
        while ready <= k1:  # only tiles with smaller tickets are awaited: they are running or done
            ready = tl.atomic_add(cnt + t, 0, sem="acquire")
        tl.debug_barrier()
        rms = tl.load(r_base + tl.load(offs + 5 * t + 4), cache_modifier=".cg")
        if CLIP:
            eta = tl.div_rn(lr, tl.maximum(rms, 1.0))
        else:
            eta = lr
        decay = 1.0 - eta * wd

        poff = tl.load(offs + 5 * t + 0)
        goff = tl.load(offs + 5 * t + 1)
        moff = tl.load(offs + 5 * t + 2)
        voff = tl.load(offs + 5 * t + 3)
        if ALIGNED:
            poff = tl.multiple_of(poff, 16)
            goff = tl.multiple_of(goff, 16)
            moff = tl.multiple_of(moff, 16)
            voff = tl.multiple_of(voff, 16)
        end = tl.minimum(n, start + TILE2)
        lane = tl.arange(0, BLOCK).to(tl.int64)
        for it in range(tl.cdiv(end - start, BLOCK)):
            base = start + it * BLOCK
            idx = base + lane
            pp = p_base + poff + idx
            gp = g_base + goff + idx
            mp = m_base + moff + idx
            vp = v_base + voff + idx
            full = base + BLOCK <= end
            mask = idx < end
            if full:
                p = tl.load(pp, eviction_policy="evict_first").to(tl.float32)
                g = tl.load(gp, eviction_policy="evict_first").to(tl.float32)
                m = tl.load(mp, eviction_policy="evict_first").to(tl.float32)
                v = tl.load(vp, eviction_policy="evict_first").to(tl.float32)
            else:
                p = tl.load(pp, mask=mask, other=0.0).to(tl.float32)
                g = tl.load(gp, mask=mask, other=0.0).to(tl.float32)
                m = tl.load(mp, mask=mask, other=0.0).to(tl.float32)
                v = tl.load(vp, mask=mask, other=0.0).to(tl.float32)
            if MAXIMIZE:
                g = -g
            # torch.lerp's two-sided formula, as in the foreach path
            m = tl.where(w1 < 0.5, m + w1 * (g - m), g - (g - m) * (1.0 - w1))
            v = b2 * v + w2 * (g * g)
            p = p * decay - eta * tl.div_rn(m, tl.sqrt_rn(v) + eps)
            if full:
                tl.store(pp, p.to(pp.dtype.element_ty), eviction_policy="evict_first")
                tl.store(mp, m.to(mp.dtype.element_ty), eviction_policy="evict_first")
                tl.store(vp, v.to(vp.dtype.element_ty), eviction_policy="evict_first")
            else:
                tl.store(pp, p.to(pp.dtype.element_ty), mask=mask)
                tl.store(mp, m.to(mp.dtype.element_ty), mask=mask)
                tl.store(vp, v.to(vp.dtype.element_ty), mask=mask)

    @triton.jit(do_not_specialize=["n_items"])  # one compile for any parameter set
    def _stable_adamw_kernel(
        p_base,
        g_base,
        m_base,
        v_base,
        r_base,
        offs,
        ttab,
        items,
        partials,
        ws,
        n_items,
        lr,
        wd,
        w1,
        b2,
        w2,
        eps,
        eps_sq,
        BLOCK: tl.constexpr,
        P1_BLOCKS: tl.constexpr,
        P2_BLOCKS: tl.constexpr,
        RBLOCK: tl.constexpr,
        CLIP: tl.constexpr,
        MAXIMIZE: tl.constexpr,
        ALIGNED: tl.constexpr,
    ):
        """Persistent: take tickets from ws[0] until the item table is exhausted; ws[1 + t] counts tensor t."""
        cnt = ws + 1
        i = tl.atomic_add(ws, 1, sem="relaxed")
        while i < n_items:
            word = tl.load(items + 2 * i.to(tl.int64))
            start = tl.multiple_of(tl.load(items + 2 * i.to(tl.int64) + 1), BLOCK)  # tiles start at blocks
            t = word >> 1
            if (word & 1) == 0:
                _phase1_tile(
                    g_base, v_base, r_base, offs, ttab, partials, cnt, t, start, b2, w2, eps_sq,
                    BLOCK, BLOCK * P1_BLOCKS, RBLOCK, ALIGNED,
                )  # fmt: skip
            else:
                _phase2_tile(
                    p_base, g_base, m_base, v_base, r_base, offs, ttab, cnt, t, start, lr, wd, w1, b2, w2,
                    eps, BLOCK, BLOCK * P2_BLOCKS, CLIP, MAXIMIZE, ALIGNED,
                )  # fmt: skip
            i = tl.atomic_add(ws, 1, sem="relaxed")


def fused_stable_adamw(
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
    """Fused StableAdamW step. Tensors the kernel cannot address (non-contiguous, empty) use the reference.

    Host work per step is a few list passes (addresses, grad dtype/contiguity) when nothing moved; every
    tensor is re-checked whenever a parameter/state object or any address changes.
    """
    if not _HAVE_TRITON:
        raise RuntimeError("fused=True needs Triton, which is not installed")
    if not params:
        return
    roles = [params, grads, exp_avgs, exp_avg_sqs, rmss]
    cfg = config
    ids = (
        tuple(map(id, params)),
        tuple(map(id, exp_avgs)),
        tuple(map(id, exp_avg_sqs)),
        tuple(map(id, rmss)),
        config_key(cfg),
    )
    ptrs = np.array([[t.data_ptr() for t in role] for role in roles], dtype=np.int64)
    prep = _PREPARED.get(ids)
    if (
        prep is None
        or not np.array_equal(prep.ptrs[[0, 2, 3, 4]], ptrs[[0, 2, 3, 4]])
        or [g.dtype for g in grads] != prep.gdtypes
        or not all(map(Tensor.is_contiguous, grads))
    ):
        prep = _prepare(roles, ids, ptrs)
    steps = np.asarray(torch.stack(state_steps).tolist(), dtype=np.float64)
    if prep.fallback:
        _single_tensor_stable_adamw(
            *([x[i] for i in prep.fallback] for x in (*roles, state_steps)),
            beta1=beta1,
            beta2=beta2,
            lr=lr,
            weight_decay=weight_decay,
            eps=eps,
            clip_update=clip_update,
            maximize=maximize,
        )
    for b in prep.buckets:
        st = steps[b.idx]
        if (st == st[0]).all():
            parts = [(b, float(st[0]) + 1.0)]
        else:  # tensors at different steps (some skipped a step): one uncached sub-bucket per step value
            parts = []
            for value in np.unique(st):
                sel = b.idx[st == value]
                numels = [params[i].numel() for i in sel]
                sub = _Bucket(sel, b.device, b.foot, b.elsize, _plan_for(numels, b.foot, b.device))
                parts.append((sub, float(value) + 1.0))
        for bucket, step in parts:
            _offsets(bucket, ptrs)
            _launch_bucket(
                bucket, roles, folded_betas(beta1, beta2, step), lr, weight_decay, eps, clip_update, maximize
            )
        _increment([state_steps[i] for i in b.idx])


def _launch_bucket(
    b: _Bucket,
    roles: list[list[Tensor]],
    betas_hat: tuple[float, float],
    lr: float,
    weight_decay: float,
    eps: float,
    clip_update: bool,
    maximize: bool,
) -> None:
    """The one launch of a bucket (after zeroing its ticket and per-tensor counters)."""
    cfg = config
    plan = b.plan
    b1, b2 = betas_hat
    if b.partials is None or b.partials.numel() != max(plan.n_partials, 1):
        b.partials = torch.empty(max(plan.n_partials, 1), dtype=torch.float32, device=b.device)
        b.ws = torch.zeros(1 + plan.n_tensors, dtype=torch.int32, device=b.device)
    else:
        b.ws.zero_()
    bases = [roles[r][int(b.idx[k])] for r, k in enumerate(b.bases)]
    # Triton launches on the current device: make it the tensors' device (multi-GPU processes)
    with torch.cuda.device(b.device) if b.device.type == "cuda" else contextlib.nullcontext():
        _stable_adamw_kernel[(plan.grid,)](
            *bases,
            b.offs,
            plan.ttab,
            plan.items,
            b.partials,
            b.ws,
            plan.n_items,
            lr=float(lr),
            wd=float(weight_decay),
            w1=1.0 - b1,
            b2=b2,
            w2=1.0 - b2,
            eps=float(eps),
            eps_sq=float(eps) * float(eps),
            BLOCK=cfg.block,
            P1_BLOCKS=cfg.p1_blocks,
            P2_BLOCKS=cfg.p2_blocks,
            RBLOCK=cfg.rblock,
            CLIP=bool(clip_update),
            MAXIMIZE=bool(maximize),
            ALIGNED=b.aligned,
            num_warps=cfg.num_warps,
        )
