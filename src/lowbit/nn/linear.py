"""``LowbitLinear``: an ``nn.Linear`` whose three matmuls follow a recipe."""

from __future__ import annotations

import torch
from torch import nn

from lowbit.functional.linear import linear
from lowbit.functional.recipe import Recipe, get_recipe


class LowbitLinear(nn.Linear):
    """Drop-in ``nn.Linear`` running forward / dgrad / wgrad as ``recipe`` says (default: SwitchBack int8).

    Same parameters and state_dict keys as ``nn.Linear``, so checkpoints move freely between converted and
    plain models; the recipe is configuration, not state.
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        bias: bool = True,
        recipe: str | Recipe = "switchback",
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__(in_features, out_features, bias=bias, device=device, dtype=dtype)
        self.recipe = get_recipe(recipe)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return linear(x, self.weight, self.bias, self.recipe)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, recipe={self.recipe.name!r}"

    @classmethod
    def from_linear(cls, module: nn.Linear, recipe: str | Recipe = "switchback") -> LowbitLinear:
        """A ``LowbitLinear`` sharing ``module``'s parameter objects (no copy, optimizer state stays valid)."""
        new = cls(module.in_features, module.out_features, bias=module.bias is not None, recipe=recipe,
                  device="meta")
        new.weight = module.weight
        new.bias = module.bias
        new.train(module.training)
        return new

    def to_linear(self) -> nn.Linear:
        """A plain ``nn.Linear`` sharing this module's parameters."""
        new = nn.Linear(self.in_features, self.out_features, bias=self.bias is not None, device="meta")
        new.weight = self.weight
        new.bias = self.bias
        new.train(self.training)
        return new


class SwitchBackLinear(LowbitLinear):
    """``LowbitLinear`` with the paper's SwitchBack recipe (int8 forward and dgrad, 16-bit wgrad)."""

    def __init__(self, in_features: int, out_features: int, bias: bool = True,
                 device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> None:
        super().__init__(in_features, out_features, bias=bias, recipe="switchback", device=device, dtype=dtype)
