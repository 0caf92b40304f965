"""Which CLIP linears a precision recipe converts, and ``convert_clip`` to apply one.

Like the paper (and open_clip's int8 integration), the first and last layers stay in 16-bit by default: the
patch embedding (a conv, never converted) and the two final projections (``visual.proj``, ``text.proj``).
Optionally the last ``keep_last_blocks`` transformer blocks of each tower stay 16-bit too, and with
``layers="auto"`` the linears that ``lowbit.nn.convert``'s size threshold finds too narrow to gain (on an H100,
below 1280 wide: a ViT-H's 1024-wide text tower, say) stay 16-bit as well.
"""

from __future__ import annotations

import re
from collections.abc import Callable

from torch import nn

__all__ = ["LAYERS", "ModuleFilter", "clip_module_filter", "convert_clip", "fused_counts", "make_clip_module_filter"]

ModuleFilter = Callable[[str, nn.Module], bool]
# Which linears a recipe converts: "clip" = every block linear (the filter below); "auto" = those of them that
# pass lowbit.nn.convert's size threshold too.
LAYERS = ("clip", "auto")
_BLOCK = re.compile(r"^(visual|text)\.blocks\.(\d+)\.")


def _any_size(fqn: str, module: nn.Module) -> bool:
    return True


def make_clip_module_filter(
    *,
    keep_patch_embed: bool = True,
    keep_projections: bool = True,
    keep_last_blocks: int = 0,
    depths: dict[str, int] | None = None,
    layers: str = "clip",
) -> ModuleFilter:
    """A filter ``(fqn, module) -> bool`` that is True for the ``nn.Linear`` modules a recipe should convert.

    ``keep_last_blocks`` > 0 keeps the last blocks of each tower 16-bit; it needs ``depths``
    (``{"visual": layers, "text": layers}``, which ``convert_clip`` fills in from the model). ``layers="auto"``
    also keeps the linears below ``lowbit.nn.convert``'s size threshold 16-bit.
    """
    if keep_last_blocks < 0:
        raise ValueError(f"keep_last_blocks must be >= 0, got {keep_last_blocks}")
    if keep_last_blocks and depths is None:
        raise ValueError("keep_last_blocks > 0 needs depths={'visual': layers, 'text': layers}")
    if layers not in LAYERS:
        raise ValueError(f"layers must be one of {', '.join(LAYERS)}, got {layers!r}")
    size_ok: ModuleFilter = _any_size
    if layers == "auto":
        from lowbit.nn.convert import default_filter

        size_ok = default_filter

    def module_filter(fqn: str, module: nn.Module) -> bool:
        if not isinstance(module, nn.Linear):
            return False
        if keep_patch_embed and fqn.startswith("visual.patch_embed"):
            return False
        if keep_projections and fqn in ("visual.proj", "text.proj"):
            return False
        m = _BLOCK.match(fqn)
        if keep_last_blocks and m and depths is not None:
            tower, index = m.group(1), int(m.group(2))
            if index >= depths[tower] - keep_last_blocks:
                return False
        return size_ok(fqn, module)

    return module_filter


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
) -> nn.Module:
    """Swap the model's linears to ``recipe`` with ``lowbit.nn.convert`` (``None``/``"none"``: leave as is).

    ``module_filter`` overrides the filter built from the ``keep_*`` options. With ``fuse`` (off by default: faster
    eager only at ViT-H widths on an H100, see :func:`lowbit.nn.convert`) each block's
    MLP becomes one fused ``LowbitMLP`` and each block's LayerNorms are fused with the quantization of their
    consumers: ``ln2`` + ``mlp`` → ``LayerNormMLP``, ``ln1`` + ``attn.qkv`` → ``LayerNormLinear`` (``ln1``/``ln2``
    become ``LayerNormAlias`` modules holding the same parameters: ``state_dict`` keys are unchanged, and
    checkpoints of the plain model load as before). Valid because in :class:`~lowbit.models.clip.Block` ``ln1``
    feeds only ``attn.qkv`` and ``ln2`` only ``mlp``. Returns the model.
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
        )
    try:
        from lowbit.nn import convert
    except ImportError as e:  # the recipe layer is not installed in this tree
        raise RuntimeError(
            f"recipe {recipe!r} needs lowbit.nn.convert, which is not available in this build ({e}); "
            "use recipe 'none' to train with plain nn.Linear"
        ) from e
    model = convert(model, recipe=recipe, module_filter=module_filter, fuse=fuse)
    if fuse:
        _fuse_block_norms(model)
    return model


def _fuse_block_norms(model: nn.Module) -> None:
    """LayerNorm → consumer fusion inside every CLIP block whose consumer was converted (see ``convert_clip``)."""
    from lowbit.models.clip import Block
    from lowbit.nn import LowbitLinear, LowbitMLP, convert_report, fuse_layernorm
    from lowbit.nn.convert import FUSED, NOT_FUSED

    report = convert_report(model)
    for fqn, block in model.named_modules():
        if not isinstance(block, Block):
            continue
        for norm, consumer, kinds in (("ln1", "attn.qkv", LowbitLinear), ("ln2", "mlp", LowbitMLP)):
            if not isinstance(block.get_submodule(consumer), kinds):
                continue
            why = fuse_layernorm(block, norm, consumer)
            if report is not None:
                key = f"{fqn}.{norm} → {fqn}.{consumer}"
                if why is None:
                    report.record(key, "LayerNorm", "", FUSED, "LayerNorm fused with the quantization of its output")
                else:
                    report.record(key, "LayerNorm", "", NOT_FUSED, why)


def fused_counts(model: nn.Module) -> tuple[int, int]:
    """(fused MLPs, LayerNorms fused with their consumer) in ``model``: what ``convert_clip(fuse=True)`` made."""
    from lowbit.nn import LayerNormLinear, LayerNormMLP, LowbitMLP

    mlps = sum(1 for m in model.modules() if isinstance(m, LowbitMLP))
    norms = sum(1 for m in model.modules() if isinstance(m, LayerNormMLP | LayerNormLinear))
    return mlps, norms
