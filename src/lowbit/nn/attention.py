"""``LowbitMultiheadAttention``: a drop-in ``nn.MultiheadAttention`` whose in- and out-projections follow a recipe.

``nn.MultiheadAttention`` keeps its packed in-projection as a bare parameter (``in_proj_weight``, 3E × E) and
calls ``F.multi_head_attention_forward``, which never calls ``out_proj``'s forward: converting its ``out_proj``
as an ``nn.Linear`` changes nothing. This subclass computes the same attention itself: the packed in-projection
and the out-projection through :func:`lowbit.functional.linear` with the module's recipe, the attention in between
through ``F.scaled_dot_product_attention`` (masks and ``is_causal`` as PyTorch's ``need_weights=False`` path).
Parameters, buffers and ``state_dict`` keys are PyTorch's, and ``isinstance(m, nn.MultiheadAttention)`` holds, so
``nn.TransformerEncoderLayer`` (whose inference fast path reads the parameters directly) and checkpoints work
unchanged.

Calls that need what SDPA does not give run PyTorch's own path (16-bit): ``need_weights=True`` (PyTorch's
default: pass ``need_weights=False``, as open_clip and ``nn.TransformerEncoderLayer`` do) and nested tensors.
Modules built with ``kdim``/``vdim`` other than ``embed_dim``, ``add_bias_kv`` or ``add_zero_attn`` are not
converted (:func:`unsupported`).

**A LayerNorm fused in front** (:meth:`LowbitMultiheadAttention.fuse_norm`, done by ``convert(fuse=True)`` for
open_clip's ``ResidualAttentionBlock``, whose ``ln_1`` feeds the attention alone): the block's LayerNorm becomes an
identity :class:`~lowbit.nn.LayerNormAlias`, and this module normalizes ``query`` itself, in the pass that writes
the in-projection's 8-bit operand (:func:`lowbit.functional.layernorm_linear`). ``key`` and ``value`` are normalized
too where they are the same tensor as ``query`` (self-attention); a different tensor (cross-attention, normalized by
its own LayerNorm) is projected as it comes.
"""

from __future__ import annotations

import logging

import torch
import torch.nn.functional as F
from torch import nn

from lowbit.functional.layernorm_linear import layernorm_linear
from lowbit.functional.linear import linear
from lowbit.functional.recipe import Recipe, get_recipe
from lowbit.nn import sdpa

logger = logging.getLogger(__name__)


def unsupported(module: nn.MultiheadAttention) -> str | None:
    """Why ``module`` cannot become a :class:`LowbitMultiheadAttention`, or ``None`` when it can."""
    if not module._qkv_same_embed_dim:
        return f"kdim/vdim ({module.kdim}/{module.vdim}) differ from embed_dim {module.embed_dim}: separate q/k/v weights"
    if module.bias_k is not None:
        return "add_bias_kv=True (learned key/value bias rows)"
    if module.add_zero_attn:
        return "add_zero_attn=True"
    return None


def _additive(mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """PyTorch's mask convention as an additive float mask: a bool ``True`` masks out (−inf), a float is added."""
    if mask.dtype == torch.bool:
        return torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_fill(mask, float("-inf"))
    if not mask.is_floating_point():
        raise TypeError(f"attention masks must be bool or floating point, got {mask.dtype}")
    return mask.to(dtype)


class LowbitMultiheadAttention(nn.MultiheadAttention):
    """``nn.MultiheadAttention`` with the in-projection (packed q/k/v) and ``out_proj`` running ``recipe``.

    Build it with :meth:`from_module` (``lowbit.convert`` does) or as ``nn.MultiheadAttention`` plus ``recipe=``.
    """

    def __init__(self, embed_dim: int, num_heads: int, *args, recipe: str | Recipe = "switchback", **kwargs) -> None:
        super().__init__(embed_dim, num_heads, *args, **kwargs)
        why = unsupported(self)
        if why:
            raise ValueError(f"LowbitMultiheadAttention: {why} is not supported (keep nn.MultiheadAttention)")
        self.recipe = get_recipe(recipe)
        self._warned = False
        self._norm_ref: tuple[nn.LayerNorm | None] = (None,)

    @classmethod
    def from_module(cls, module: nn.MultiheadAttention, recipe: str | Recipe = "switchback") -> LowbitMultiheadAttention:
        """A ``LowbitMultiheadAttention`` sharing ``module``'s parameters, buffers, submodules and hooks (no copy:
        optimizer state stays valid); ``ValueError`` naming the reason when :func:`unsupported` gives one."""
        why = unsupported(module)
        if why:
            raise ValueError(f"LowbitMultiheadAttention: {why} is not supported (keep nn.MultiheadAttention)")
        new = cls.__new__(cls)
        new.__dict__.update({k: (v.copy() if isinstance(v, dict) else v) for k, v in module.__dict__.items()})
        new.recipe = get_recipe(recipe)
        new._warned = False
        new._norm_ref = (None,)
        return new

    def to_module(self) -> nn.MultiheadAttention:
        """The plain ``nn.MultiheadAttention`` sharing this module's parameters."""
        new = nn.MultiheadAttention.__new__(nn.MultiheadAttention)
        new.__dict__.update({k: (v.copy() if isinstance(v, dict) else v) for k, v in self.__dict__.items()
                             if k not in ("recipe", "_warned", "_norm_ref")})
        return new

    @property
    def layer_norm(self) -> nn.LayerNorm | None:
        """The LayerNorm fused in front (applied to ``query`` here), or ``None``."""
        return getattr(self, "_norm_ref", (None,))[0]

    def fuse_norm(self, norm: nn.LayerNorm) -> None:
        """Apply ``norm`` (a LayerNorm over ``embed_dim``, referred to, not registered: its keys stay where the
        model has them) to ``query`` in the in-projection's quantizing pass. The caller asserts that ``norm``'s
        output feeds this module alone and makes ``norm`` itself the identity (:func:`lowbit.nn.fuse_layernorm`)."""
        if tuple(norm.normalized_shape) != (self.embed_dim,):
            raise ValueError(f"LowbitMultiheadAttention.fuse_norm: the LayerNorm normalizes "
                             f"{tuple(norm.normalized_shape)}, not embed_dim ({self.embed_dim},)")
        self._norm_ref = (norm,)

    def extra_repr(self) -> str:
        ln = self.layer_norm
        return f"recipe={self.recipe.name!r}" + (", LayerNorm fused in front" if ln is not None else "")

    def _fallback(self, why: str) -> None:
        if not self._warned and not torch.compiler.is_compiling():
            self._warned = True
            logger.warning("LowbitMultiheadAttention: %s: PyTorch's path runs instead (16-bit, not %s)", why,
                           self.recipe.name)

    def forward(
        self,
        query: torch.Tensor,
        key: torch.Tensor,
        value: torch.Tensor,
        key_padding_mask: torch.Tensor | None = None,
        need_weights: bool = True,
        attn_mask: torch.Tensor | None = None,
        average_attn_weights: bool = True,
        is_causal: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """As ``nn.MultiheadAttention.forward``; returns ``(output, None)`` unless ``need_weights=True``."""
        if need_weights or query.is_nested or key.is_nested or value.is_nested:
            self._fallback("need_weights=True" if need_weights else "nested tensor input")
            if (ln := self.layer_norm) is not None:  # the fused LayerNorm, on query and whatever is query
                normed = F.layer_norm(query, ln.normalized_shape, ln.weight, ln.bias, ln.eps)
                key, value = (normed if t is query else t for t in (key, value))
                query = normed
            return super().forward(query, key, value, key_padding_mask=key_padding_mask, need_weights=need_weights,
                                   attn_mask=attn_mask, average_attn_weights=average_attn_weights,
                                   is_causal=is_causal)
        batched = query.dim() == 3
        shared = (query is key, key is value, query is value)  # before any reshape makes three tensors of one
        if not batched:  # unbatched (L, E): a batch of one
            query, key, value = (t.unsqueeze(0 if self.batch_first else 1) for t in (query, key, value))
            key_padding_mask = key_padding_mask.unsqueeze(0) if key_padding_mask is not None else None
        out = self._attention(query, key, value, key_padding_mask, attn_mask, is_causal, shared)
        if not batched:
            out = out.squeeze(0 if self.batch_first else 1)
        return out, None

    def _project(self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                 shared: tuple[bool, bool, bool]):
        """q, k, v from the packed in-projection: one matmul per distinct input over its rows of ``in_proj_weight``
        (one for self-attention; ``shared``: query is key, key is value, query is value, as the caller passed them);
        the fused LayerNorm, if any, on the input that is ``query``."""
        w, b, e, r, ln = self.in_proj_weight, self.in_proj_bias, self.embed_dim, self.recipe, self.layer_norm

        def proj(x: torch.Tensor, lo: int, hi: int, normed: bool) -> torch.Tensor:
            wt, bs = (w, b) if (lo, hi) == (0, 3 * e) else (w[lo:hi], b[lo:hi] if b is not None else None)
            if normed and ln is not None:
                return layernorm_linear(x, ln.weight, ln.bias, wt, bs, r, ln.eps)
            return linear(x, wt, bs, r)

        qk, kv, qv = shared
        if qk and kv:
            return proj(query, 0, 3 * e, True).chunk(3, dim=-1)
        if kv:
            return (proj(query, 0, e, True), *proj(key, e, 3 * e, False).chunk(2, dim=-1))
        if qk:
            return (*proj(query, 0, 2 * e, True).chunk(2, dim=-1), proj(value, 2 * e, 3 * e, False))
        return proj(query, 0, e, True), proj(key, e, 2 * e, False), proj(value, 2 * e, 3 * e, qv)

    def _attention(self, query, key, value, key_padding_mask, attn_mask, is_causal,
                   shared: tuple[bool, bool, bool]) -> torch.Tensor:
        if not self.batch_first:  # (L, N, E) → (N, L, E)
            query, key, value = (t.transpose(0, 1) for t in (query, key, value))
        n, tgt, _ = query.shape
        src = key.shape[1]
        h = self.num_heads
        q, k, v = self._project(query, key, value, shared)
        q, k, v = (t.reshape(n, -1, h, self.head_dim).transpose(1, 2) for t in (q, k, v))  # (N, H, L, D)
        if is_causal and attn_mask is None:
            raise RuntimeError("Need attn_mask if specifying the is_causal hint (as nn.MultiheadAttention). You may "
                               "use nn.Transformer.generate_square_subsequent_mask to create this mask.")
        mask = None
        if is_causal and key_padding_mask is None:
            attn_mask = None  # the hint: SDPA's causal kernel, as PyTorch's need_weights=False path
        else:
            is_causal = False
            if attn_mask is not None:
                mask = _additive(attn_mask, q.dtype)
                mask = mask.view(n, h, tgt, src) if mask.dim() == 3 and mask.shape[0] != 1 else mask
            if key_padding_mask is not None:
                pad = _additive(key_padding_mask, q.dtype).view(n, 1, 1, src)
                mask = pad if mask is None else mask + pad
        o = sdpa.attention(q, k, v, mask, self.dropout if self.training else 0.0, is_causal)
        # (N, H, L, D) → (N, L, E) or (L, N, E): the output in the caller's layout, contiguous
        o = o.permute(0, 2, 1, 3) if self.batch_first else o.permute(2, 0, 1, 3)
        o = o.reshape(*o.shape[:2], self.embed_dim)
        return linear(o, self.out_proj.weight, self.out_proj.bias, self.recipe)
