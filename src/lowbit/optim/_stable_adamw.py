"""StableAdamW: AdamW with per-tensor update clipping (SPEC §5; Wortsman et al. 2023, arXiv 2304.13013).

Per step ``t`` and parameter tensor θ with gradient g (all arithmetic in float32, float64 for float64 params):

    β̂1 = β1 (1 − β1^(t−1)) / (1 − β1^t)          β̂2 = β2 (1 − β2^(t−1)) / (1 − β2^t)
    m  = β̂1 m + (1 − β̂1) g                        v  = β̂2 v + (1 − β̂2) g²
    RMS = sqrt(mean(g² / max(v, ε²)))              # per tensor, from the *updated* v
    η  = lr / max(1, RMS)                          # update clipping (η = lr when clip_update=False)
    θ  = θ − η λ θ − η m / (sqrt(v) + ε)

Folding the bias correction into β̂ makes the stored moments the bias-corrected ones: by induction
``m = m_AdamW / (1 − β1^t)`` and ``v = v_AdamW / (1 − β2^t)`` (since 1 − β̂ = (1 − β) / (1 − β^t)). The update
``m / (sqrt(v) + ε)`` is therefore *exactly* AdamW's ``m̂ / (sqrt(v̂) + ε)``, ε outside the square root as in
``torch.optim.AdamW``; with ``clip_update=False`` the two optimizers follow the same trajectory up to
floating-point rounding (the tests check 1e-11 in float64 over 150 steps). Only the state differs: ``exp_avg`` and
``exp_avg_sq`` here hold m̂ and v̂, not AdamW's raw m and v, so the two state_dicts are not interchangeable.

Three implementations of the one algorithm, chosen like torch's (``fused``/``foreach`` left at None):

* ``fused=True`` — **the default on CUDA** when Triton is installed and every tensor of the group is a CUDA
  fp32/bf16/fp16 tensor: Triton, one persistent launch per step whose second phase re-reads g and v from
  L2 (``lowbit.optim._fused``, which documents the bytes per parameter). CPU tensors only under
  ``TRITON_INTERPRET=1`` (tests). Tensors it cannot address (non-contiguous) take the reference.
* ``foreach=True`` — the default otherwise (CPU, no Triton, fp64): multi-tensor. On CPU tensors (p, g, m, v
  of one dtype) the RMS is reduced in cache-sized slices and the update is done by torch's fused CPU AdamW
  kernel called with β̂1, β̂2, lr = η and unit bias correction (exactly the SPEC update); otherwise
  ``torch._foreach_*`` ops over whole lists (bf16/fp16 g, m, v copied once to fp32 working lists), with η
  applied as 0-dim device tensors so that a CUDA step never syncs the host (``lowbit.optim._foreach``).
* ``foreach=False``: the per-tensor reference, SPEC §5 written out literally.
* DTensor parameters (FSDP2's ``fully_shard``) always take ``lowbit.optim._sharded``: the RMS's partial sums
  of the local shards are all-reduced (one ``all_reduce`` per step and param group) so that RMS is over the
  **whole** tensor, then the foreach update runs on the local shards; ``state["rms"]`` holds the global RMS.

The arithmetic the paths share (β̂, the reference, the foreach moments and update) lives in the leaf module
``lowbit.optim._common``, which this module, ``_foreach``, ``_fused`` and ``_sharded`` import at the top.

All agree to float32 rounding (tests: float64 trajectories against an independent transcription of
SPEC §5 to 1e-10, fused kernel per step against float64). Arithmetic is fp32 (fp64 for fp64 tensors) in
every path; bf16/fp16 values are rounded once when stored, with no stochastic rounding: with bf16
parameters, updates smaller than half a bf16 ulp are lost, as with torch's AdamW.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from itertools import chain
from typing import Any, ClassVar

import torch
from torch import Tensor
from torch.optim.optimizer import Optimizer, ParamsT

from lowbit.optim._common import _single_tensor_stable_adamw, folded_betas, is_dtensor
from lowbit.optim._foreach import _multi_tensor_stable_adamw
from lowbit.optim._fused import check_fused_device, fused_available, fused_stable_adamw
from lowbit.optim._sharded import sharded_stable_adamw

__all__ = ["StableAdamW", "folded_betas", "stable_adamw"]

_STATE_DTYPES = {
    "float32": torch.float32,
    "float64": torch.float64,
    "bfloat16": torch.bfloat16,
    "float16": torch.float16,
}
_FUSED_DTYPES = (torch.float32, torch.bfloat16, torch.float16)


def _dtype_name(dtype: torch.dtype | str | None) -> str | None:
    if dtype is None:
        return None
    for name, dt in _STATE_DTYPES.items():
        if dtype in (dt, name):
            return name
    raise TypeError(f"state_dtype must be one of {sorted(_STATE_DTYPES)} or None, got {dtype!r}")


def _is_number(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool)


def _check_hyper(lr: Any, betas: Any, eps: Any, weight_decay: Any) -> None:
    """Raise ValueError/TypeError naming the first bad hyper-parameter."""
    if not _is_number(lr):
        raise TypeError(f"lr must be a Python number, got {type(lr).__name__}")
    if not lr >= 0.0 or math.isinf(lr):
        raise ValueError(f"Invalid learning rate: {lr} (must be finite and >= 0)")
    if not isinstance(betas, (tuple, list)) or len(betas) != 2:
        raise ValueError(f"betas must be a pair (beta1, beta2), got {betas!r}")
    for i, b in enumerate(betas):
        if not _is_number(b):
            raise TypeError(f"betas[{i}] must be a Python number, got {type(b).__name__}")
        if not 0.0 <= b < 1.0:
            raise ValueError(f"Invalid beta parameter at index {i}: {b} (must be in [0, 1))")
    if not _is_number(eps):
        raise TypeError(f"eps must be a Python number, got {type(eps).__name__}")
    if not eps > 0.0 or math.isinf(eps):
        raise ValueError(f"Invalid epsilon value: {eps} (must be finite and > 0)")
    if not _is_number(weight_decay):
        raise TypeError(f"weight_decay must be a Python number, got {type(weight_decay).__name__}")
    if not weight_decay >= 0.0 or math.isinf(weight_decay):
        raise ValueError(f"Invalid weight_decay value: {weight_decay} (must be finite and >= 0)")


_REAL_FLOATS = frozenset((torch.float64, torch.float32, torch.bfloat16, torch.float16))


def _reject_grad(g: Tensor) -> None:
    """Raise the error naming why this gradient cannot be used."""
    if g.layout is not torch.strided:
        raise TypeError(f"StableAdamW does not support sparse gradients (got layout {g.layout})")
    if torch.is_complex(g):
        raise TypeError(f"StableAdamW does not support complex gradients (got {g.dtype})")
    raise TypeError(f"StableAdamW needs floating-point gradients, got {g.dtype}")


class StableAdamW(Optimizer):
    """AdamW with per-tensor update clipping (SPEC §5), replacing gradient-norm clipping.

    Args:
        params: iterable of parameters or param-group dicts.
        lr: learning rate (Python number; LR schedulers work as usual).
        betas: (β1, β2), each in [0, 1).
        eps: ε > 0, both the denominator term and the floor ε² on v in the RMS.
        weight_decay: decoupled weight decay λ, scaled by the clipped step η like the update.
        clip_update: divide the step by max(1, RMS). False gives torch.optim.AdamW (RMS still recorded).
        foreach: use the ``torch._foreach_*`` implementation (False: the per-tensor reference).
        fused: use the Triton implementation (CUDA tensors; CPU tensors only under TRITON_INTERPRET=1).
            With both left at None, a group runs fused when Triton is installed and all its tensors are
            CUDA fp32/bf16/fp16 tensors (like torch's choice of fused/foreach), else foreach.
        maximize: ascend instead of descend (gradient negated; RMS unaffected).
        state_dtype: dtype of ``exp_avg``/``exp_avg_sq``; None = the parameter's dtype, as torch does. Use
            ``torch.float32`` for bf16/fp16 parameters to keep fp32 moments. Arithmetic is always fp32
            (fp64 for fp64 tensors); only the stored result is rounded.

    State per parameter: ``step`` (0-dim float32 CPU tensor, like torch's AdamW), ``exp_avg`` = m̂,
    ``exp_avg_sq`` = v̂ (bias-corrected, see module doc), ``rms`` (0-dim float32 tensor on the parameter's
    device: the last step's RMS, written without a host sync).

    Not supported (rejected): sparse or complex gradients, ``capturable``, ``differentiable``, AMP
    ``grad_scale``/``found_inf`` (unscale gradients before ``step``), Tensor lr/betas.
    """

    #: ``exp_avg``/``exp_avg_sq`` hold bias-corrected moments (read by lowbit.monitor.RMSMonitor).
    bias_corrected_moments: ClassVar[bool] = True

    def __init__(
        self,
        params: ParamsT,
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.99),
        eps: float = 1e-6,
        weight_decay: float = 0.0,
        clip_update: bool = True,
        foreach: bool | None = None,
        fused: bool | None = None,
        *,
        maximize: bool = False,
        state_dtype: torch.dtype | str | None = None,
    ) -> None:
        _check_hyper(lr, betas, eps, weight_decay)
        if foreach and fused:
            raise ValueError("`fused` and `foreach` cannot both be True")
        defaults = {
            "lr": lr,
            "betas": tuple(float(b) for b in betas),
            "eps": float(eps),
            "weight_decay": float(weight_decay),
            "clip_update": bool(clip_update),
            "foreach": foreach,
            "fused": fused,
            "maximize": bool(maximize),
            "state_dtype": _dtype_name(state_dtype),
        }
        super().__init__(params, defaults)

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        """Add a group; its hyper-parameters and parameters are validated (before it is added)."""
        merged = {**self.defaults, **{k: v for k, v in param_group.items() if k != "params"}}
        _check_hyper(merged["lr"], merged["betas"], merged["eps"], merged["weight_decay"])
        _dtype_name(merged["state_dtype"])
        if merged["foreach"] and merged["fused"]:
            raise ValueError("`fused` and `foreach` cannot both be True")
        super().add_param_group(param_group)
        group = self.param_groups[-1]
        for p in group["params"]:
            problem = None
            if not (p.is_floating_point() and not torch.is_complex(p)):
                problem = f"StableAdamW needs real floating-point parameters, got {p.dtype}"
            elif group["fused"] and p.dtype not in _FUSED_DTYPES:
                problem = f"fused=True supports {_FUSED_DTYPES} parameters, got {p.dtype}"
            if problem:
                self.param_groups.pop()
                raise TypeError(problem)
        group["betas"] = tuple(float(b) for b in group["betas"])
        group["state_dtype"] = _dtype_name(group["state_dtype"])

    def __setstate__(self, state: dict[str, Any]) -> None:
        super().__setstate__(state)
        for group in self.param_groups:
            group.setdefault("clip_update", True)
            group.setdefault("foreach", None)
            group.setdefault("fused", None)
            group.setdefault("maximize", False)
            group.setdefault("state_dtype", None)

    def _state_dtype(self, group: dict[str, Any], p: Tensor) -> torch.dtype:
        name = group.get("state_dtype")
        return p.dtype if name is None else _STATE_DTYPES[name]

    def _init_group(self, group: dict[str, Any]) -> tuple[list[Tensor], ...]:
        params, grads, exp_avgs, exp_avg_sqs, rmss, steps = [], [], [], [], [], []
        for p in group["params"]:
            if p.grad is None:
                continue
            g = p.grad
            if g.layout is not torch.strided or g.dtype not in _REAL_FLOATS:
                _reject_grad(g)
            state = self.state[p]
            if len(state) == 0:
                if group["fused"] and not is_dtensor(p):
                    check_fused_device(p)
                sdt = self._state_dtype(group, p)
                state["step"] = torch.tensor(0.0, dtype=torch.float32)
                state["exp_avg"] = torch.zeros_like(p, dtype=sdt, memory_format=torch.preserve_format)
                state["exp_avg_sq"] = torch.zeros_like(p, dtype=sdt, memory_format=torch.preserve_format)
                state["rms"] = torch.zeros((), dtype=torch.float32, device=p.device)
            params.append(p)
            grads.append(g)
            exp_avgs.append(state["exp_avg"])
            exp_avg_sqs.append(state["exp_avg_sq"])
            rmss.append(state["rms"])
            steps.append(state["step"])
        return params, grads, exp_avgs, exp_avg_sqs, rmss, steps

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:  # type: ignore[override]
        """One optimisation step over every parameter that has a gradient."""
        if getattr(self, "grad_scale", None) is not None or getattr(self, "found_inf", None) is not None:
            raise RuntimeError("StableAdamW does not take grad_scale/found_inf: unscale gradients first")
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            tensors = self._init_group(group)
            if not tensors[0]:
                continue
            beta1, beta2 = group["betas"]
            sharded = [i for i, p in enumerate(tensors[0]) if is_dtensor(p)]
            if sharded:  # FSDP2: RMS over whole tensors (one all_reduce), update on the local shards
                plain = [i for i in range(len(tensors[0])) if i not in set(sharded)]
                sharded_stable_adamw(
                    *([t[i] for i in sharded] for t in tensors),
                    beta1=beta1,
                    beta2=beta2,
                    lr=group["lr"],
                    weight_decay=group["weight_decay"],
                    eps=group["eps"],
                    clip_update=group["clip_update"],
                    maximize=group["maximize"],
                )
                tensors = tuple([t[i] for i in plain] for t in tensors)
                if not tensors[0]:
                    continue
            stable_adamw(
                *tensors,
                beta1=beta1,
                beta2=beta2,
                lr=group["lr"],
                weight_decay=group["weight_decay"],
                eps=group["eps"],
                clip_update=group["clip_update"],
                maximize=group["maximize"],
                foreach=group["foreach"],
                fused=group["fused"],
            )
        return loss

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Load like torch, but keep ``step`` on the CPU and the moments in the group's ``state_dtype``.

        torch's loader casts every floating state tensor to the parameter's dtype, which would round fp32
        moments of bf16 parameters; the saved tensors are re-read here at full precision.
        """
        saved_state = dict(state_dict["state"])
        saved_groups = state_dict["param_groups"]
        super().load_state_dict(state_dict)
        old_ids = chain.from_iterable(g["params"] for g in saved_groups)
        owners = [(p, g) for g in self.param_groups for p in g["params"]]
        for old_id, (p, group) in zip(old_ids, owners):
            if old_id not in saved_state:
                continue
            saved, state = saved_state[old_id], self.state[p]
            sdt = self._state_dtype(group, p)
            state["step"] = torch.tensor(float(saved["step"]), dtype=torch.float32)
            for key in ("exp_avg", "exp_avg_sq"):
                state[key] = saved[key].detach().to(device=p.device, dtype=sdt, copy=True)
            rms = saved.get("rms")
            state["rms"] = (
                torch.zeros((), dtype=torch.float32, device=p.device)
                if rms is None
                else rms.detach().to(device=p.device, dtype=torch.float32, copy=True).reshape(())
            )


# --------------------------------------------------------------------------------------------------------------
# functional API and the three implementations
# --------------------------------------------------------------------------------------------------------------


def stable_adamw(
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
    foreach: bool | None = None,
    fused: bool | None = None,
) -> None:
    """Functional StableAdamW step over lists of tensors (see :class:`StableAdamW`); increments the steps."""
    if fused and foreach:
        raise ValueError("`fused` and `foreach` cannot both be True")
    kwargs: dict[str, Any] = dict(
        beta1=beta1,
        beta2=beta2,
        lr=lr,
        weight_decay=weight_decay,
        eps=eps,
        clip_update=clip_update,
        maximize=maximize,
    )
    if fused is None and foreach is None:
        fused = _default_fused(params, grads, exp_avgs)
    if fused:
        fused_stable_adamw(params, grads, exp_avgs, exp_avg_sqs, rmss, state_steps, **kwargs)
    elif foreach is None or foreach:
        _multi_tensor_stable_adamw(params, grads, exp_avgs, exp_avg_sqs, rmss, state_steps, **kwargs)
    else:
        _single_tensor_stable_adamw(params, grads, exp_avgs, exp_avg_sqs, rmss, state_steps, **kwargs)


def _default_fused(params: list[Tensor], grads: list[Tensor], exp_avgs: list[Tensor]) -> bool:
    """The fused path is the default when every tensor is on CUDA in a fused dtype and Triton is there."""
    if not params or params[0].device.type != "cuda":
        return False
    return fused_available(params)  # grads/moments the kernel cannot take fall back per tensor
