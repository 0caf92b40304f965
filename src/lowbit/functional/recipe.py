"""Recipes: which precision and scaling each of a linear layer's three matmuls uses (SPEC §3).

A linear layer ``Y = X Wᵀ + b`` runs three matmuls; each has a left and a right operand:

=========  ==============  ==========  ==========  =====================================
matmul     formula         left        right       inner dimension
=========  ==============  ==========  ==========  =====================================
forward    ``Y = X Wᵀ``    X           W           d_in
dgrad      ``dX = dY W``   dY          W           d_out
wgrad      ``dW = dYᵀ X``  dY          X           tokens (batch × sequence)
=========  ==============  ==========  ==========  =====================================

An operand is either 16-bit (``None``) or a :class:`Quant`: a format (``int8``, ``e4m3``, ``e5m2``) and a
scaling granularity named as in the paper, on the tensor as it appears in the layer. Only scales that factor
out of the inner sum are valid, i.e. ``"tensor"`` or one scale per vector along the inner dimension:

* forward: X ``row`` (per token), W ``row`` (per output channel);
* dgrad: dY ``row`` (per token), W ``column`` (per input channel);
* wgrad: dY ``column`` (per output channel, along tokens), X ``column`` (per input channel, along tokens).

``"block"`` scaling (any operand; both operands of a matmul or neither) is DeepSeek-V3's: one scale per 1×128
block along the inner dimension for an activation operand (X, dY, and both wgrad operands) and one per 128×128
block for the weight (:mod:`lowbit.kernels.blockwise`).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Literal

from lowbit.kernels._common import Format, Scaling
from lowbit.messages import did_you_mean

Save = Literal["input", "forward-quantized", "wgrad-quantized"]

# The vector-wise granularity allowed for each (matmul, side), named on the tensor as it appears.
_VECTOR = {
    ("forward", "left"): "row", ("forward", "right"): "row",
    ("dgrad", "left"): "row", ("dgrad", "right"): "column",
    ("wgrad", "left"): "column", ("wgrad", "right"): "column",
}
_OPERANDS = {"forward": ("X", "W"), "dgrad": ("dY", "W"), "wgrad": ("dY", "X")}


@dataclass(frozen=True)
class Quant:
    """A quantized operand: format and scaling granularity."""

    format: Format
    scaling: Scaling

    def __post_init__(self) -> None:
        if self.format not in ("int8", "e4m3", "e5m2"):
            raise ValueError(f"Quant.format must be 'int8', 'e4m3' or 'e5m2', got {self.format!r}")
        if self.scaling not in ("row", "column", "tensor", "block"):
            raise ValueError(f"Quant.scaling must be 'row', 'column', 'tensor' or 'block', got {self.scaling!r}")

    def __str__(self) -> str:
        return f"{self.format} {self.scaling}-wise"

    @property
    def block(self) -> bool:
        """Block-scaled (1×128 activation / 128×128 weight blocks)."""
        return self.scaling == "block"


@dataclass(frozen=True)
class Matmul:
    """One matmul of the layer: each operand 16-bit (``None``) or quantized. Both or neither are quantized."""

    left: Quant | None = None
    right: Quant | None = None

    @property
    def quantized(self) -> bool:
        return self.left is not None

    def describe(self, which: str) -> str:
        if not self.quantized:
            return "16-bit"
        a, b = _OPERANDS[which]
        return f"{a} {self.left}, {b} {self.right}"


BF16 = Matmul()


@dataclass(frozen=True)
class Recipe:
    """The precision of a linear layer's three matmuls and what the forward saves for the backward.

    ``simulated``: quantize → dequantize and run the matmul in 16/32-bit (any device; shows the numerics, not
    the speed). ``save``: ``"input"`` keeps X as given; ``"forward-quantized"`` keeps the forward's int8/fp8
    codes of X and its scales (the wgrad runs in 16-bit from X dequantized: SwitchBackM's memory saving);
    ``"wgrad-quantized"`` keeps X already quantized the way the quantized wgrad needs it.
    """

    name: str
    forward: Matmul = BF16
    dgrad: Matmul = BF16
    wgrad: Matmul = BF16
    simulated: bool = False
    save: Save = "input"
    description: str = ""

    def __post_init__(self) -> None:
        for which in ("forward", "dgrad", "wgrad"):
            mm = getattr(self, which)
            if not isinstance(mm, Matmul):
                raise TypeError(f"Recipe {self.name!r}: {which} must be a Matmul, got {type(mm).__name__}")
            if (mm.left is None) != (mm.right is None):
                raise ValueError(f"Recipe {self.name!r}: {which} quantizes one operand but not the other")
            for side, q in (("left", mm.left), ("right", mm.right)):
                allowed = ("tensor", _VECTOR[(which, side)], "block")
                if q is not None and q.scaling not in allowed:
                    op = _OPERANDS[which][0 if side == "left" else 1]
                    raise ValueError(
                        f"Recipe {self.name!r}: {which} operand {op} cannot be scaled {q.scaling}-wise "
                        f"(the scale must factor out of the inner sum: use one of {allowed})"
                    )
            if mm.quantized and mm.left.block != mm.right.block:
                raise ValueError(f"Recipe {self.name!r}: {which} block-scales one operand but not the other")
            if mm.quantized and (mm.left.format == "int8") != (mm.right.format == "int8"):
                raise ValueError(f"Recipe {self.name!r}: {which} mixes int8 with fp8")
        if self.save not in ("input", "forward-quantized", "wgrad-quantized"):
            raise ValueError(f"Recipe {self.name!r}: save must be 'input', 'forward-quantized' or "
                             f"'wgrad-quantized', got {self.save!r}")
        if self.save == "forward-quantized" and (not self.forward.quantized or self.wgrad.quantized):
            raise ValueError(f"Recipe {self.name!r}: save='forward-quantized' needs a quantized forward "
                             "and a 16-bit wgrad")
        if self.save == "wgrad-quantized" and not self.wgrad.quantized:
            raise ValueError(f"Recipe {self.name!r}: save='wgrad-quantized' needs a quantized wgrad")

    @property
    def quantized(self) -> bool:
        return self.forward.quantized or self.dgrad.quantized or self.wgrad.quantized

    @property
    def formats(self) -> set[str]:
        return {q.format for mm in (self.forward, self.dgrad, self.wgrad) for q in (mm.left, mm.right) if q}

    @property
    def uses_fp8(self) -> bool:
        return bool(self.formats & {"e4m3", "e5m2"})

    def describe(self) -> str:
        return "; ".join(f"{w}: {getattr(self, w).describe(w)}" for w in ("forward", "dgrad", "wgrad"))

    def as_simulated(self) -> Recipe:
        return dataclasses.replace(self, name=f"{self.name}-sim", simulated=True)


def _q(fmt: Format, scaling: Scaling) -> Quant:
    return Quant(fmt, scaling)


_SB_FWD = Matmul(_q("int8", "row"), _q("int8", "tensor"))
_SB_DGRAD = Matmul(_q("int8", "row"), _q("int8", "tensor"))

_BASE: list[Recipe] = [
    Recipe("bf16", description="16-bit baseline (the input's own dtype; bf16 under autocast)"),
    Recipe("switchback", _SB_FWD, _SB_DGRAD, BF16,
           description="SwitchBack: int8 forward and dgrad, 16-bit wgrad"),
    Recipe("switchback-q", Matmul(_q("int8", "row"), _q("int8", "row")),
           Matmul(_q("int8", "row"), _q("int8", "column")), BF16,
           description="SwitchBackQ: vector-wise W scales"),
    Recipe("switchback-m", _SB_FWD, _SB_DGRAD, BF16, save="forward-quantized",
           description="SwitchBackM: saves X as int8 + row scales; wgrad in 16-bit from X dequantized"),
    Recipe("int8-all", _SB_FWD, _SB_DGRAD, Matmul(_q("int8", "column"), _q("int8", "column")),
           save="wgrad-quantized", description="naive int8 training: the wgrad in int8 too, along tokens"),
    Recipe("llm-int8", Matmul(_q("int8", "row"), _q("int8", "row")),
           Matmul(_q("int8", "row"), _q("int8", "column")),
           Matmul(_q("int8", "column"), _q("int8", "column")), save="wgrad-quantized",
           description="LLM.int8()-style vector-wise int8 for all three matmuls (no outlier decomposition)"),
    Recipe("fp8-switchback", Matmul(_q("e4m3", "row"), _q("e4m3", "tensor")),
           Matmul(_q("e5m2", "row"), _q("e4m3", "tensor")), BF16,
           description="fp8 SwitchBack: e4m3 forward, e5m2×e4m3 dgrad, 16-bit wgrad"),
    Recipe("fp8-tensorwise", Matmul(_q("e4m3", "tensor"), _q("e4m3", "tensor")),
           Matmul(_q("e5m2", "tensor"), _q("e4m3", "tensor")),
           Matmul(_q("e5m2", "tensor"), _q("e4m3", "tensor")), save="wgrad-quantized",
           description="standard fp8 training: tensor-wise scales, e4m3 forward, e5m2 gradients"),
    Recipe("fp8-rowwise", Matmul(_q("e4m3", "row"), _q("e4m3", "row")),
           Matmul(_q("e5m2", "row"), _q("e4m3", "column")),
           Matmul(_q("e5m2", "column"), _q("e4m3", "column")), save="wgrad-quantized",
           description="fp8 with row/column-wise scales in all three matmuls"),
    Recipe("switchback-block", Matmul(_q("int8", "block"), _q("int8", "block")),
           Matmul(_q("int8", "block"), _q("int8", "block")), BF16,
           description="SwitchBack with block scales: int8 1×128 activation / 128×128 weight blocks, 16-bit wgrad"),
    Recipe("fp8-blockwise", Matmul(_q("e4m3", "block"), _q("e4m3", "block")),
           Matmul(_q("e4m3", "block"), _q("e4m3", "block")),
           Matmul(_q("e4m3", "block"), _q("e4m3", "block")), save="wgrad-quantized",
           description="DeepSeek-V3 fp8: e4m3 1×128 activation / 128×128 weight blocks in all three matmuls"),
]

RECIPES: dict[str, Recipe] = {r.name: r for r in _BASE}
RECIPES.update({f"{r.name}-sim": r.as_simulated() for r in _BASE if r.quantized})


def get_recipe(recipe: str | Recipe) -> Recipe:
    """A recipe by name (see ``RECIPES``) or the recipe itself."""
    if isinstance(recipe, Recipe):
        return recipe
    try:
        return RECIPES[recipe]
    except (KeyError, TypeError):
        hint = did_you_mean([recipe], RECIPES) if isinstance(recipe, str) else ""
        raise ValueError(f"unknown recipe {recipe!r}{hint}; choose one of: {', '.join(RECIPES)}") from None
