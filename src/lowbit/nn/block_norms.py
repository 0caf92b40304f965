"""LayerNorm fusion inside the transformer blocks of open_clip, timm and Hugging Face (``convert(..., fuse=True)``).

:func:`lowbit.nn.fuse_layernorm` is valid only where a LayerNorm's output feeds one converted module alone, which
no module tree says: the block's ``forward`` does. :data:`BLOCK_NORMS` lists, per block class whose ``forward`` was
read (open_clip 3.3, timm 1.0, transformers 4.5x / 5), the (LayerNorm, consumer) pairs for which that holds:

* open_clip ``ResidualAttentionBlock``: ``x + ls_2(mlp(ln_2(x)))`` — ``ln_2`` feeds ``mlp`` only; ``ln_1`` feeds
  ``attn`` alone (as query, and as key and value when the block is given none: ``attention`` passes ``q_x`` for
  them; a cross-attention block's keys come through its own ``ln_1_kv``), whose
  :class:`~lowbit.nn.LowbitMultiheadAttention` then normalizes the input that is its query.
* timm ``Block``: ``norm2`` feeds ``mlp``; ``norm1`` feeds ``attn``, whose ``Attention.forward`` reads its input only
  for its shape and ``qkv`` (unless the attention has a ``gate``, which reads it too).
* Hugging Face ``CLIPEncoderLayer``: ``layer_norm2`` feeds ``mlp``; ``layer_norm1`` feeds ``self_attn``, whose
  ``CLIPAttention.forward`` reads its input for its shape and ``q_proj``, ``k_proj``, ``v_proj``: fused only where
  those three are one :class:`~lowbit.nn.ProjectionGroup` (:mod:`lowbit.nn.packed`), which then normalizes it.
* Hugging Face ``ViTLayer`` (transformers 5), ``DeiTLayer``, ``BeitLayer``: ``layernorm_before`` feeds ``attention``
  (read as ``CLIPAttention``: q/k/v packed) and ``layernorm_after`` feeds ``mlp`` alone; ``Dinov2Layer`` the same
  with ``norm1`` / ``norm2``; ``SiglipEncoderLayer`` and ``Siglip2EncoderLayer`` as ``CLIPEncoderLayer``.
* lowbit's own CLIP ``Block`` (:mod:`lowbit.models.clip`): ``ln1`` feeds ``attn.qkv`` alone, ``ln2`` ``mlp``.

A subclass of a listed block, or a block whose consumer did not convert, keeps its LayerNorm; the report says why.
"""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

from lowbit.nn._names import class_path
from lowbit.nn.attention import LowbitMultiheadAttention
from lowbit.nn.layernorm import LayerNormAlias, fuse_layernorm
from lowbit.nn.linear import LowbitLinear
from lowbit.nn.mlp import LowbitMLP
from lowbit.nn.packed import PACKED_PROJECTIONS, PackedLinear
from lowbit.nn.report import FUSED, NOT_FUSED, ConvertReport

__all__ = ["BLOCK_NORMS", "block_norm_pairs", "fuse_block_norms"]


# timm's ViT attention: in timm.layers since 1.0.2x, in the model file before
TIMM_ATTENTION = frozenset({"timm.layers.attention.Attention", "timm.models.vision_transformer.Attention"})


def _timm_attention_reads_only_qkv(block: nn.Module) -> str | None:
    attn = getattr(block, "attn", None)
    if class_path(attn) not in TIMM_ATTENTION:
        return f"attn is {class_path(attn)}, not timm's Attention (whose forward was read)"
    if getattr(attn, "gate", None) is not None:
        return "attn has a gate, which reads norm1's output besides qkv"
    return None


def _packed(attr: str) -> Callable[[nn.Module], str | None]:
    """The check for a LayerNorm that feeds ``block.<attr>``, an attention class of :data:`PACKED_PROJECTIONS`
    (whose forward reads its input for its shape and its projections): fused only where those are one group."""

    def check(block: nn.Module) -> str | None:
        attn = getattr(block, attr, None)
        names = PACKED_PROJECTIONS.get(class_path(attn))
        if names is None:
            return f"{attr} is {class_path(attn)}, not an attention class whose forward was read"
        projs = [getattr(attn, n, None) for n in names]
        if not all(isinstance(p, PackedLinear) for p in projs) or len({id(p.group) for p in projs}) > 1:
            return f"{', '.join(names)} are not one packed group (the LayerNorm feeds all of them)"
        return None

    return check


# block class -> ((LayerNorm, consumer, extra check or None), ...): the pairs where the LayerNorm feeds only that consumer
BLOCK_NORMS: dict[str, tuple[tuple[str, str, Callable[[nn.Module], str | None] | None], ...]] = {
    "open_clip.transformer.ResidualAttentionBlock": (("ln_1", "attn", None), ("ln_2", "mlp", None)),
    "timm.models.vision_transformer.Block": (("norm2", "mlp", None),
                                             ("norm1", "attn.qkv", _timm_attention_reads_only_qkv)),
    "transformers.models.clip.modeling_clip.CLIPEncoderLayer": (("layer_norm1", "self_attn.q_proj", _packed("self_attn")),
                                                                ("layer_norm2", "mlp", None)),
    # SigLIP's encoder layers read as CLIP's (transformers 5.25)
    **{f"transformers.models.{mod}.modeling_{mod}.{cls}": (("layer_norm1", "self_attn.q_proj", _packed("self_attn")),
                                                           ("layer_norm2", "mlp", None))
       for mod, cls in (("siglip", "SiglipEncoderLayer"), ("siglip2", "Siglip2EncoderLayer"))},
    # transformers 5 (4.x's ViTLayer has neither attention.q_proj nor mlp: nothing there to fuse); DeiT and BEiT
    # read the same (BEiT scales each branch's output by lambda_1 / lambda_2, after the consumers)
    **{f"transformers.models.{mod}.modeling_{mod}.{cls}": (("layernorm_before", "attention.q_proj",
                                                            _packed("attention")), ("layernorm_after", "mlp", None))
       for mod, cls in (("vit", "ViTLayer"), ("deit", "DeiTLayer"), ("beit", "BeitLayer"))},
    # DINOv2: norm1 -> attention, norm2 -> mlp (a plain MLP; the SwiGLU variant's is not fused), layer scale after
    "transformers.models.dinov2.modeling_dinov2.Dinov2Layer": (("norm1", "attention.q_proj", _packed("attention")),
                                                               ("norm2", "mlp", None)),
    "lowbit.models.clip.Block": (("ln1", "attn.qkv", None), ("ln2", "mlp", None)),  # named, not imported: no cycle
}


def block_norm_pairs(block: nn.Module) -> tuple[tuple[str, str, Callable[[nn.Module], str | None] | None], ...]:
    """The (LayerNorm, consumer, check) pairs of ``block``'s exact class (none for any other class)."""
    return BLOCK_NORMS.get(class_path(block), ())


def fuse_block_norms(model: nn.Module, report: ConvertReport | None) -> int:
    """Fuse every listed LayerNorm of ``model``'s known blocks into its converted consumer; returns how many fused.
    Each attempt goes to ``report`` (``LayerNorm`` rows: fused, or not fused and why)."""
    fused = 0
    for fqn, block in list(model.named_modules()):
        for norm, consumer, check in block_norm_pairs(block):
            try:
                target, ln = block.get_submodule(consumer), block.get_submodule(norm)
            except AttributeError:
                continue
            if isinstance(ln, LayerNormAlias):  # fused by an earlier convert (the consumer took the new recipe)
                continue
            if not isinstance(target, (LowbitMLP, LowbitLinear, LowbitMultiheadAttention)):
                why: str | None = f"{consumer} ({type(target).__name__}) was not converted" + (
                    " to a fused MLP (fuse=True fuses a Linear → activation → Linear MLP whose two linears both "
                    "convert; its own report row says why not)" if consumer == "mlp" else "")
            else:
                why = (check(block) if check else None) or fuse_layernorm(block, norm, consumer)
            key = f"{fqn}.{norm} → {fqn}.{consumer}" if fqn else f"{norm} → {consumer}"
            if why is None:
                fused += 1
            if report is not None:
                report.record(key, "LayerNorm", "", FUSED if why is None else NOT_FUSED,
                              "LayerNorm fused with the quantization of its output" if why is None else why)
    return fused
