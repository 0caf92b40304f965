"""``LowbitMLP`` (fc1 → activation → fc2 as one fused autograd function) and ``LayerNormMLP`` (LN in front).

A converted MLP keeps the original module's children under their original names (``fc1``/``fc2``, ``c_fc``/
``c_proj``, ``fc``/``proj``, ``0``/``2`` of an ``nn.Sequential``...), its two linears as ``LowbitLinear`` sharing the
original parameters, so ``state_dict`` keys and optimizer state are unchanged; ``unconvert`` gives back the
original module object with plain ``nn.Linear`` children.
"""

from __future__ import annotations

from collections import OrderedDict

import torch
from torch import nn

from lowbit.functional.layernorm_linear import layernorm_mlp
from lowbit.functional.mlp import mlp
from lowbit.functional.recipe import Recipe, get_recipe
from lowbit.nn.linear import LowbitLinear

__all__ = ["LayerNormMLP", "LowbitMLP"]

_ACT_MODULES = {"gelu": lambda: nn.GELU(), "gelu_tanh": lambda: nn.GELU(approximate="tanh")}


class _QuickGELU(nn.Module):
    """``x · σ(1.702 x)`` (the activation of OpenAI's CLIP)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.sigmoid(1.702 * x)


def _act_module(activation: str) -> nn.Module:
    return _ACT_MODULES.get(activation, _QuickGELU)()


class LowbitMLP(nn.Module):
    """``fc2(act(fc1(x)))`` with both linears' matmuls as ``recipe`` says, as one autograd function.

    Build one with ``LowbitMLP(in_features, hidden_features, out_features, activation=..., recipe=...)`` (children
    ``fc1``, ``act``, ``fc2``) or from an existing MLP module with :meth:`from_module` (``lowbit.convert`` does this).
    ``activation``: ``"gelu"`` (erf), ``"gelu_tanh"``, ``"quick_gelu"``. ``recompute_activation=True`` recomputes the
    hidden activation in the backward instead of saving it (recipes with a 16-bit wgrad).
    """

    def __init__(
        self,
        in_features: int,
        hidden_features: int,
        out_features: int | None = None,
        *,
        activation: str = "gelu",
        bias: bool = True,
        recipe: str | Recipe = "switchback",
        recompute_activation: bool = False,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        recipe = get_recipe(recipe)
        out_features = in_features if out_features is None else out_features
        kw = dict(bias=bias, recipe=recipe, device=device, dtype=dtype)
        self._setup(OrderedDict(fc1=LowbitLinear(in_features, hidden_features, **kw), act=_act_module(activation),
                                fc2=LowbitLinear(hidden_features, out_features, **kw)),
                    "fc1", "fc2", activation, recipe, None, recompute_activation)

    def _setup(self, children, fc1: str, fc2: str, activation: str, recipe: Recipe, original: nn.Module | None,
               recompute_activation: bool) -> None:
        from lowbit.functional._pieces import ACTIVATIONS

        if activation not in ACTIVATIONS:
            raise ValueError(f"{type(self).__name__}: activation must be one of {ACTIVATIONS}, got {activation!r}")
        for name, child in children.items():
            if name in (fc1, fc2):
                if not isinstance(child, nn.Linear):
                    raise TypeError(f"{type(self).__name__}: {name!r} must be an nn.Linear, got {type(child).__name__}")
                if not isinstance(child, LowbitLinear):
                    child = LowbitLinear.from_linear(child, recipe)
                child.recipe = recipe
            self.add_module(name, child)
        self.fc1_name, self.fc2_name = fc1, fc2
        self.activation = activation
        self._recipe = recipe
        self.recompute_activation = recompute_activation
        self._original = (original,)  # a tuple: not registered, so its parameters are not listed twice

    @classmethod
    def from_module(
        cls,
        module: nn.Module,
        fc1: str,
        fc2: str,
        activation: str,
        recipe: str | Recipe = "switchback",
        *,
        recompute_activation: bool = False,
    ) -> LowbitMLP:
        """Wrap ``module`` (whose forward is ``fc2(act(fc1(x)))``; the caller has checked that) keeping its children
        and their names; parameters are shared. ``unconvert`` returns ``module`` itself."""
        new = cls.__new__(cls)
        nn.Module.__init__(new)
        new._setup(OrderedDict(module.named_children()), fc1, fc2, activation, get_recipe(recipe), module,
                   recompute_activation)
        new.train(module.training)
        return new

    @property
    def fc1(self) -> LowbitLinear:
        return self._modules[self.fc1_name]  # type: ignore[return-value]

    @property
    def fc2(self) -> LowbitLinear:
        return self._modules[self.fc2_name]  # type: ignore[return-value]

    @property
    def recipe(self) -> Recipe:
        return self._recipe

    @recipe.setter
    def recipe(self, recipe: str | Recipe) -> None:
        self._recipe = get_recipe(recipe)
        self.fc1.recipe = self.fc2.recipe = self._recipe

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        fc1, fc2 = self.fc1, self.fc2
        return mlp(x, fc1.weight, fc1.bias, fc2.weight, fc2.bias, self.activation, self._recipe,
                   recompute_activation=self.recompute_activation)

    def extra_repr(self) -> str:
        return f"{self.fc1_name} → {self.activation} → {self.fc2_name}, recipe={self._recipe.name!r}"

    def to_module(self) -> nn.Module:
        """The unfused module: the original one (children restored as plain ``nn.Linear`` sharing parameters), or
        an ``nn.Sequential`` with the same child names for a module built directly."""
        children = OrderedDict()
        for name, child in self.named_children():
            children[name] = child.to_linear() if isinstance(child, LowbitLinear) else child
        original = self._original[0]
        if original is None:
            out: nn.Module = nn.Sequential(children)
        else:
            out = original
            for name, child in children.items():
                setattr(out, name, child)
        out.train(self.training)
        return out


class LayerNormMLP(LowbitMLP):
    """``fc2(act(fc1(layer_norm(x))))``: :class:`LowbitMLP` with the LayerNorm fused with fc1's input quantization.

    Built directly it owns its LayerNorm as ``norm`` (``LayerNormMLP(d, hidden, ...)``: keys ``norm.*``, ``fc1.*``,
    ``fc2.*``). Made by :func:`lowbit.nn.fuse_layernorm` it only *refers* to the model's own LayerNorm, which stays
    where it was as a :class:`~lowbit.nn.LayerNormAlias` (same parameters and keys, identity forward), so
    ``state_dict`` keys do not change.
    """

    def __init__(self, in_features: int, hidden_features: int, out_features: int | None = None, *,
                 eps: float = 1e-5, **kwargs) -> None:
        super().__init__(in_features, hidden_features, out_features, **kwargs)
        self.norm = nn.LayerNorm(in_features, eps=eps, device=kwargs.get("device"), dtype=kwargs.get("dtype"))
        self._norm_ref = (None,)

    @classmethod
    def from_mlp(cls, mlp_module: LowbitMLP, norm: nn.LayerNorm) -> LayerNormMLP:
        """Fuse ``norm`` (kept where it is: not registered here) in front of ``mlp_module`` (children shared)."""
        new = cls.__new__(cls)
        nn.Module.__init__(new)
        new._setup(OrderedDict(mlp_module.named_children()), mlp_module.fc1_name, mlp_module.fc2_name,
                   mlp_module.activation, mlp_module.recipe, mlp_module._original[0], mlp_module.recompute_activation)
        new._norm_ref = (norm,)
        new.train(mlp_module.training)
        return new

    @property
    def layer_norm(self) -> nn.LayerNorm:
        """The LayerNorm applied in front (owned as ``norm``, or the model's own one this module refers to)."""
        return self._norm_ref[0] if self._norm_ref[0] is not None else self._modules["norm"]  # type: ignore

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        ln, fc1, fc2 = self.layer_norm, self.fc1, self.fc2
        if tuple(ln.normalized_shape) != (x.shape[-1],):
            raise ValueError(f"LayerNormMLP: the LayerNorm normalizes {tuple(ln.normalized_shape)}, got input of "
                             f"shape {tuple(x.shape)}")
        return layernorm_mlp(x, ln.weight, ln.bias, fc1.weight, fc1.bias, fc2.weight, fc2.bias, self.activation,
                             self._recipe, ln.eps, recompute_activation=self.recompute_activation)

    def to_unfused_mlp(self) -> LowbitMLP:
        """The :class:`LowbitMLP` without the LayerNorm (children shared)."""
        new = LowbitMLP.__new__(LowbitMLP)
        nn.Module.__init__(new)
        owned = self._norm_ref[0] is None  # built directly: "norm" is this module's own LayerNorm
        new._setup(OrderedDict((n, c) for n, c in self.named_children() if not (owned and n == "norm")), self.fc1_name,
                   self.fc2_name, self.activation, self._recipe, self._original[0], self.recompute_activation)
        new.train(self.training)
        return new

    def to_module(self) -> nn.Module:
        """Unfused: the original MLP module (the LayerNorm it refers to is unconverted where it lives), or, for a
        module built directly, ``nn.Sequential(norm, fc1, act, fc2)``."""
        if self._norm_ref[0] is not None:
            return self.to_unfused_mlp().to_module()
        rest = self.to_unfused_mlp().to_module()
        out = nn.Sequential(OrderedDict([("norm", self._modules["norm"]), *rest.named_children()]))
        out.train(self.training)
        return out
