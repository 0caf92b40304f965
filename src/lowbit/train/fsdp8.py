"""8-bit weight all-gather under FSDP2: each sharded ``LowbitLinear`` weight travels as the codes its forward
matmul uses (int8 tensor-wise for ``switchback``/``switchback-m``, e4m3 tensor-wise for ``fp8-switchback`` and
``fp8-tensorwise``) instead of 16-bit values: half the all-gather bytes of bf16 parameters (a quarter of fp32).

How (FSDP2's all-gather extension, as torchao's float8 all-gather):

* ``fsdp_pre_all_gather`` (on the rank's shard): cast the shard to the dtype the linear would quantize (the
  all-gather dtype, bf16 on the GPU), take its absmax, all-reduce MAX over the shards (so the scale is the whole
  weight's), quantize the shard with it → codes (padded like FSDP's shard) + scale as metadata;
* FSDP all-gathers the codes (1 byte per element);
* ``fsdp_post_all_gather`` wraps the gathered codes and the scale in a
  :class:`~lowbit.functional.qweight.QuantizedWeight`, which the module gets as its weight; ``linear`` uses the
  codes where it would have quantized W tensor-wise (forward, and the dgrad of these recipes, whose W operand is
  the same codes transposed). Their wgrad is 16-bit from X and dY (or quantized X and dY): it needs no W.

Numerics: the codes and scale equal ``quantize(W_gathered_16bit)`` bit for bit (absmax is a max, so any order
gives the same value; quantization is elementwise), hence the run is identical to the 16-bit gather
(``tests/train/test_fsdp8.py``: losses, gradients and parameters after optimizer steps, bit for bit).

Cost: :func:`precompute_scales` (the trainer calls it after every optimizer step) takes all weights' absmaxes
in one all-reduce, as torchao's ``precompute_float8_dynamic_scale_for_fsdp``, and quantizes all shards in a few
launches; the forward's and the backward's gathers then send those codes. A weight changed since (its version
counter moved) is quantized by its gather instead, after an all-reduce of its own, so stale codes are never sent.

Unlike torchao, the sharded parameter stays a plain tensor (its shard is what StableAdamW's fused kernels and DCP
checkpoints see): the two hooks are attributes of the local shard tensor, installed after ``fully_shard``. That
uses FSDP2's extension points as documented but attaches them after construction (``FSDPParam._init_extensions``
re-run), checked against torch 2.13. Recipes whose forward W is row-wise (``switchback-q``, ``llm-int8``,
``fp8-rowwise``) or block-wise keep the 16-bit gather.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.distributed as dist

from lowbit.functional.qweight import QuantizedWeight, quantize_with_amax
from lowbit.functional.recipe import Recipe, get_recipe
from lowbit.kernels import _reference as reference

__all__ = ["AllGatherCounter", "allgather_8bit_format", "count_allgather_bytes", "enable_8bit_allgather",
           "precompute_scales"]

_PRE, _POST = "fsdp_pre_all_gather", "fsdp_post_all_gather"


def allgather_8bit_format(recipe: str | Recipe) -> str | None:
    """The format a recipe's weight can be all-gathered in (``"int8"``/``"e4m3"``), or None (16-bit gather).

    Needs the forward's W tensor-wise and the dgrad's W the same (quantized the same way, or the backward would
    need the 16-bit W); the wgrad never reads W.
    """
    r = get_recipe(recipe)
    w = r.forward.right
    if w is None or w.scaling != "tensor" or r.dgrad.right != w:
        return None
    return w.format


def _fsdp_params(model: torch.nn.Module) -> Iterator[Any]:
    """Every ``FSDPParam`` of every ``fully_shard``-ed module under ``model``."""
    from torch.distributed.fsdp import FSDPModule

    for m in model.modules():
        if isinstance(m, FSDPModule):
            state = m._get_fsdp_state()  # type: ignore[attr-defined]
            for group in getattr(state, "_fsdp_param_groups", None) or [state._fsdp_param_group]:
                if group is not None:
                    yield from group.fsdp_params


def _gather_dtype(fp: Any) -> torch.dtype:
    """FSDP's 16-bit all-gather dtype of a parameter (its ``param_dtype``, set at lazy init, or the policy's)."""
    return fp.mp_policy.param_dtype or fp.sharded_param.dtype


def _abs_bits(amax: torch.Tensor) -> torch.Tensor:
    """float32 absmax (≥ 0 or NaN) → int32 bit patterns ordered like the values, NaN above Inf, so an integer
    MAX all-reduce is a NaN-propagating float max (as the Triton absmax kernel does with atomics)."""
    a = amax.float().reshape(-1)
    bits = a.view(torch.int32)
    return torch.where(torch.isnan(a), torch.full_like(bits, 0x7FC00000), bits)


@dataclass
class _Gather8:
    """The 8-bit all-gather of one sharded weight (the two hooks and the precomputed absmax)."""

    fsdp_param: Any
    fmt: str
    compute_dtype: torch.dtype | None  # None: FSDP's all-gather dtype (param_dtype, else the parameter's)
    amax: torch.Tensor | None = None  # the whole weight's absmax (float32) ...
    amax_key: tuple | None = None  # ... valid while the shard's (id, version, dtype) is this
    codes: torch.Tensor | None = None  # the shard's codes and the scale (from precompute_scales or a gather) ...
    scale: torch.Tensor | None = None
    codes_key: tuple | None = None  # ... valid while the shard's key is this
    gathers: int = field(default=0)  # pre-all-gathers run (tests)
    reduces: int = field(default=0)  # of which needed their own all-reduce
    quantized: int = field(default=0)  # of which quantized the shard themselves (no precomputed codes)

    @property
    def dtype(self) -> torch.dtype:
        return self.compute_dtype or _gather_dtype(self.fsdp_param)

    def shard(self) -> torch.Tensor:
        return self.fsdp_param._sharded_local_tensor

    def key(self) -> tuple:
        t = self.shard()
        return (id(t), t._version, self.dtype)

    def local_amax(self) -> torch.Tensor:
        x = self.shard().to(self.dtype)
        return x.float().abs().amax() if x.numel() else torch.zeros((), dtype=torch.float32, device=x.device)

    # FSDP2 calls these two with the signatures it checks (5 arguments; out= on later gathers).
    def pre_all_gather(self, mesh: Any, outer_size: Any, outer_stride: Any, module: Any, mp_policy: Any):
        self.gathers += 1
        key = self.key()
        if self.codes is not None and self.codes_key == key:  # precompute_scales (or the forward) quantized it
            codes, scale = self.codes, self.scale
        else:
            self.quantized += 1
            if self.amax is None or self.amax_key != key:
                self.reduces += 1
                bits = _abs_bits(self.local_amax())
                dist.all_reduce(bits, op=dist.ReduceOp.MAX, group=mesh.get_group())
                self.amax, self.amax_key = bits.view(torch.float32).reshape(()), key
            codes, scale = quantize_with_amax(self.shard().to(self.dtype), self.amax, self.fmt)
            # kept for the backward's re-gather of the same weights (FSDP reshards after the forward)
            self.codes, self.scale, self.codes_key = codes, scale, key
        padded = tuple(self.fsdp_param.padded_sharded_param_size)
        if tuple(codes.shape) != padded:  # FSDP pads the last ranks' shards to the first's size
            full = torch.zeros(padded, dtype=codes.dtype, device=codes.device)
            full[: codes.shape[0]] = codes
            codes = full
        return (codes,), (scale,)

    def post_all_gather(self, outputs: tuple[torch.Tensor, ...], metadata: Any, param_dtype: torch.dtype, *,
                        out: torch.Tensor | None = None):
        (codes,), (scale,) = outputs, metadata
        if out is not None:  # later gathers: the codes were gathered into the same storage; refresh the scale
            if not isinstance(out, QuantizedWeight):
                raise RuntimeError(f"8-bit all-gather: expected the unsharded weight to be a QuantizedWeight, got {type(out)}")
            out.scale = scale
            return None
        return QuantizedWeight(codes, scale, self.fmt, param_dtype, self.dtype), (codes,)

    def install(self) -> None:
        """(Re-)attach the hooks to the shard tensor (FSDP looks them up on it by name)."""
        t = self.shard()
        if getattr(t, _PRE, None) is not None:
            return

        def fsdp_pre_all_gather(mesh, outer_size, outer_stride, module, mp_policy):  # 5 parameters, as FSDP checks
            return self.pre_all_gather(mesh, outer_size, outer_stride, module, mp_policy)

        def fsdp_post_all_gather(outputs, metadata, param_dtype, *, out=None):
            return self.post_all_gather(outputs, metadata, param_dtype, out=out)

        setattr(t, _PRE, fsdp_pre_all_gather)
        setattr(t, _POST, fsdp_post_all_gather)
        if not hasattr(self.fsdp_param, "_extensions_data"):
            self.fsdp_param._init_extensions()


_REGISTRY = "_lowbit_gather8"


def enable_8bit_allgather(model: torch.nn.Module, compute_dtype: torch.dtype | None = None) -> list[str]:
    """Gather every eligible ``LowbitLinear`` weight of an FSDP2-sharded ``model`` in 8 bits; returns their names.

    Call after ``fully_shard`` (of every module) and before the first forward. ``compute_dtype``: the dtype the
    linear quantizes W from, when it differs from FSDP's all-gather dtype (fp32 parameters under bf16 autocast).
    Layers whose recipe cannot (see :func:`allgather_8bit_format`) keep the 16-bit gather.
    """
    from lowbit.nn import LowbitLinear

    gathers: list[_Gather8] = []
    names = {id(m): n for n, m in model.named_modules()}
    for fp in _fsdp_params(model):
        module, pname = fp._module_info.module, fp._module_info.param_name
        if not isinstance(module, LowbitLinear) or pname != "weight" or module.weight.ndim != 2:
            continue
        if fp._module_info.shared_modules:  # a weight shared by several modules: leave it alone
            continue
        fmt = allgather_8bit_format(module.recipe)
        if fmt is None:
            continue
        g = _Gather8(fp, fmt, compute_dtype)
        g.install()
        gathers.append(g)
        fp._lowbit_name = f"{names.get(id(module), '?')}.weight"
    setattr(model, _REGISTRY, gathers)
    return [g.fsdp_param._lowbit_name for g in gathers]


def _gathers(model: torch.nn.Module) -> list[_Gather8]:
    return list(getattr(model, _REGISTRY, []))


@torch.no_grad()
def precompute_scales(model: torch.nn.Module) -> None:
    """Quantize every 8-bit-gathered weight's shard for the next gathers (call after ``optimizer.step()``).

    Collective (every rank calls it): one all-reduce of all the weights' local absmaxes, then the codes of all
    shards in a handful of launches over their concatenation (quantizing per weight costs ~10 launches per weight,
    CPU time a ViT-L step would notice). Elementwise the same arithmetic as :func:`quantize_with_amax`, so the
    same codes. They are kept until the weights change (1 byte per shard element). Without this call each weight's
    first gather after a change quantizes its shard itself (same values).
    """
    gathers = _gathers(model)
    if not gathers:
        return
    shards = [g.shard() for g in gathers]
    device = shards[0].device
    cache: dict = model.__dict__.setdefault("_lowbit_gather8_index", {})

    def on_device(values: list[int]) -> torch.Tensor:  # index/count tensors made once: no host-to-device copy per step
        key = tuple(values)
        if key not in cache:
            cache[key] = torch.tensor(values, dtype=torch.int64, device=device)
        return cache[key]

    local = torch.zeros(len(gathers), dtype=torch.float32, device=device)
    groups: dict[tuple, list[int]] = {}
    for i, (g, t) in enumerate(zip(gathers, shards)):
        if t.numel():  # an empty shard's absmax is 0
            groups.setdefault((t.dtype, g.dtype), []).append(i)
    for (_, dtype), idx in groups.items():
        # max|x| (exact), then the cast: max|cast(x)| = cast(max|x|) for a monotone, odd rounding, i.e. the absmax
        # of the cast shard that the linear would quantize; NaN propagates
        norms = torch.stack(torch._foreach_norm([shards[i] for i in idx], ord=math.inf))
        local.index_copy_(0, on_device(idx), norms.to(dtype).float())
    bits = _abs_bits(local)
    dist.all_reduce(bits, op=dist.ReduceOp.MAX, group=gathers[0].fsdp_param.shard_mesh.get_group())
    amax = bits.view(torch.float32)
    by_format: dict[tuple, list[int]] = {}
    for i, g in enumerate(gathers):
        g.amax, g.amax_key = amax[i], g.key()
        by_format.setdefault((g.fmt, g.dtype), []).append(i)
    for (fmt, dtype), idx in by_format.items():
        counts = [shards[i].numel() for i in idx]
        flat = torch.cat([shards[i].reshape(-1) for i in idx]).to(dtype)
        scales = reference.scale_from_absmax(amax.index_select(0, on_device(idx)), fmt)  # type: ignore[arg-type]
        per_element = torch.repeat_interleave(scales, on_device(counts), output_size=sum(counts))
        codes = reference.quantize_with_scale(flat, per_element, fmt)  # type: ignore[arg-type]
        for i, c, sc in zip(idx, codes.split(counts), scales.unbind()):
            g = gathers[i]
            g.codes, g.scale, g.codes_key = c.view(shards[i].shape), sc, g.amax_key


# ---------------------------------------------------------------------------------------------- bytes moved


class AllGatherCounter:
    """Counts FSDP2's all-gather traffic: bytes each rank sends (its inputs) and receives (the gathered output)."""

    def __init__(self) -> None:
        self.calls = 0
        self.input_bytes = 0
        self.output_bytes = 0

    def reset(self) -> None:
        self.calls = self.input_bytes = self.output_bytes = 0

    def wrap(self) -> Any:
        from torch.distributed.fsdp._fully_shard._fsdp_collectives import DefaultAllGather

        counter = self

        class _Counting(DefaultAllGather):
            def __call__(self, output_tensor: torch.Tensor, input_tensor: torch.Tensor, group: Any,
                         async_op: bool = False) -> Any:
                counter.calls += 1
                counter.input_bytes += input_tensor.numel() * input_tensor.element_size()
                counter.output_bytes += output_tensor.numel() * output_tensor.element_size()
                return super().__call__(output_tensor, input_tensor, group, async_op)

        return _Counting()


def count_allgather_bytes(model: torch.nn.Module) -> AllGatherCounter:
    """Install an :class:`AllGatherCounter` on every FSDP2 module of ``model`` (``set_custom_all_gather``)."""
    from torch.distributed.fsdp import FSDPModule

    counter = AllGatherCounter()
    comm = counter.wrap()
    for m in model.modules():
        if isinstance(m, FSDPModule):
            m.set_custom_all_gather(comm)
    return counter


def weight_allgather_bytes(model: torch.nn.Module) -> dict[str, int]:
    """Bytes one all-gather of every sharded ``LowbitLinear`` weight moves (gathered size, all ranks): as 16-bit
    (FSDP's all-gather dtype) and as it is configured now (8-bit where enabled)."""
    from lowbit.nn import LowbitLinear

    eight = {id(g.fsdp_param) for g in _gathers(model)}
    out = {"16bit": 0, "configured": 0}
    for fp in _fsdp_params(model):
        if not isinstance(fp._module_info.module, LowbitLinear) or fp._module_info.param_name != "weight":
            continue
        numel = fp._orig_size.numel()
        wide = _gather_dtype(fp).itemsize * numel
        out["16bit"] += wide
        out["configured"] += numel if id(fp) in eight else wide
    return out


def describe(model: torch.nn.Module) -> str:
    """One line: how many weights gather in 8 bits and the bytes of one all-gather of them, 16-bit vs now."""
    b = weight_allgather_bytes(model)
    n = len(_gathers(model))
    return (f"8-bit all-gather: {n} linear weight(s), {b['configured'] / 2**20:.1f} MiB per full gather instead of "
            f"{b['16bit'] / 2**20:.1f} MiB")

