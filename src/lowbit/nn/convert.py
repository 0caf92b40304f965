"""``convert`` / ``unconvert``: swap a model's ``nn.Linear`` layers for ``LowbitLinear`` in place and back.

Modelled on torchao's ``convert_to_float8_training``: a ``module_filter(fqn, module) -> bool`` picks the
layers; by default layers the kernels cannot serve efficiently are skipped, and the skips are reported.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from torch import nn

from lowbit.functional.recipe import Recipe, get_recipe
from lowbit.nn.linear import LowbitLinear

logger = logging.getLogger(__name__)

ModuleFilter = Callable[[str, nn.Linear], bool]

# Smallest in/out width worth converting. On an H100 (bench/results/h100/sweep.md, linear.log) no width up to
# 1024 gained at 32k tokens (0.1-0.8x: the extra quantize launches cost more host time than the 8-bit matmuls
# save), 1280 (ViT-H) is break-even (0.97-1.08x by recipe) and 4096 gains (1.12-1.43x).
MIN_FEATURES = 1280
# Widths must be multiples of 16 for aligned, vectorised 8-bit tiles.
ALIGNMENT = 16


def skip_reason(fqn: str, module: nn.Linear) -> str | None:
    """Why the default filter leaves ``module`` in 16-bit, or ``None`` when it converts it."""
    if isinstance(module, nn.modules.linear.NonDynamicallyQuantizableLinear):
        return "inside nn.MultiheadAttention, which bypasses the module's forward"
    d_in, d_out = module.in_features, module.out_features
    if min(d_in, d_out) < MIN_FEATURES:
        return f"too small to gain ({d_in}→{d_out}; both widths must be ≥ {MIN_FEATURES})"
    if d_in % ALIGNMENT or d_out % ALIGNMENT:
        return f"widths {d_in}→{d_out} are not multiples of {ALIGNMENT}"
    return None


def default_filter(fqn: str, module: nn.Linear) -> bool:
    """The default ``module_filter``: convert unless :func:`skip_reason` gives a reason."""
    return skip_reason(fqn, module) is None


def convert(
    model: nn.Module,
    recipe: str | Recipe = "switchback",
    module_filter: ModuleFilter | None = None,
    *,
    verbose: bool = False,
) -> nn.Module:
    """Swap every ``nn.Linear`` of ``model`` that ``module_filter`` accepts for a ``LowbitLinear`` in place.

    Parameters are shared, not copied. Layers already converted get the new recipe. Returns ``model``
    (which may itself be replaced when it is a bare ``nn.Linear``). Skipped layers are logged (and printed
    with ``verbose=True``) with the reason.
    """
    recipe = get_recipe(recipe)
    accept = module_filter or default_filter
    converted: list[str] = []
    skipped: dict[str, str] = {}

    def visit(module: nn.Module, fqn: str) -> nn.Module:
        if isinstance(module, nn.Linear):
            if isinstance(module, LowbitLinear):
                if accept(fqn, module):
                    module.recipe = recipe
                    converted.append(fqn)
                return module
            if accept(fqn, module):
                converted.append(fqn)
                return LowbitLinear.from_linear(module, recipe)
            skipped[fqn] = (skip_reason(fqn, module) if module_filter is None else None) or "module_filter"
            return module
        for name, child in list(module.named_children()):
            new = visit(child, f"{fqn}.{name}" if fqn else name)
            if new is not child:
                setattr(module, name, new)
        return module

    model = visit(model, "")
    msg = f"lowbit.convert: {len(converted)} linear layer(s) → {recipe.name}; {len(skipped)} skipped"
    details = "".join(f"\n  skipped {name or '<root>'}: {why}" for name, why in skipped.items())
    logger.info(msg + details)
    if verbose:
        print(msg + details)
    return model


def unconvert(model: nn.Module) -> nn.Module:
    """Turn every ``LowbitLinear`` back into a plain ``nn.Linear`` (parameters shared). Returns ``model``."""
    if isinstance(model, LowbitLinear):
        return model.to_linear()
    for name, child in list(model.named_children()):
        new = unconvert(child)
        if new is not child:
            setattr(model, name, new)
    return model
