"""Packed projections: q, k and v linears that read one input run as one GEMM (``convert(..., fuse=True)``).

Hugging Face's attention classes (``CLIPAttention``, ``SiglipAttention``, the transformers 5 ViT family, LLaMA-style
decoders; BERT-style encoders with ``query``, ``key``, ``value``) keep q, k and v as three ``nn.Linear`` and call
each on the same ``hidden_states``: three GEMMs of ``E → E``, three quantize passes over the same input and, in the
backward, three dgrad GEMMs whose outputs are added.
:func:`pack_projections` makes them one :class:`ProjectionGroup`: the first of the three called in a forward runs
``linear(x, cat(Wq, Wk, Wv), cat(bq, bk, bv))`` (one ``E → 3E`` GEMM, one quantize of ``x``, one dgrad GEMM with
K = 3E; a member without a bias adds zeros) and keeps the other two slices for the calls that follow with the
*same* tensor (checked by identity), whatever the order of the calls. Any other call without a kept slice —
cross-attention's keys and values — drops what was kept and computes its own slice of the weight: always correct,
only slower, and nothing is kept past the forward. The modules stay where the model has them
(:class:`PackedLinear`, an ``nn.Linear`` with the same parameters), so keys, ``parameters()`` and ``unconvert`` are
unchanged. Grouped-query attention packs too (k and v narrower than q: the slices follow ``out_features``).

Numerics: the recipes scale the weight per tensor, so the packed weight has one scale where the three had one each
(as open_clip's and timm's packed in-projections always have); in float formats (fp8) that changes nothing but
underflow, in int8 the projection whose weights are smaller keeps fewer levels.

A LayerNorm whose output feeds the group alone (Hugging Face's ``layer_norm1``; :mod:`lowbit.nn.block_norms`) can be
fused in (:meth:`ProjectionGroup.fuse_norm`): every call then normalizes its input in the quantizing pass.

Packing is valid only where the class's ``forward`` calls the three on its input and nothing else reads the
results in between: :data:`PACKED_PROJECTIONS` lists the classes whose ``forward`` was read; the convert report
names any other module with converted q, k, v linears and says why they stay three GEMMs.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from lowbit.functional.layernorm_linear import layernorm_linear
from lowbit.functional.linear import linear
from lowbit.nn._names import class_path
from lowbit.nn.linear import LowbitLinear
from lowbit.nn.report import FUSED, NOT_FUSED, PACKED, ConvertReport

__all__ = ["PACKED_PROJECTIONS", "PackedLinear", "ProjectionGroup", "pack_projections"]

_QKV = ("q_proj", "k_proj", "v_proj")
# attention class -> the names of its linears that read the same input. Each class's forward (transformers 5.x, read
# at 5.25; CLIPAttention also 4.5x) calls them on hidden_states one after another and reads nothing else of them in
# between; tests/nn/test_packed_families.py checks the installed sources still do.
PACKED_PROJECTIONS: dict[str, tuple[str, ...]] = {
    **{f"transformers.models.{mod}.modeling_{mod}.{cls}": _QKV for mod, cls in (
        ("clip", "CLIPAttention"), ("siglip", "SiglipAttention"), ("siglip2", "Siglip2Attention"),
        ("vit", "ViTAttention"), ("deit", "DeiTAttention"), ("dinov2", "Dinov2Attention"), ("beit", "BeitAttention"),
        ("llama", "LlamaAttention"), ("mistral", "MistralAttention"), ("qwen2", "Qwen2Attention"),
        ("qwen3", "Qwen3Attention"))},
    # BERT-style self-attention calls query, key, value on hidden_states; in a decoder (transformers 4) a cache or
    # cross-attention may skip key and value, so only encoders are packed (_PACKED_UNLESS)
    **{f"transformers.models.{mod}.modeling_{mod}.{cls}": ("query", "key", "value") for mod, cls in (
        ("bert", "BertSelfAttention"), ("roberta", "RobertaSelfAttention"),
        ("xlm_roberta", "XLMRobertaSelfAttention"))},
}


def _encoder_only(m: nn.Module) -> str | None:
    return "a decoder's attention (a cache or cross-attention may skip key and value)" \
        if getattr(m, "is_decoder", False) else None


# class -> why a module of it is not packed, or None
_PACKED_UNLESS: dict[str, Callable[[nn.Module], str | None]] = {
    cls: _encoder_only for cls, names in PACKED_PROJECTIONS.items() if names[0] == "query"}
# the name triples an attention module's q, k, v linears go by (for the report on classes not listed above)
_TRIPLES = (_QKV, ("query", "key", "value"))


class ProjectionGroup:
    """Linears reading one input, run as one GEMM over their concatenated weights (not a module: holds no state
    that a checkpoint would see; the members refer to it)."""

    def __init__(self, members: list[LowbitLinear]) -> None:
        self.members = members
        self.layer_norm: nn.LayerNorm | None = None  # fused in front (as LowbitMultiheadAttention.layer_norm)
        self._kept: tuple[torch.Tensor, dict[int, torch.Tensor]] | None = None
        self._called = 0  # bit i: member i was called in this round (a forward calls each once)

    def fuse_norm(self, norm: nn.LayerNorm) -> None:
        """Normalize every member's input with ``norm`` in the quantizing pass (the caller makes ``norm`` itself the
        identity and asserts that its output feeds these members alone)."""
        if tuple(norm.normalized_shape) != (self.members[0].in_features,):
            raise ValueError(f"ProjectionGroup.fuse_norm: the LayerNorm normalizes {tuple(norm.normalized_shape)}, "
                             f"not the projections' in_features ({self.members[0].in_features},)")
        self.layer_norm = norm

    def _linear(self, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, recipe) -> torch.Tensor:
        ln = self.layer_norm
        if ln is None:
            return linear(x, weight, bias, recipe)
        return layernorm_linear(x, ln.weight, ln.bias, weight, bias, recipe, ln.eps)

    def project(self, x: torch.Tensor, slot: int) -> torch.Tensor:
        """Member ``slot``'s output for input ``x``: a slice kept from this round's packed GEMM on ``x``; for the
        first member called in a round (a forward calls each member once, in any order) a new packed GEMM whose other
        slices are kept; for any other call its own slice of the weight. A round ends when every member was called,
        or when one is called again (then nothing kept survives it)."""
        members, bit = self.members, 1 << slot
        if self._called & bit:
            self._called, self._kept = 0, None
        first, out = self._called == 0, None
        self._called |= bit
        kept = self._kept
        if kept is not None:
            if kept[0] is x and slot in kept[1]:
                out = kept[1].pop(slot)
            else:
                self._kept = None  # another input (cross-attention): drop the slices, this member computes its own
        if out is None:
            m = members[slot]
            if not first or any(o.recipe.name != m.recipe.name for o in members):  # (or re-converted apart)
                out = self._linear(x, m.weight, m.bias, m.recipe)
            else:
                weight = torch.cat([o.weight for o in members])
                bias = None
                if any(o.bias is not None for o in members):  # a member without one (BEiT's k_proj) adds zeros
                    bias = torch.cat([o.bias if o.bias is not None else o.weight.new_zeros(o.out_features)
                                      for o in members])
                outs = self._linear(x, weight, bias, m.recipe).split([o.out_features for o in members], dim=-1)
                self._kept = (x, {i: o for i, o in enumerate(outs) if i != slot})
                out = outs[slot]
        if self._called == (1 << len(members)) - 1:  # the round is complete: nothing outlives the forward
            self._called, self._kept = 0, None
        return out


class PackedLinear(LowbitLinear):
    """A member of a :class:`ProjectionGroup`: an ``nn.Linear`` (same parameters, same keys) whose forward is its slice
    of the group's packed GEMM."""

    group: ProjectionGroup
    slot: int

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.group.project(x, self.slot)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, packed: slice {self.slot} of {len(self.group.members)}"


def _why_not(members: list[nn.Module]) -> str | None:
    if not all(isinstance(m, LowbitLinear) and type(m) in (LowbitLinear, PackedLinear) for m in members):
        kinds = ", ".join(type(m).__name__ for m in members)
        return f"not all converted to plain LowbitLinear ({kinds})"
    first = members[0]
    if len({m.recipe.name for m in members}) > 1:
        return "recipes differ: " + ", ".join(m.recipe.name for m in members)
    if any(m.in_features != first.in_features for m in members):
        return "in_features differ"
    if len({(m.weight.dtype, m.weight.device) for m in members}) > 1:
        return "weights of different dtypes or devices"
    return None


def pack_projections(model: nn.Module, report: ConvertReport | None) -> int:
    """Pack the projections of every module of a class in :data:`PACKED_PROJECTIONS` whose members all converted
    alike; returns how many groups were made. Each attempt goes to ``report`` (fused, or not fused and why)."""
    packed = 0
    for fqn, module in list(model.named_modules()):
        names = PACKED_PROJECTIONS.get(class_path(module))
        if names is None:
            _report_unread(fqn, module, report)
            continue
        members = [getattr(module, n, None) for n in names]
        if any(m is None for m in members):  # the same class name in another library version, built otherwise
            continue
        key = f"{fqn}.{'+'.join(names)}" if fqn else "+".join(names)  # e.g. "….self_attn.q_proj+k_proj+v_proj"
        if all(isinstance(m, PackedLinear) for m in members) and len({id(m.group) for m in members}) == 1:
            continue  # packed by an earlier convert
        unless = _PACKED_UNLESS.get(class_path(module))
        why = (unless(module) if unless else None) or _why_not(members)
        if why is None:
            group = ProjectionGroup([])
            for slot, (name, m) in enumerate(zip(names, members, strict=True)):
                new = PackedLinear.from_linear(m, m.recipe)
                new.group, new.slot = group, slot
                group.members.append(new)
                setattr(module, name, new)
            packed += 1
        if report is not None:
            report.record(key, PACKED, "", FUSED if why is None else NOT_FUSED,
                          f"{' + '.join(names)} as one GEMM over their concatenated weights" if why is None else why)
    return packed


def _report_unread(fqn: str, module: nn.Module, report: ConvertReport | None) -> None:
    """A module with converted q, k, v linears whose class is not listed: say why they run as three GEMMs."""
    for names in _TRIPLES:
        members = [getattr(module, n, None) for n in names]
        if report is not None and all(isinstance(m, LowbitLinear) for m in members):
            key = f"{fqn}.{'+'.join(names)}" if fqn else "+".join(names)
            report.record(key, PACKED, "", NOT_FUSED,
                          f"{class_path(module)} is not an attention class whose forward was read "
                          "(lowbit.nn.packed.PACKED_PROJECTIONS): its projections run as separate GEMMs")
            return
