"""RMSMonitor: per-tensor RMS of the Adam update (SPEC §4), recorded on the device, read in batches.

For a parameter tensor with gradient g_t at step t (the step about to be taken),

    RMS_t = sqrt(mean(g_t² / max(v̂_t, ε²)))

where v̂_t is the *updated*, bias-corrected second moment of this step, i.e. what the optimizer is about
to use: for ``torch.optim.Adam``/``AdamW`` v̂_t = (β2 v_{t−1} + (1 − β2) g_t²) / (1 − β2^t) from
``exp_avg_sq``, ``step`` and the group's ``betas``/``eps``; for lowbit's StableAdamW (whose state holds the
bias-corrected moment) v̂_t = β̂2 v̂_{t−1} + (1 − β̂2) g_t². Before the first step v̂_1 = g_1². For Adam with
coupled weight decay the gradient is g + λθ, as Adam sees it. This equals the RMS StableAdamW computes
in its step (``optimizer.state[p]["rms"]``). ``amsgrad``'s running maximum is not used.

Call ``update(step)`` after ``backward()`` (after unscaling, with a GradScaler) and before
``optimizer.step()``; it reads g and v once more (about as many bytes as an AdamW step). With StableAdamW,
``update_from_optimizer(step)`` after ``optimizer.step()`` records the same values for free. Values stay on the device in a ring buffer of ``history`` steps; ``metrics()``,
``rows()``, ``history()`` and ``spikes()`` each do one device-to-host copy, so a trainer that logs every
N steps syncs once per N steps.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from lowbit.monitor.spikes import LossSpike, find_spikes

__all__ = ["RMSMonitor", "adam_rms"]


def _step_value(step: Any) -> float | Tensor:
    """Host float for CPU steps (free), the device tensor itself otherwise (no sync)."""
    if isinstance(step, Tensor):
        return float(step) if step.device.type == "cpu" else step
    return float(step)


def adam_rms(
    grads: Sequence[Tensor],
    exp_avg_sqs: Sequence[Tensor | None],
    steps: Sequence[float | Tensor],
    *,
    beta2: float,
    eps: float,
    bias_corrected: bool,
    chunk_elems: int = 1 << 26,
) -> Tensor:
    """RMS_t of each tensor (float32 vector on the grads' device), v̂_t as in the module docstring.

    ``steps`` are the optimizer's completed steps (t − 1); ``exp_avg_sqs[i]`` None means no state yet.
    Work is done with ``torch._foreach_*`` ops in chunks of ``chunk_elems`` elements to bound memory.
    """
    if not grads:
        raise ValueError("adam_rms needs at least one tensor")
    device = grads[0].device
    out: list[Tensor] = []
    i = 0
    while i < len(grads):
        j, size = i, 0
        while j < len(grads) and (j == i or size + grads[j].numel() <= chunk_elems):
            size += grads[j].numel()
            j += 1
        out.append(
            _rms_chunk(grads[i:j], exp_avg_sqs[i:j], steps[i:j], beta2=beta2, eps=eps, bc=bias_corrected)
        )
        i = j
    return torch.cat(out).to(device=device, dtype=torch.float32)


def _rms_chunk(
    grads: Sequence[Tensor],
    vs: Sequence[Tensor | None],
    steps: Sequence[float | Tensor],
    *,
    beta2: float,
    eps: float,
    bc: bool,
) -> Tensor:
    """u = a v + c g², RMS² = k · mean(g² / max(u, k ε²)) with (a, c, k) per the optimizer's convention."""
    device = grads[0].device
    cdt = torch.float64 if any(g.dtype == torch.float64 for g in grads) else torch.float32
    g = [t if t.dtype == cdt else t.to(cdt) for t in grads]
    host = all(not isinstance(s, Tensor) for s in steps)
    if host:
        coefs = [_coefs(float(s) + 1.0, beta2, bc, v is None) for s, v in zip(steps, vs)]
    else:  # device steps (e.g. torch AdamW fused/capturable): k as 0-dim device tensors
        coefs = [_coefs_dev(s, beta2, bc, v is None, device) for s, v in zip(steps, vs)]
    # u = a v + c g², with foreach ops per distinct (a, c) (one pair per optimizer group after step 1)
    u: list[Tensor] = [g[0]] * len(g)
    pairs: dict[tuple[float, float], list[int]] = {}
    for i, (a, c, _k) in enumerate(coefs):
        pairs.setdefault((0.0 if vs[i] is None else a, c), []).append(i)
    for (a, c), ids in pairs.items():
        gs = [g[i] for i in ids]
        if a == 0.0:
            us = torch._foreach_mul(gs, gs)
            if c != 1.0:
                torch._foreach_mul_(us, c)
        else:
            us = torch._foreach_mul([v if (v := vs[i]).dtype == cdt else v.to(cdt) for i in ids], a)
            torch._foreach_addcmul_(us, gs, gs, c)
        for i, t in zip(ids, us):
            u[i] = t
    if host:
        torch._foreach_clamp_min_(u, [k * eps * eps for _a, _c, k in coefs])
    else:
        floors = [torch.as_tensor(k * (eps * eps), dtype=cdt, device=device) for _a, _c, k in coefs]
        torch._foreach_maximum_(u, floors)
    torch._foreach_sqrt_(u)
    torch._foreach_div_(u, g)  # sqrt(max(u, kε²)) / g → inverted: g / sqrt(...), 0 where g = 0
    torch._foreach_reciprocal_(u)
    norms = torch.stack(torch._foreach_norm(u, 2)).to(cdt)
    inv_sqrt_n = _inv_sqrt_numel(tuple(t.numel() for t in g), cdt, device)
    ks = [c[2] for c in coefs]
    if host and all(k == ks[0] for k in ks):
        return norms * inv_sqrt_n * math.sqrt(ks[0])
    if host:
        k = torch.tensor(ks, dtype=cdt).to(device, non_blocking=True)
    else:
        k = torch.stack([torch.as_tensor(x, dtype=cdt, device=device) for x in ks])
    return norms * inv_sqrt_n * torch.sqrt(k)


_INV_SQRT_N: dict[tuple[Any, ...], Tensor] = {}


def _inv_sqrt_numel(numels: tuple[int, ...], dtype: torch.dtype, device: torch.device) -> Tensor:
    """1/sqrt(numel) per tensor, cached on the device (no host-to-device copy per step)."""
    key = (numels, dtype, device)
    t = _INV_SQRT_N.get(key)
    if t is None:
        if len(_INV_SQRT_N) >= 32:
            _INV_SQRT_N.pop(next(iter(_INV_SQRT_N)))
        t = torch.tensor([1.0 / math.sqrt(max(n, 1)) for n in numels], dtype=dtype).to(device)
        _INV_SQRT_N[key] = t
    return t


def _coefs(t: float, beta2: float, bias_corrected: bool, fresh: bool) -> tuple[float, float, float]:
    if fresh or t <= 1.0:
        return 0.0, 1.0, 1.0  # v̂_1 = g²
    if bias_corrected:
        b2 = beta2 * (1.0 - beta2 ** (t - 1.0)) / (1.0 - beta2**t)
        return b2, 1.0 - b2, 1.0
    return beta2, 1.0 - beta2, 1.0 - beta2**t


def _coefs_dev(step: Tensor, beta2: float, bias_corrected: bool, fresh: bool, device: torch.device):
    if fresh:
        return 0.0, 1.0, 1.0
    if bias_corrected:
        raise TypeError("bias-corrected (StableAdamW) state with a device-resident step is not supported")
    t = step.to(device=device, dtype=torch.float64) + 1.0
    return beta2, 1.0 - beta2, 1.0 - beta2**t


class RMSMonitor:
    """Records each parameter tensor's RMS_t every step (on the device) and finds loss spikes' precursors.

    Works with ``torch.optim.Adam``/``AdamW`` and ``lowbit.optim.StableAdamW`` (any optimizer whose groups
    have ``betas``/``eps`` and whose state has ``exp_avg_sq``/``step``). Column names come from
    ``model.named_parameters()`` (``param<i>`` for optimizer parameters the model does not name).

    Typical loop::

        loss = model(batch); loss.backward()
        monitor.record_loss(step, loss)      # no sync
        monitor.update(step)                 # no sync
        optimizer.step(); optimizer.zero_grad()
        if step % log_every == 0:
            logger.log(monitor.metrics())    # one device-to-host copy
    """

    def __init__(
        self,
        model: nn.Module | None,
        optimizer: torch.optim.Optimizer,
        *,
        history: int = 1024,
        chunk_elems: int = 1 << 26,
    ) -> None:
        if history < 1:
            raise ValueError(f"history must be >= 1, got {history}")
        for group in optimizer.param_groups:
            if "betas" not in group or "eps" not in group:
                raise TypeError(
                    f"RMSMonitor needs an Adam-family optimizer (groups with betas and eps), got {type(optimizer).__name__}"
                )
        self.optimizer = optimizer
        self.bias_corrected = bool(getattr(optimizer, "bias_corrected_moments", False))
        named = {id(p): n for n, p in model.named_parameters()} if model is not None else {}
        params = [p for g in optimizer.param_groups for p in g["params"]]
        order = {id(p): i for i, p in enumerate(params)}
        model_order = [id(p) for _, p in model.named_parameters()] if model is not None else []
        ids = [i for i in model_order if i in order]
        ids += [id(p) for p in params if id(p) not in set(ids)]
        self._params = {id(p): p for p in params}
        self._ids = list(dict.fromkeys(ids))
        self.names = [named.get(i, f"param{order[i]}") for i in self._ids]
        self._col = {i: c for c, i in enumerate(self._ids)}
        self.device = params[0].device if params else torch.device("cpu")
        self.capacity = history
        self.chunk_elems = chunk_elems
        n = len(self._ids)
        self._rms = torch.full((history, n), float("nan"), dtype=torch.float32, device=self.device)
        self._loss = torch.full((history,), float("nan"), dtype=torch.float32, device=self.device)
        self._rms_step = np.full(history, -1, dtype=np.int64)
        self._loss_step = np.full(history, -1, dtype=np.int64)
        self._last_step: int | None = None
        self._metrics_cursor: int | None = None
        self._rows_cursor: int | None = None
        self._index_cache: dict[tuple[int, ...], Tensor] = {}

    # ------------------------------------------------------------------ recording
    def update(self, step: int) -> None:
        """Compute RMS_t of every parameter with a gradient (others: NaN) and store it for ``step``."""
        step = int(step)
        buckets: dict[tuple[Any, ...], list[tuple[int, Tensor, Tensor | None, Any]]] = {}
        for group in self.optimizer.param_groups:
            beta2, eps = float(group["betas"][1]), float(group["eps"])
            coupled = (
                isinstance(self.optimizer, torch.optim.Adam)
                and not group.get("decoupled_weight_decay", isinstance(self.optimizer, torch.optim.AdamW))
                and group.get("weight_decay", 0.0) != 0.0
            )
            wd = float(group["weight_decay"]) if coupled else 0.0
            maximize = bool(group.get("maximize", False))
            for p in group["params"]:
                if p.grad is None or id(p) not in self._col:
                    continue
                g = p.grad
                if g.is_sparse:
                    raise TypeError("RMSMonitor does not support sparse gradients")
                if maximize and wd:
                    g = -g
                if wd:
                    g = g.add(p.detach(), alpha=wd)
                st = self.optimizer.state.get(p, {})
                v = st.get("exp_avg_sq")
                s = _step_value(st.get("step", 0.0)) if v is not None else 0.0
                key = (g.device, beta2, eps, isinstance(s, Tensor))
                buckets.setdefault(key, []).append((self._col[id(p)], g, v, s))
        row = torch.full((len(self._ids),), float("nan"), dtype=torch.float32, device=self.device)
        for (_dev, beta2, eps, _dev_step), items in buckets.items():
            cols = tuple(c for c, *_ in items)
            vals = adam_rms(
                [it[1] for it in items],
                [it[2] for it in items],
                [it[3] for it in items],
                beta2=beta2,
                eps=eps,
                bias_corrected=self.bias_corrected,
                chunk_elems=self.chunk_elems,
            )
            idx = self._index_cache.get(cols)
            if idx is None:
                idx = torch.tensor(cols, dtype=torch.long, device=self.device)
                self._index_cache[cols] = idx
            row.index_copy_(0, idx, vals.to(self.device))
        self._store(step, row)

    def _store(self, step: int, row: Tensor) -> None:
        step = int(step)
        slot = step % self.capacity
        self._rms[slot].copy_(row)
        self._rms_step[slot] = step
        self._last_step = step

    def update_from_optimizer(self, step: int) -> None:
        """StableAdamW only, called *after* ``optimizer.step()``: record the RMS its step computed.

        StableAdamW keeps RMS_t of its last step in ``state[p]["rms"]`` (same definition as ``update``), so
        this costs one small stack instead of another pass over gradients and second moments. Tensors
        without a gradient at this step are NaN.
        """
        if not self.bias_corrected:
            raise TypeError(f"update_from_optimizer needs StableAdamW, got {type(self.optimizer).__name__}")
        cols, vals = [], []
        for c, pid in enumerate(self._ids):
            p = self._params[pid]
            st = self.optimizer.state.get(p)
            if p.grad is not None and st and "rms" in st:
                cols.append(c)
                vals.append(st["rms"].to(self.device))
        row = torch.full((len(self._ids),), float("nan"), dtype=torch.float32, device=self.device)
        if cols:
            key = tuple(cols)
            idx = self._index_cache.get(key)
            if idx is None:
                idx = self._index_cache[key] = torch.tensor(key, dtype=torch.long, device=self.device)
            row.index_copy_(0, idx, torch.stack(vals).to(torch.float32))
        self._store(step, row)

    def record_loss(self, step: int, loss: Tensor | float) -> None:
        """Store the step's training loss (a tensor is copied on its device: no host sync)."""
        slot = int(step) % self.capacity
        if isinstance(loss, Tensor):
            self._loss[slot].copy_(loss.detach().reshape(()).to(torch.float32), non_blocking=True)
        else:
            self._loss[slot].fill_(float(loss))
        self._loss_step[slot] = int(step)

    # ------------------------------------------------------------------ reading (one D2H copy each)
    def _snapshot(self) -> tuple[np.ndarray, np.ndarray]:
        both = torch.cat([self._rms.reshape(-1), self._loss]).cpu().numpy()
        n = self._rms.numel()
        return both[:n].reshape(self._rms.shape), both[n:]

    def history(self) -> dict[str, Any]:
        """All recorded steps (ascending): ``steps``, ``loss`` [T], ``rms`` [T, P] (NaN = not recorded), ``names``."""
        rms, loss = self._snapshot()
        steps = sorted(
            {int(s) for s in self._rms_step if s >= 0} | {int(s) for s in self._loss_step if s >= 0}
        )
        out_rms = np.full((len(steps), len(self.names)), np.nan)
        out_loss = np.full(len(steps), np.nan)
        for k, s in enumerate(steps):
            slot = s % self.capacity
            if self._rms_step[slot] == s:
                out_rms[k] = rms[slot]
            if self._loss_step[slot] == s:
                out_loss[k] = loss[slot]
        return {
            "steps": np.asarray(steps, dtype=np.int64),
            "loss": out_loss,
            "rms": out_rms,
            "names": self.names,
        }

    def metrics(self) -> dict[str, float]:
        """Flat dict for the trainer's logger, from the latest ``update``:

        ``rms/<name>`` per tensor that had a gradient, ``rms_max`` and ``rms_mean`` over tensors,
        ``rms_max_interval``: the largest RMS of any tensor at any step since the previous ``metrics()``
        call (so spikes between two log lines are not lost).
        """
        if self._last_step is None:
            return {}
        last = self._last_step
        slot = last % self.capacity
        lo = self._metrics_cursor
        steps = [int(s) for s in self._rms_step if s >= 0 and (lo is None or s > lo) and s <= last]
        slots = torch.tensor([s % self.capacity for s in steps] or [slot], device=self.device)
        interval = torch.nan_to_num(self._rms.index_select(0, slots), nan=-math.inf).amax()
        host = torch.cat([self._rms[slot], interval.reshape(1)]).cpu().numpy()
        self._metrics_cursor = last
        row, imax = host[:-1], float(host[-1])
        out = {f"rms/{n}": float(x) for n, x in zip(self.names, row) if np.isfinite(x)}
        finite = row[np.isfinite(row)]
        if len(finite):
            out["rms_max"] = float(finite.max())
            out["rms_mean"] = float(finite.mean())
        if math.isfinite(imax):
            out["rms_max_interval"] = imax
        return out

    def rows(self) -> list[dict[str, float]]:
        """Per-step rows (``step``, ``loss``, ``rms/<name>``) recorded since the previous ``rows()`` call.

        Suits a trainer that writes every step to ``metrics.csv`` but syncs only when it calls this.
        """
        h = self.history()
        lo = self._rows_cursor
        out = []
        for k, s in enumerate(h["steps"]):
            if lo is not None and s <= lo:
                continue
            row: dict[str, float] = {"step": int(s)}
            if np.isfinite(h["loss"][k]):
                row["loss"] = float(h["loss"][k])
            for n, x in zip(self.names, h["rms"][k]):
                if np.isfinite(x):
                    row[f"rms/{n}"] = float(x)
            out.append(row)
        if len(h["steps"]):
            self._rows_cursor = int(h["steps"][-1])
        return out

    def spikes(
        self,
        *,
        window: int = 20,
        min_history: int = 8,
        z_threshold: float = 6.0,
        min_rise: float = 0.05,
        rms_threshold: float = 2.0,
        min_lag: int = 1,
        max_lag: int = 8,
    ) -> list[LossSpike]:
        """Loss spikes in the recorded history and the RMS spikes 1–8 steps before them.

        Detector and precursor rule: see :mod:`lowbit.monitor.spikes`.
        """
        h = self.history()
        has_loss = np.isfinite(h["loss"])
        has_rms = np.isfinite(h["rms"]).any(axis=1)
        return find_spikes(
            h["steps"][has_loss],
            h["loss"][has_loss],
            h["steps"][has_rms],
            h["rms"][has_rms],
            h["names"],
            window=window,
            min_history=min_history,
            z_threshold=z_threshold,
            min_rise=min_rise,
            rms_threshold=rms_threshold,
            min_lag=min_lag,
            max_lag=max_lag,
        )
