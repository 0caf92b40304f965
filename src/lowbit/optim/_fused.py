"""Fused (Triton) StableAdamW step: two passes per tensor, arranged to re-read from L2.

Bytes per fp32 parameter: AdamW fused reads p, g, m, v and writes p, m, v (28 B). The per-tensor RMS needs
a full reduction over the *updated* second moment before any element of the tensor may be updated, so:

* phase 1 reads only g and v (8 B), forms v_new = β̂2 v + (1 − β̂2) g² on the fly and writes one partial sum
  of g² / max(v_new, ε²) per program (nothing else is written);
* phase 2 re-reduces its tensor's few partials (≤ ~1k floats, from L2), takes RMS and η, and does the full
  AdamW-style update (28 B).

Tensors are processed in *chunks* whose g + v footprint fits in ``l2_budget_bytes``: phase 1 of a chunk
runs just before its phase 2, and phase 2 walks the chunk in reverse order, so g and v are mostly still in
L2 (even for a tensor larger than the budget, the most recently read tail is). HBM traffic is then
≈ 28 B + (L2 miss fraction) × 8 B per parameter. To halve the number of launches, phase 2 of chunk k and
phase 1 of chunk k+1 share one launch (independent work; phase-2 programs are dispatched first).

All tensors of a bucket (same device, dtypes and step) are addressed as ``base + offset``: one base tensor
per role (the one with the lowest address) and a small int64 table of element offsets, rebuilt every step
(gradients may be re-allocated) and copied to the device once per bucket. No host sync happens.

The kernel also runs under ``TRITON_INTERPRET=1`` on CPU tensors (the tests do this at tiny sizes).
"""

from __future__ import annotations

import contextlib
import math
import weakref
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import Tensor

try:
    import triton
    import triton.language as tl

    _HAVE_TRITON = True
except ImportError:  # pragma: no cover - triton is a linux dependency
    _HAVE_TRITON = False

__all__ = ["FusedConfig", "check_fused_device", "config", "fused_stable_adamw", "interpreter_mode"]


@dataclass
class FusedConfig:
    """Tuning knobs of the fused path (module-global ``config``; the benchmark sweeps them)."""

    block: int = 1024  # elements per inner iteration (power of 2)
    num_warps: int = 4
    l2_budget_bytes: int = 24 << 20  # g + v bytes per chunk
    p1_programs_per_sm: int = 8  # phase-1 programs per chunk ≈ this × SMs (bounds the partials per tensor)
    p2_iters: int = 4  # phase-2 program = p2_iters × block elements
    reverse_phase2: bool = True
    merge_phases: bool = True  # phase 2 of chunk k and phase 1 of chunk k+1 in one launch
    rblock: int = 1024  # partials reduced per inner iteration in phase 2
    cache: dict[Any, Any] = field(default_factory=dict, repr=False)


config = FusedConfig()


def interpreter_mode() -> bool:
    """True when Triton kernels run in the CPU interpreter (TRITON_INTERPRET=1 at import)."""
    if not _HAVE_TRITON:
        return False
    return type(_stable_adamw_kernel).__name__ == "InterpretedFunction"


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
    def _phase1(
        g_base,
        v_base,
        offs,
        ttab,
        p1tab,
        partials,
        q,
        iters,
        b2,
        w2,
        eps_sq,
        BLOCK: tl.constexpr,
        ALIGNED: tl.constexpr,
    ):
        """Partial Σ g² / max(v_new, ε²) over ``iters`` blocks of one tensor → partials[q]."""
        ti = tl.load(p1tab + 2 * q)
        start = tl.multiple_of(tl.load(p1tab + 2 * q + 1), BLOCK)
        n = tl.load(ttab + 3 * ti)
        goff = tl.load(offs + 5 * ti + 1)
        voff = tl.load(offs + 5 * ti + 3)
        if ALIGNED:
            goff = tl.multiple_of(goff, 16)
            voff = tl.multiple_of(voff, 16)
        end = tl.minimum(n, start + iters * BLOCK)
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
                g = tl.load(g_base + goff + idx, mask=mask, other=0.0, eviction_policy="evict_last").to(
                    tl.float32
                )
                v = tl.load(v_base + voff + idx, mask=mask, other=0.0, eviction_policy="evict_last").to(
                    tl.float32
                )
            gg = g * g
            vn = b2 * v + w2 * gg
            acc += tl.div_rn(gg, tl.maximum(vn, eps_sq))
        tl.store(partials + q, tl.sum(acc, axis=0))

    @triton.jit
    def _phase2(
        p_base,
        g_base,
        m_base,
        v_base,
        r_base,
        offs,
        ttab,
        p2tab,
        partials,
        q,
        iters,
        lr,
        wd,
        w1,
        b2,
        w2,
        eps,
        BLOCK: tl.constexpr,
        RBLOCK: tl.constexpr,
        CLIP: tl.constexpr,
        MAXIMIZE: tl.constexpr,
        ALIGNED: tl.constexpr,
    ):
        """RMS of the tensor from its partials, then the update of ``iters`` blocks of it."""
        ti = tl.load(p2tab + 2 * q)
        start = tl.multiple_of(tl.load(p2tab + 2 * q + 1), BLOCK)
        n = tl.load(ttab + 3 * ti)
        ps = tl.load(ttab + 3 * ti + 1)
        pc = tl.load(ttab + 3 * ti + 2)
        racc = tl.zeros([RBLOCK], dtype=tl.float32)
        rl = tl.arange(0, RBLOCK).to(tl.int64)
        for j in range(0, pc, RBLOCK):
            ri = j + rl
            racc += tl.load(partials + ps + ri, mask=ri < pc, other=0.0)
        rms = tl.sqrt_rn(tl.div_rn(tl.sum(racc, axis=0), n.to(tl.float32)))
        if CLIP:
            eta = tl.div_rn(lr, tl.maximum(rms, 1.0))
        else:
            eta = lr
        roff = tl.load(offs + 5 * ti + 4)
        tl.store(r_base + roff, rms, mask=start == 0)
        decay = 1.0 - eta * wd

        poff = tl.load(offs + 5 * ti + 0)
        goff = tl.load(offs + 5 * ti + 1)
        moff = tl.load(offs + 5 * ti + 2)
        voff = tl.load(offs + 5 * ti + 3)
        if ALIGNED:
            poff = tl.multiple_of(poff, 16)
            goff = tl.multiple_of(goff, 16)
            moff = tl.multiple_of(moff, 16)
            voff = tl.multiple_of(voff, 16)
        end = tl.minimum(n, start + iters * BLOCK)
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
                tl.store(pp, p.to(pp.dtype.element_ty))
                tl.store(mp, m.to(mp.dtype.element_ty))
                tl.store(vp, v.to(vp.dtype.element_ty))
            else:
                tl.store(pp, p.to(pp.dtype.element_ty), mask=mask)
                tl.store(mp, m.to(mp.dtype.element_ty), mask=mask)
                tl.store(vp, v.to(vp.dtype.element_ty), mask=mask)

    @triton.jit(do_not_specialize=["n2", "q2_base", "iters2", "q1_base", "iters1"])  # one compile, any layout
    def _stable_adamw_kernel(
        p_base,
        g_base,
        m_base,
        v_base,
        r_base,
        offs,
        ttab,
        p1tab,
        p2tab,
        partials,
        n2,
        q2_base,
        iters2,
        q1_base,
        iters1,
        lr,
        wd,
        w1,
        b2,
        w2,
        eps,
        eps_sq,
        BLOCK: tl.constexpr,
        RBLOCK: tl.constexpr,
        CLIP: tl.constexpr,
        MAXIMIZE: tl.constexpr,
        ALIGNED: tl.constexpr,
        REVERSE: tl.constexpr,
    ):
        """Programs [0, n2): phase 2 of one chunk; programs [n2, grid): phase 1 of the next chunk."""
        pid = tl.program_id(0)
        if pid < n2:
            if REVERSE:
                q = q2_base + (n2 - 1 - pid)
            else:
                q = q2_base + pid
            _phase2(
                p_base, g_base, m_base, v_base, r_base, offs, ttab, p2tab, partials, q.to(tl.int64), iters2,
                lr, wd, w1, b2, w2, eps, BLOCK, RBLOCK, CLIP, MAXIMIZE, ALIGNED,
            )  # fmt: skip
        else:
            q = q1_base + (pid - n2)
            _phase1(
                g_base, v_base, offs, ttab, p1tab, partials, q.to(tl.int64), iters1, b2, w2, eps_sq, BLOCK,
                ALIGNED,
            )  # fmt: skip


@dataclass
class _Chunk:
    q1: int  # first phase-1 program (global in the bucket)
    n1: int
    iters1: int
    q2: int
    n2: int
    iters2: int


@dataclass
class _Plan:
    """Static launch tables for one bucket shape (cached): they depend only on sizes and the config."""

    ttab: Tensor  # int64 [n, 3]: numel, first partial, number of partials
    p1tab: Tensor  # int64 [n1, 2]: tensor index, start element
    p2tab: Tensor  # int64 [n2, 2]
    chunks: list[_Chunk]
    n_partials: int


def _num_sms(device: torch.device) -> int:
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).multi_processor_count
    return 4


def _build_plan(numels: list[int], foot: int, device: torch.device, cfg: FusedConfig) -> _Plan:
    """Split tensors into L2-sized chunks and lay out the phase-1/phase-2 program tables."""
    block = cfg.block
    groups: list[list[int]] = []
    cur: list[int] = []
    cur_bytes = 0
    small = cfg.l2_budget_bytes // 16  # biases and norms join the current chunk whatever its size
    for i, n in enumerate(numels):
        b = n * foot
        if cur and cur_bytes + b > cfg.l2_budget_bytes and b > small:
            groups.append(cur)
            cur, cur_bytes = [], 0
        cur.append(i)
        cur_bytes += b
    if cur:
        groups.append(cur)

    target1 = max(1, cfg.p1_programs_per_sm * _num_sms(device))
    ttab = torch.zeros(len(numels), 3, dtype=torch.int64)
    p1: list[Tensor] = []
    p2: list[Tensor] = []
    chunks: list[_Chunk] = []
    q1 = q2 = 0
    for grp in groups:
        total = sum(numels[i] for i in grp)
        iters1 = max(1, math.ceil(total / (block * target1)))
        span1 = block * iters1
        iters2 = max(1, cfg.p2_iters)
        span2 = block * iters2
        c = _Chunk(q1=q1, n1=0, iters1=iters1, q2=q2, n2=0, iters2=iters2)
        for i in grp:
            n = numels[i]
            k1 = math.ceil(n / span1)
            k2 = math.ceil(n / span2)
            ttab[i] = torch.tensor([n, q1, k1])
            p1.append(torch.stack([torch.full((k1,), i), torch.arange(k1) * span1], 1))
            p2.append(torch.stack([torch.full((k2,), i), torch.arange(k2) * span2], 1))
            q1 += k1
            q2 += k2
            c.n1 += k1
            c.n2 += k2
        chunks.append(c)
    return _Plan(
        ttab=ttab.to(device),
        p1tab=torch.cat(p1).to(torch.int64).contiguous().to(device),
        p2tab=torch.cat(p2).to(torch.int64).contiguous().to(device),
        chunks=chunks,
        n_partials=q1,
    )


def _plan_for(numels: list[int], foot: int, device: torch.device) -> _Plan:
    cfg = config
    key = (
        device,
        tuple(numels),
        foot,
        cfg.block,
        cfg.l2_budget_bytes,
        cfg.p1_programs_per_sm,
        cfg.p2_iters,
    )
    plan = cfg.cache.get(key)
    if plan is None:
        if len(cfg.cache) >= 16:
            cfg.cache.pop(next(iter(cfg.cache)))
        plan = _build_plan(numels, foot, device, cfg)
        cfg.cache[key] = plan
    return plan


_OK_DTYPES = frozenset((torch.float32, torch.bfloat16, torch.float16))


def _eligible(p: Tensor, g: Tensor, m: Tensor, v: Tensor, rms: Tensor) -> bool:
    """Whether the kernel can address this tensor (else it takes the reference path)."""
    ok = _OK_DTYPES
    if not (p.dtype in ok and g.dtype in ok and m.dtype in ok and v.dtype in ok and rms.dtype == torch.float32):
        return False
    if not (p.is_contiguous() and g.is_contiguous() and m.is_contiguous() and v.is_contiguous()):
        return False
    dev = p.device
    if not (g.device == dev and m.device == dev and v.device == dev and rms.device == dev):
        return False
    return p.numel() > 0 and g.shape == p.shape and m.shape == p.shape and v.shape == p.shape


@dataclass
class _Bucket:
    """Tensors of one (device, dtypes): one set of launches. ``offs`` caches the device offset table."""

    idx: np.ndarray
    device: torch.device
    foot: int  # bytes of g + v per element
    elsize: np.ndarray  # per role
    plan: _Plan
    ptrs: np.ndarray | None = None  # [5, len(idx)] snapshot the cached table was built from
    offs: Tensor | None = None
    bases: list[int] = field(default_factory=list)  # index (into idx) of each role's base tensor
    aligned: bool = False


@dataclass
class _Prepared:
    """Per parameter list: bucket membership and eligibility, valid while the tensors stay where they are."""

    ids: tuple[tuple[int, ...], ...]
    ptrs: np.ndarray  # [5, n] addresses of p, g, m, v, rms when prepared
    gdtypes: list[torch.dtype]
    buckets: list[_Bucket]
    fallback: list[int]


_PREPARED: dict[tuple[tuple[int, ...], ...], _Prepared] = {}


def _prepare(roles: list[list[Tensor]], ids: tuple[tuple[int, ...], ...], ptrs: np.ndarray) -> _Prepared:
    """Check every tensor once and bucket them; cached until a tensor object or address changes."""
    params, grads = roles[0], roles[1]
    groups: dict[tuple[Any, ...], list[int]] = {}
    fallback: list[int] = []
    for i, (p, g, m, v, r) in enumerate(zip(*roles)):
        if _eligible(p, g, m, v, r):
            groups.setdefault((p.device, p.dtype, g.dtype, m.dtype, v.dtype), []).append(i)
        else:
            fallback.append(i)
    buckets = []
    for (device, pdt, gdt, mdt, vdt), idx in groups.items():
        sizes = [torch.empty((), dtype=d).element_size() for d in (pdt, gdt, mdt, vdt, torch.float32)]
        foot = sizes[1] + sizes[3]
        numels = [params[i].numel() for i in idx]
        buckets.append(
            _Bucket(
                idx=np.asarray(idx, dtype=np.int64),
                device=device,
                foot=foot,
                elsize=np.asarray(sizes, dtype=np.int64),
                plan=_plan_for(numels, foot, device),
            )
        )
    prep = _Prepared(ids=ids, ptrs=ptrs, gdtypes=[g.dtype for g in grads], buckets=buckets, fallback=fallback)
    if len(_PREPARED) >= 8:
        _PREPARED.pop(next(iter(_PREPARED)))
    _PREPARED[ids] = prep
    # forget the entry when its tensors die, so recycled object ids can never match a stale entry
    for role in (roles[0], roles[2], roles[3], roles[4]):
        weakref.finalize(role[0], _PREPARED.pop, ids, None)
    return prep


def _offsets(b: _Bucket, ptrs: np.ndarray) -> None:
    """(Re)build the bucket's device table of element offsets from each role's lowest address, if stale.

    The kernel is promised 16-element alignment (vectorised accesses) only when every p/g/m/v offset and
    base is a multiple of 16 elements / 16 bytes.
    """
    sub = ptrs[:, b.idx]
    if b.ptrs is not None and np.array_equal(sub, b.ptrs):
        return
    lo = sub.argmin(axis=1)
    base_ptr = sub[np.arange(5), lo]
    offs = (sub - base_ptr[:, None]) // b.elsize[:, None]
    b.aligned = bool(not (base_ptr[:4] % 16).any() and not (offs[:4] % 16).any())
    b.bases = [int(k) for k in lo]
    b.offs = torch.from_numpy(np.ascontiguousarray(offs.T)).to(b.device, non_blocking=True)
    b.ptrs = sub


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
    from lowbit.optim._stable_adamw import _increment, _single_tensor_stable_adamw, folded_betas

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
        (cfg.block, cfg.l2_budget_bytes, cfg.p1_programs_per_sm, cfg.p2_iters),
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
    """All launches of one bucket: P1(c0) | P2(c0)+P1(c1) | ... | P2(c_last) (or unmerged pairs)."""
    cfg = config
    plan = b.plan
    b1, b2 = betas_hat
    bases = [roles[r][int(b.idx[k])] for r, k in enumerate(b.bases)]
    partials = torch.empty(max(plan.n_partials, 1), dtype=torch.float32, device=b.device)
    common = (*bases, b.offs, plan.ttab, plan.p1tab, plan.p2tab, partials)
    scalars = dict(
        lr=float(lr),
        wd=float(weight_decay),
        w1=1.0 - b1,
        b2=b2,
        w2=1.0 - b2,
        eps=float(eps),
        eps_sq=float(eps) * float(eps),
    )
    consts = dict(
        BLOCK=cfg.block,
        RBLOCK=cfg.rblock,
        CLIP=bool(clip_update),
        MAXIMIZE=bool(maximize),
        ALIGNED=b.aligned,
        REVERSE=cfg.reverse_phase2,
        num_warps=cfg.num_warps,
    )

    def launch(c2: _Chunk | None, c1: _Chunk | None) -> None:
        n2 = c2.n2 if c2 else 0
        n1 = c1.n1 if c1 else 0
        if n1 + n2 == 0:
            return
        _stable_adamw_kernel[(n2 + n1,)](
            *common,
            n2,
            c2.q2 if c2 else 0,
            c2.iters2 if c2 else 1,
            c1.q1 if c1 else 0,
            c1.iters1 if c1 else 1,
            **scalars,
            **consts,
        )

    chunks = plan.chunks
    # Triton launches on the current device: make it the tensors' device (multi-GPU processes)
    with torch.cuda.device(b.device) if b.device.type == "cuda" else contextlib.nullcontext():
        if cfg.merge_phases:
            launch(None, chunks[0])
            for k in range(1, len(chunks)):
                launch(chunks[k - 1], chunks[k])
            launch(chunks[-1], None)
        else:
            for c in chunks:
                launch(None, c)
                launch(c, None)
