"""``LayerNormLinear``, ``LayerNormAlias`` and ``fuse_layernorm``: a LayerNorm fused with its consumer's quantization.

**How state_dict keys stay unchanged.** In a pre-LN block the LayerNorm (``block.ln2``) and its consumer
(``block.mlp``, or ``block.attn.qkv`` inside the attention) are separate modules with their own keys.
:func:`fuse_layernorm` replaces the LayerNorm by a :class:`LayerNormAlias` — an ``nn.LayerNorm`` that owns the
same parameters under the same names (``ln2.weight``, ``ln2.bias``) but whose forward is the identity — and the
consumer by a :class:`LayerNormLinear` / :class:`~lowbit.nn.LayerNormMLP` that *refers* to the alias (an
unregistered reference, read at every forward, so ``.to()``, FSDP and ``load_state_dict`` keep working) and
applies the LayerNorm itself, fused with the quantization of its output. Nothing is registered twice, so the
keys, ``parameters()`` and checkpoints are those of the plain model. This is only valid when the LayerNorm's
output feeds that consumer alone — the caller asserts it (``lowbit.models.convert_clip`` does so for CLIP's
blocks, where ``ln1`` feeds only ``attn.qkv`` and ``ln2`` only ``mlp``). ``unconvert`` undoes both halves.
"""

from __future__ import annotations

import torch
from torch import nn

from lowbit.functional.layernorm_linear import layernorm_linear
from lowbit.functional.recipe import Recipe, get_recipe
from lowbit.nn._names import class_path
from lowbit.nn.attention import LowbitMultiheadAttention
from lowbit.nn.linear import LowbitLinear
from lowbit.nn.mlp import LayerNormMLP, LowbitMLP
from lowbit.nn.packed import PackedLinear, ProjectionGroup

__all__ = ["LayerNormAlias", "LayerNormLinear", "fuse_layernorm"]


class LayerNormAlias(nn.LayerNorm):
    """Holds a LayerNorm's parameters where the model had it; identity forward (its consumer applies the norm)."""

    @classmethod
    def from_layernorm(cls, ln: nn.LayerNorm, consumer: str = "") -> LayerNormAlias:
        new = cls(ln.normalized_shape, eps=ln.eps, elementwise_affine=False, bias=False, device="meta")
        new.elementwise_affine = ln.elementwise_affine
        new.weight, new.bias = ln.weight, ln.bias
        new.consumer = consumer
        new._original = (ln if type(ln) is not nn.LayerNorm else None,)  # a subclass comes back as itself
        new.train(ln.training)
        return new

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x

    def to_layernorm(self) -> nn.LayerNorm:
        """A plain ``nn.LayerNorm`` sharing these parameters (or the original module, where it was a subclass)."""
        original = getattr(self, "_original", (None,))[0]
        if original is not None:
            original.weight, original.bias = self.weight, self.bias
            original.train(self.training)
            return original
        ln = nn.LayerNorm(self.normalized_shape, eps=self.eps, elementwise_affine=False, bias=False, device="meta")
        ln.elementwise_affine = self.elementwise_affine
        ln.weight, ln.bias = self.weight, self.bias
        ln.train(self.training)
        return ln

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, fused into {self.consumer or 'its consumer'} (identity here)"


class LayerNormLinear(LowbitLinear):
    """``linear(layer_norm(x))`` with the LayerNorm fused with the quantization of its output.

    Built directly (``LayerNormLinear(d_in, d_out, recipe=...)``) it owns its LayerNorm as ``norm``; made by
    :func:`fuse_layernorm` it refers to the model's own LayerNorm (a :class:`LayerNormAlias`), so keys are unchanged.
    """

    def __init__(self, in_features: int, out_features: int, bias: bool = True, recipe: str | Recipe = "switchback",
                 device: torch.device | str | None = None, dtype: torch.dtype | None = None, *,
                 eps: float = 1e-5) -> None:
        super().__init__(in_features, out_features, bias=bias, recipe=recipe, device=device, dtype=dtype)
        self.norm = nn.LayerNorm(in_features, eps=eps, device=device, dtype=dtype)
        self._norm_ref = (None,)

    @classmethod
    def from_linear_and_norm(cls, module: nn.Linear, norm: nn.LayerNorm,
                             recipe: str | Recipe | None = None) -> LayerNormLinear:
        """Share ``module``'s parameters and refer to ``norm`` (not registered here)."""
        if recipe is None:
            recipe = module.recipe if isinstance(module, LowbitLinear) else "switchback"
        new = cls.__new__(cls)
        nn.Module.__init__(new)
        new.in_features, new.out_features = module.in_features, module.out_features
        new.weight, new.bias = module.weight, module.bias
        new.recipe = get_recipe(recipe)
        new._norm_ref = (norm,)
        new.train(module.training)
        return new

    @property
    def layer_norm(self) -> nn.LayerNorm:
        return self._norm_ref[0] if self._norm_ref[0] is not None else self._modules["norm"]  # type: ignore

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        ln = self.layer_norm
        if tuple(ln.normalized_shape) != (x.shape[-1],):
            raise ValueError(f"LayerNormLinear: the LayerNorm normalizes {tuple(ln.normalized_shape)}, got input of "
                             f"shape {tuple(x.shape)}")
        return layernorm_linear(x, ln.weight, ln.bias, self.weight, self.bias, self.recipe, ln.eps)

    def to_linear(self) -> nn.Linear:
        """A plain ``nn.Linear`` sharing the linear's parameters (the referred LayerNorm is unconverted separately)."""
        return super().to_linear()


# LayerNorm subclasses whose forward is F.layer_norm over the last dims, differing from nn.LayerNorm only in the
# dtype they compute in or return (open_clip's cast back to the input's dtype and its float32 variant; timm's, with
# its optional 16-bit "fast norm" under autocast): the fused consumer normalizes in float32 and quantizes the rows.
CASTING_LAYERNORMS = frozenset({"open_clip.transformer.LayerNorm", "open_clip.transformer.LayerNormFp32",
                                "timm.layers.norm.LayerNorm", "timm.layers.norm.LayerNormFp32"})


def _get(root: nn.Module, fqn: str) -> tuple[nn.Module, str, nn.Module]:
    parent_fqn, _, name = fqn.rpartition(".")
    parent = root.get_submodule(parent_fqn) if parent_fqn else root
    return parent, name, getattr(parent, name)


def fuse_layernorm(root: nn.Module, norm: str, consumer: str) -> str | None:
    """Fuse the LayerNorm at ``norm`` (an fqn under ``root``) into the converted module at ``consumer``.

    ``consumer`` must be a ``LowbitLinear`` (becomes :class:`LayerNormLinear`), a :class:`~lowbit.nn.LowbitMLP`
    (becomes :class:`~lowbit.nn.LayerNormMLP`), a :class:`~lowbit.nn.LowbitMultiheadAttention` (normalizes its
    ``query``: :meth:`~lowbit.nn.LowbitMultiheadAttention.fuse_norm`) or a :class:`~lowbit.nn.PackedLinear` (its
    whole :class:`~lowbit.nn.ProjectionGroup` normalizes its input), and the LayerNorm's output must feed only that
    consumer (the caller asserts it). Returns ``None`` on success, else the reason it did not fuse (nothing is
    changed then).
    """
    np_, nname, ln = _get(root, norm)
    cp, cname, mod = _get(root, consumer)
    if type(ln) is not nn.LayerNorm and class_path(ln) not in CASTING_LAYERNORMS:
        return f"{norm} is a {type(ln).__name__}, not an nn.LayerNorm"
    if len(ln.normalized_shape) != 1:
        return f"{norm} normalizes {tuple(ln.normalized_shape)}, not the last dim only"
    # the consumer's input width, and what takes the LayerNorm: a module that normalizes its own input (in place), or
    # None where a LayerNormMLP / LayerNormLinear replaces the consumer
    takes: ProjectionGroup | LowbitMultiheadAttention | None
    if isinstance(mod, PackedLinear):  # the whole group reads the LayerNorm's output
        takes, width, what = mod.group, mod.in_features, "in_features"
    elif isinstance(mod, LowbitMultiheadAttention):  # it normalizes its query
        takes, width, what = mod, mod.embed_dim, "embed_dim"
    elif isinstance(mod, LowbitMLP):
        takes, width, what = None, mod.fc1.in_features, "in_features"
    elif isinstance(mod, LowbitLinear):
        takes, width, what = None, mod.in_features, "in_features"
    else:
        return (f"{consumer} is a {type(mod).__name__}, not a converted LowbitLinear / LowbitMLP / "
                "LowbitMultiheadAttention")
    if isinstance(mod, (LayerNormLinear, LayerNormMLP)) or (takes is not None and takes.layer_norm is not None):
        return f"{consumer} already has a LayerNorm fused in"
    if width != ln.normalized_shape[0]:
        return f"{norm} width {ln.normalized_shape[0]} ≠ {consumer}'s {what} {width}"
    alias = LayerNormAlias.from_layernorm(ln, consumer)
    if takes is not None:
        takes.fuse_norm(alias)
    else:
        setattr(cp, cname, LayerNormMLP.from_mlp(mod, alias) if isinstance(mod, LowbitMLP)
                else LayerNormLinear.from_linear_and_norm(mod, alias))
    setattr(np_, nname, alias)
    return None
