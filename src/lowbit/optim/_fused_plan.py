"""The fused StableAdamW's host side: its tuning knobs, the static work-item tables of a bucket (which tiles run in
which order: :func:`item_order` interleaves phase-1 and phase-2 tiles for L2 reuse, see :mod:`lowbit.optim._fused`),
and the bucketing of parameters with their device offset tables, cached while the tensors stay where they are.
Plain NumPy and torch: nothing here launches a kernel.
"""

from __future__ import annotations

import math
import weakref
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import Tensor


@dataclass
class FusedConfig:
    """Tuning knobs of the fused path (module-global ``config``; the benchmark sweeps ``l2_budget_bytes``)."""

    block: int = 1024  # elements per inner iteration (power of 2)
    num_warps: int = 4
    p1_blocks: int = 16  # a phase-1 tile is p1_blocks × block elements (one partial each)
    p2_blocks: int = 8  # a phase-2 tile is p2_blocks × block elements
    programs_per_sm: int = 8  # persistent grid = this × SMs
    l2_budget_bytes: int = 8 << 20  # g + v bytes read by phase 1 between a tensor's phase 1 and phase 2
    min_lag_grids: float = 0.5  # ... and at least this many grids' worth of phase-1 tiles (no waiting)
    reverse_phase2: bool = True  # phase-2 tiles of a tensor last-read-first
    rblock: int = 1024  # partials summed per inner iteration by the finishing phase-1 tile
    cache: dict[Any, Any] = field(default_factory=dict, repr=False)


config = FusedConfig()


@dataclass
class _Plan:
    """Static launch tables for one bucket shape (cached): they depend only on sizes and the config."""

    ttab: Tensor  # int64 [n, 4]: numel, phase-1 tiles, first partial, 0
    items: Tensor  # int64 [n_items, 2]: 2·tensor + (0 phase 1 | 1 phase 2), first element
    n_items: int
    n_partials: int
    grid: int
    n_tensors: int


def _num_sms(device: torch.device) -> int:
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).multi_processor_count
    return 1


def item_order(numels: list[int], foot: int, cfg: FusedConfig, grid: int) -> np.ndarray:
    """The work-item table: [n_items, 2] int64 rows (2·tensor + phase − 1, first element).

    Phase-1 tiles stream in tensor order; the phase-2 tiles of tensor t are inserted as soon as the stream is
    ``lag`` phase-1 tiles past t's last one (all of them at the end). Within a tensor, phase-2 tiles run
    last-read-first when ``reverse_phase2``.
    """
    t1 = cfg.block * cfg.p1_blocks
    t2 = cfg.block * cfg.p2_blocks
    n = np.asarray(numels, dtype=np.int64)
    k1 = -(-n // t1)
    k2 = -(-n // t2)
    tid1 = np.repeat(np.arange(len(n)), k1)
    first1 = np.concatenate(([0], np.cumsum(k1)[:-1]))
    start1 = (np.arange(k1.sum()) - np.repeat(first1, k1)) * t1
    n1 = int(k1.sum())
    lag = max(math.ceil(cfg.l2_budget_bytes / max(1, t1 * foot)), math.ceil(cfg.min_lag_grids * grid))
    ready = np.minimum(np.cumsum(k1) + lag, n1)  # phase-1 tiles emitted before tensor t's phase 2 may go
    tid2 = np.repeat(np.arange(len(n)), k2)
    first2 = np.concatenate(([0], np.cumsum(k2)[:-1]))
    j2 = np.arange(k2.sum()) - np.repeat(first2, k2)
    if cfg.reverse_phase2:
        j2 = np.repeat(k2, k2) - 1 - j2
    start2 = j2 * t2
    # merge: key 2·(tiles emitted before) + (0 for phase 2, 1 for phase 1); stable keeps each stream's order
    key = np.concatenate((2 * np.repeat(ready, k2), 2 * np.arange(n1) + 1))
    words = np.concatenate((2 * tid2 + 1, 2 * tid1))
    starts = np.concatenate((start2, start1))
    order = np.argsort(key, kind="stable")
    return np.stack((words[order], starts[order]), axis=1).astype(np.int64)


def _build_plan(numels: list[int], foot: int, device: torch.device, cfg: FusedConfig) -> _Plan:
    t1 = cfg.block * cfg.p1_blocks
    t2 = cfg.block * cfg.p2_blocks
    n = np.asarray(numels, dtype=np.int64)
    k1 = -(-n // t1)
    n_items = int(k1.sum() + (-(-n // t2)).sum())
    grid = max(1, min(cfg.programs_per_sm * _num_sms(device), n_items))
    ttab = np.zeros((len(n), 4), dtype=np.int64)
    ttab[:, 0] = n
    ttab[:, 1] = k1
    ttab[:, 2] = np.concatenate(([0], np.cumsum(k1)[:-1]))
    items = item_order(numels, foot, cfg, grid)
    return _Plan(
        ttab=torch.from_numpy(ttab).to(device),
        items=torch.from_numpy(np.ascontiguousarray(items)).to(device),
        n_items=n_items,
        n_partials=int(k1.sum()),
        grid=grid,
        n_tensors=len(n),
    )


def config_key(cfg: FusedConfig) -> tuple[Any, ...]:
    """The knobs a plan (and a prepared parameter list) depends on: a cache key part."""
    return (cfg.block, cfg.p1_blocks, cfg.p2_blocks, cfg.programs_per_sm, cfg.l2_budget_bytes, cfg.min_lag_grids,
            cfg.reverse_phase2)


def _plan_for(numels: list[int], foot: int, device: torch.device) -> _Plan:
    cfg = config
    key = (device, tuple(numels), foot, *config_key(cfg))
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
    if not (
        p.dtype in ok and g.dtype in ok and m.dtype in ok and v.dtype in ok and rms.dtype == torch.float32
    ):
        return False
    if not (p.is_contiguous() and g.is_contiguous() and m.is_contiguous() and v.is_contiguous()):
        return False
    dev = p.device
    if not (g.device == dev and m.device == dev and v.device == dev and rms.device == dev):
        return False
    return p.numel() > 0 and g.shape == p.shape and m.shape == p.shape and v.shape == p.shape


@dataclass
class _Bucket:
    """Tensors of one (device, dtypes): one launch. Holds the device offset table and its scratch buffers."""

    idx: np.ndarray
    device: torch.device
    foot: int  # bytes of g + v per element
    elsize: np.ndarray  # per role
    plan: _Plan
    ptrs: np.ndarray | None = None  # [5, len(idx)] snapshot the cached table was built from
    offs: Tensor | None = None
    bases: list[int] = field(default_factory=list)  # index (into idx) of each role's base tensor
    aligned: bool = False
    partials: Tensor | None = None  # float32 [n_partials], overwritten every step
    ws: Tensor | None = None  # int32 [1 + n]: ticket counter, per-tensor counters; zeroed every step


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
