"""Which CLIP linears a precision recipe converts, and ``convert_clip`` to apply one.

Like the paper (and open_clip's int8 integration), the first and last layers stay in 16-bit by default: the
patch embedding (a conv, never converted) and the two final projections (``visual.proj``, ``text.proj``).
Optionally the last ``keep_last_blocks`` transformer blocks of each tower stay 16-bit too. With
``layers="auto"`` a block linear converts only where the recipe was measured faster than bf16 at its shape
(tokens per call × in → out features; :mod:`lowbit.nn.autolayers`): timed on the training GPU when the model is
converted, once per shape, cached across runs. Without a CUDA device to measure on, ``lowbit.nn.convert``'s width
threshold decides instead, and ``convert_report(model)`` says "not measured".
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

__all__ = ["LAYERS", "ModuleFilter", "clip_module_filter", "clip_tokens", "convert_clip", "fused_counts",
           "make_clip_module_filter"]

ModuleFilter = Callable[[str, nn.Module], bool]
# Which linears a recipe converts: "clip" = every block linear (the filter below); "auto" = those of them measured
# faster than bf16 at their shape (lowbit.nn.autolayers; without CUDA, lowbit.nn.convert's width threshold); "wide" =
# those of them that threshold passes (both widths >= 1280: the layers lowbit.convert's default converts in open_clip,
# timm or Hugging Face models, so that lowbit's step and theirs compare layer for layer).
LAYERS = ("clip", "auto", "wide")
_BLOCK = re.compile(r"^(visual|text)\.blocks\.(\d+)\.")


def clip_tokens(config: Any, batch: int) -> dict[str, int]:
    """Rows each linear of a tower sees per call: vision ``batch × (grid² + 1)`` (patches and the class token),
    text ``batch × context_length`` (as ``lowbit.models.flops`` counts them)."""
    return {"visual": batch * config.vision.tokens, "text": batch * config.text.context_length}


class _ClipFilter:
    """The CLIP rules, then (``layers="auto"``) the size rule ``size``: a callable filter with ``reason``, ``note``
    and ``measurement`` (how ``lowbit.convert`` words its report)."""

    def __init__(self, keep_patch_embed: bool, keep_projections: bool, keep_last_blocks: int,
                 depths: dict[str, int] | None, size: Any) -> None:
        self.keep_patch_embed, self.keep_projections = keep_patch_embed, keep_projections
        self.keep_last_blocks, self.depths, self.size = keep_last_blocks, depths, size

    def _clip_ok(self, fqn: str, module: nn.Module) -> bool:
        if not isinstance(module, nn.Linear):
            return False
        if self.keep_patch_embed and fqn.startswith("visual.patch_embed"):
            return False
        if self.keep_projections and fqn in ("visual.proj", "text.proj"):
            return False
        m = _BLOCK.match(fqn)
        if self.keep_last_blocks and m and self.depths is not None:
            tower, index = m.group(1), int(m.group(2))
            if index >= self.depths[tower] - self.keep_last_blocks:
                return False
        return True

    def __call__(self, fqn: str, module: nn.Module) -> bool:
        return self._clip_ok(fqn, module) and (self.size is None or self.size(fqn, module))

    def reason(self, fqn: str, module: nn.Module) -> str | None:
        """Why the size rule keeps ``module`` 16-bit (``None`` for the CLIP rules: "rejected by module_filter")."""
        if self.size is None or not self._clip_ok(fqn, module):
            return None
        reason = getattr(self.size, "reason", None)
        if reason is not None:
            return reason(fqn, module)
        from lowbit.nn.convert import skip_reason

        return skip_reason(fqn, module)

    def note(self, fqn: str, module: nn.Module) -> str:
        """What decided a converted layer (the measured gain), or ``""``."""
        note = getattr(self.size, "note", None)
        return note(fqn, module) if note is not None and self(fqn, module) else ""

    def measurement(self, fqn: str, module: nn.Module) -> tuple[float, str] | None:
        """The size rule's measured gain and shape for a layer the CLIP rules let it decide, or ``None``."""
        from lowbit.nn.convert import filter_measurement

        return filter_measurement(self.size, fqn, module) if self._clip_ok(fqn, module) else None


def make_clip_module_filter(
    *,
    keep_patch_embed: bool = True,
    keep_projections: bool = True,
    keep_last_blocks: int = 0,
    depths: dict[str, int] | None = None,
    layers: str = "clip",
    recipe: str | None = None,
    device: torch.device | str | None = None,
    tokens: dict[str, int] | None = None,
    measure: Any = None,
    cache_dir: str | Path | None = None,
    ranks_agree: bool = False,
) -> ModuleFilter:
    """A filter ``(fqn, module) -> bool`` that is True for the ``nn.Linear`` modules a recipe should convert.

    ``keep_last_blocks`` > 0 keeps the last blocks of each tower 16-bit; it needs ``depths``
    (``{"visual": layers, "text": layers}``, which ``convert_clip`` fills in from the model). ``layers="auto"``
    also keeps 16-bit the block linears that ``recipe`` does not run faster than bf16: measured on ``device``
    (CUDA) at ``tokens[tower]`` rows per call (:func:`clip_tokens`) by :func:`lowbit.nn.measured_filter`
    (``measure``, ``cache_dir``, ``ranks_agree`` go to it). Without a CUDA ``device``, a recipe or token counts,
    ``lowbit.nn.convert``'s width threshold decides (the report says "not measured"). ``layers="wide"``: that
    threshold alone, nothing measured.
    """
    if keep_last_blocks < 0:
        raise ValueError(f"keep_last_blocks must be >= 0, got {keep_last_blocks}")
    if keep_last_blocks and depths is None:
        raise ValueError("keep_last_blocks > 0 needs depths={'visual': layers, 'text': layers}")
    if layers not in LAYERS:
        raise ValueError(f"layers must be one of {', '.join(LAYERS)}, got {layers!r}")
    size = None
    if layers in ("wide", "auto"):
        from lowbit.nn.convert import default_filter

        size = default_filter
    if layers == "auto" and recipe is not None and recipe != "none":
        from lowbit.nn.autolayers import measured_filter

        towers = tokens or {}
        size = measured_filter(recipe, lambda fqn: towers.get(fqn.split(".", 1)[0]),
                               device if device is not None else "cpu", measure=measure, cache_dir=cache_dir,
                               ranks_agree=ranks_agree)
    return _ClipFilter(keep_patch_embed, keep_projections, keep_last_blocks, depths, size)


clip_module_filter: ModuleFilter = make_clip_module_filter()
"""Default filter: convert every ``nn.Linear`` except the final projections (the patch embedding is a conv)."""


def convert_clip(
    model: nn.Module,
    recipe: str | None,
    *,
    keep_patch_embed: bool = True,
    keep_projections: bool = True,
    keep_last_blocks: int = 0,
    layers: str = "clip",
    module_filter: ModuleFilter | None = None,
    fuse: bool = False,
    device: torch.device | str | None = None,
    batch_size: int = 0,
    ranks_agree: bool = False,
) -> nn.Module:
    """Swap the model's linears to ``recipe`` with ``lowbit.nn.convert`` (``None``/``"none"``: leave as is).

    ``module_filter`` overrides the filter built from the ``keep_*`` options. With ``fuse`` (off by default: faster
    eager only at ViT-H widths on an H100, see :func:`lowbit.nn.convert`) each block's
    MLP becomes one fused ``LowbitMLP`` and each block's LayerNorms are fused with the quantization of their
    consumers: ``ln2`` + ``mlp`` → ``LayerNormMLP``, ``ln1`` + ``attn.qkv`` → ``LayerNormLinear`` (``ln1``/``ln2``
    become ``LayerNormAlias`` modules holding the same parameters: ``state_dict`` keys are unchanged, and
    checkpoints of the plain model load as before). Valid because in :class:`~lowbit.models.clip.Block` ``ln1``
    feeds only ``attn.qkv`` and ``ln2`` only ``mlp``. ``layers="auto"`` measures each block linear's shape on
    ``device`` at ``batch_size`` samples per call (see :func:`make_clip_module_filter`; ``ranks_agree``: every
    process takes rank 0's measurements). Returns the model.
    """
    if recipe is None or recipe == "none":
        return model
    if module_filter is None:
        depths = None
        if keep_last_blocks:
            depths = {"visual": len(model.visual.blocks), "text": len(model.text.blocks)}
        module_filter = make_clip_module_filter(
            keep_patch_embed=keep_patch_embed,
            keep_projections=keep_projections,
            keep_last_blocks=keep_last_blocks,
            depths=depths,
            layers=layers,
            recipe=recipe,
            device=device,
            tokens=clip_tokens(model.config, batch_size) if batch_size > 0 else None,
            ranks_agree=ranks_agree,
        )
    try:
        from lowbit.nn import convert
    except ImportError as e:  # the recipe layer is not installed in this tree
        raise RuntimeError(
            f"recipe {recipe!r} needs lowbit.nn.convert, which is not available in this build ({e}); "
            "use recipe 'none' to train with plain nn.Linear"
        ) from e
    return convert(model, recipe=recipe, module_filter=module_filter, fuse=fuse)  # fuse: ln1/ln2 too (block_norms)


def fused_counts(model: nn.Module) -> tuple[int, int]:
    """(fused MLPs, LayerNorms fused with their consumer) in ``model``: what ``convert(fuse=True)`` made of lowbit's
    CLIP (``convert_clip``) or of any model (``lowbit.nn.block_norms``)."""
    from lowbit.nn import LayerNormLinear, LayerNormMLP, LowbitMLP, LowbitMultiheadAttention, PackedLinear

    mlps = sum(1 for m in model.modules() if isinstance(m, LowbitMLP))
    norms = sum(1 for m in model.modules() if isinstance(m, LayerNormMLP | LayerNormLinear) or (
        isinstance(m, LowbitMultiheadAttention) and m.layer_norm is not None) or (
        isinstance(m, PackedLinear) and m.slot == 0 and m.group.layer_norm is not None))
    return mlps, norms
