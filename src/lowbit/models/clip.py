"""CLIP: a ViT image tower and a causal text tower trained with a symmetric contrastive loss.

Every matmul of the blocks is an ``nn.Linear`` (``attn.qkv``, ``attn.out``, ``mlp.fc``, ``mlp.proj``), as are the
two final projections (``visual.proj``, ``text.proj``), so a precision recipe (``lowbit.nn.convert``) can swap
them. Initialisation follows open_clip.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from lowbit.models.config import CLIPConfig, TextConfig, VisionConfig
from lowbit.models.tokenizer import eot_token_id, pad_token_id
from lowbit.nn import sdpa
from lowbit.nn.layer_scale import LayerScale

__all__ = ["CLIP", "Attention", "Block", "TextTransformer", "VisionTransformer", "clip_loss"]


class Attention(nn.Module):
    """Multi-head self-attention (``scaled_dot_product_attention`` under :mod:`lowbit.nn.sdpa`'s backend
    preference), optional per-head LayerNorm on q and k."""

    def __init__(self, width: int, heads: int, qk_norm: bool = False, causal: bool = False) -> None:
        super().__init__()
        self.heads, self.head_dim, self.causal = heads, width // heads, causal
        self.qkv = nn.Linear(width, 3 * width)
        self.out = nn.Linear(width, width)
        self.q_norm = nn.LayerNorm(self.head_dim) if qk_norm else nn.Identity()
        self.k_norm = nn.LayerNorm(self.head_dim) if qk_norm else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        # split along the packed dim first, then move heads: the backward stacks dq, dk, dv straight into the
        # contiguous [b, n, 3c] gradient that the qkv linear's quantizer and wgrad both read (one write; after a
        # permute-first split inductor's CPU code wrote it three times, its CUDA code once)
        q, k, v = (t.transpose(1, 2) for t in self.qkv(x).view(b, n, 3, self.heads, self.head_dim).unbind(2))
        q, k = self.q_norm(q), self.k_norm(k)
        y = sdpa.attention(q, k, v, is_causal=self.causal)
        return self.out(y.transpose(1, 2).reshape(b, n, c))


class MLP(nn.Module):
    """``fc -> GELU -> proj``."""

    def __init__(self, width: int, hidden: int) -> None:
        super().__init__()
        self.fc = nn.Linear(width, hidden)
        self.act = nn.GELU()
        self.proj = nn.Linear(hidden, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(self.act(self.fc(x)))


class Block(nn.Module):
    """Pre-LN transformer block: ``x + ls1(attn(ln1(x)))``, then ``x + ls2(mlp(ln2(x)))``."""

    def __init__(
        self,
        width: int,
        heads: int,
        mlp_ratio: float = 4.0,
        *,
        causal: bool = False,
        qk_norm: bool = False,
        layer_scale_init: float | None = None,
    ) -> None:
        super().__init__()
        self.ln1 = nn.LayerNorm(width)
        self.attn = Attention(width, heads, qk_norm=qk_norm, causal=causal)
        self.ls1 = LayerScale(width, layer_scale_init) if layer_scale_init is not None else nn.Identity()
        self.ln2 = nn.LayerNorm(width)
        self.mlp = MLP(width, int(width * mlp_ratio))
        self.ls2 = LayerScale(width, layer_scale_init) if layer_scale_init is not None else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.ls1(self.attn(self.ln1(x)))
        return x + self.ls2(self.mlp(self.ln2(x)))


def _blocks(width: int, layers: int, heads: int, mlp_ratio: float, causal: bool, cfg: CLIPConfig) -> nn.ModuleList:
    return nn.ModuleList(
        Block(width, heads, mlp_ratio, causal=causal, qk_norm=cfg.qk_norm, layer_scale_init=cfg.layer_scale_init)
        for _ in range(layers)
    )


class VisionTransformer(nn.Module):
    """ViT: patch-embedding conv, class token, learned positions, ``ln_pre``, blocks, ``ln_post`` on the class
    token, projection to ``embed_dim``."""

    def __init__(self, v: VisionConfig, cfg: CLIPConfig) -> None:
        super().__init__()
        self.image_size, self.patch_size = v.image_size, v.patch_size
        self.patch_embed = nn.Conv2d(3, v.width, kernel_size=v.patch_size, stride=v.patch_size, bias=False)
        self.class_embedding = nn.Parameter(torch.empty(v.width))
        self.positional_embedding = nn.Parameter(torch.empty(v.tokens, v.width))
        self.ln_pre = nn.LayerNorm(v.width)
        self.blocks = _blocks(v.width, v.layers, v.heads, v.mlp_ratio, False, cfg)
        self.ln_post = nn.LayerNorm(v.width)
        self.proj = nn.Linear(v.width, cfg.embed_dim, bias=False)

    @torch.no_grad()
    def init_weights(self) -> None:
        """open_clip's vision init: N(0, width^-1/2) class token, positions and projection; blocks as
        ``nn.MultiheadAttention`` (xavier-uniform qkv, zero attention biases) and ``nn.Linear`` defaults."""
        width = self.class_embedding.shape[0]
        scale = width**-0.5
        nn.init.normal_(self.class_embedding, std=scale)
        nn.init.normal_(self.positional_embedding, std=scale)
        nn.init.normal_(self.proj.weight, std=scale)
        for block in self.blocks:
            nn.init.xavier_uniform_(block.attn.qkv.weight)
            nn.init.zeros_(block.attn.qkv.bias)
            nn.init.zeros_(block.attn.out.bias)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if images.ndim != 4 or images.shape[1] != 3 or images.shape[-2:] != (self.image_size, self.image_size):
            raise ValueError(
                f"encode_image expects images of shape [B, 3, {self.image_size}, {self.image_size}], "
                f"got {tuple(images.shape)}"
            )
        x = self.patch_embed(images).flatten(2).transpose(1, 2)  # [B, grid², width]
        cls = self.class_embedding.to(x.dtype).expand(x.shape[0], 1, -1)
        x = torch.cat([cls, x], dim=1) + self.positional_embedding.to(x.dtype)
        x = self.ln_pre(x)
        for block in self.blocks:
            x = block(x)
        return self.proj(self.ln_post(x[:, 0]))


class TextTransformer(nn.Module):
    """Causal transformer: token + position embedding, blocks, ``ln_final``, pooling at the end token,
    projection to ``embed_dim``."""

    def __init__(self, t: TextConfig, cfg: CLIPConfig) -> None:
        super().__init__()
        self.context_length, self.layers = t.context_length, t.layers
        self.eot_id, self.pad_id = eot_token_id(cfg.tokenizer), pad_token_id(cfg.tokenizer)
        self.token_embedding = nn.Embedding(t.vocab_size, t.width)
        self.positional_embedding = nn.Parameter(torch.empty(t.context_length, t.width))
        self.blocks = _blocks(t.width, t.layers, t.heads, t.mlp_ratio, True, cfg)
        self.ln_final = nn.LayerNorm(t.width)
        self.proj = nn.Linear(t.width, cfg.embed_dim, bias=False)

    @torch.no_grad()
    def init_weights(self) -> None:
        """open_clip's text init: N(0, .02) tokens, N(0, .01) positions, depth-scaled block weights."""
        width = self.positional_embedding.shape[1]
        nn.init.normal_(self.token_embedding.weight, std=0.02)
        nn.init.normal_(self.positional_embedding, std=0.01)
        attn_std = width**-0.5
        proj_std = width**-0.5 * (2 * self.layers) ** -0.5
        fc_std = (2 * width) ** -0.5
        for block in self.blocks:
            nn.init.normal_(block.attn.qkv.weight, std=attn_std)
            nn.init.zeros_(block.attn.qkv.bias)
            nn.init.normal_(block.attn.out.weight, std=proj_std)
            nn.init.zeros_(block.attn.out.bias)
            nn.init.normal_(block.mlp.fc.weight, std=fc_std)
            nn.init.normal_(block.mlp.proj.weight, std=proj_std)
        nn.init.normal_(self.proj.weight, std=width**-0.5)

    def pool_index(self, tokens: torch.Tensor) -> torch.Tensor:
        """Position of the first end token of each row (the last non-pad position if a row has none)."""
        is_eot = tokens == self.eot_id
        last = ((tokens != self.pad_id).sum(-1) - 1).clamp(min=0)
        return torch.where(is_eot.any(-1), is_eot.int().argmax(-1), last)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        if tokens.ndim != 2 or tokens.shape[1] > self.context_length:
            raise ValueError(
                f"encode_text expects tokens of shape [B, <= {self.context_length}], got {tuple(tokens.shape)}"
            )
        if tokens.dtype not in (torch.int64, torch.int32):
            raise TypeError(f"encode_text expects int64/int32 token ids, got {tokens.dtype}")
        n = tokens.shape[1]
        x = self.token_embedding(tokens) + self.positional_embedding[:n]
        for block in self.blocks:
            x = block(x)
        x = self.ln_final(x)
        x = x[torch.arange(x.shape[0], device=x.device), self.pool_index(tokens)]
        return self.proj(x)


class CLIP(nn.Module):
    """Contrastive image-text model.

    ``forward(images, tokens)`` returns L2-normalised image and text features ``[B, embed_dim]`` and the
    temperature ``exp(logit_scale)`` (``logit_scale`` starts at log(1/0.07) and is clamped at log(100)).
    """

    def __init__(self, config: CLIPConfig) -> None:
        super().__init__()
        config.validate()
        self.config = config
        self.visual = VisionTransformer(config.vision, config)
        self.text = TextTransformer(config.text, config)
        self.logit_scale = nn.Parameter(torch.empty(()))
        self.init_weights()

    @torch.no_grad()
    def init_weights(self) -> None:
        """(Re-)initialise every parameter as open_clip does."""
        if self.logit_scale.is_meta:
            return
        for m in self.modules():
            if isinstance(m, (nn.Linear, nn.Conv2d, nn.LayerNorm, LayerScale)):
                m.reset_parameters()
        self.visual.init_weights()
        self.text.init_weights()
        self.logit_scale.fill_(self.config.logit_scale_init)

    def encode_image(self, images: torch.Tensor, normalize: bool = False) -> torch.Tensor:
        """Image features ``[B, embed_dim]`` (unit length if ``normalize``)."""
        x = self.visual(images)
        return F.normalize(x, dim=-1) if normalize else x

    def encode_text(self, tokens: torch.Tensor, normalize: bool = False) -> torch.Tensor:
        """Text features ``[B, embed_dim]`` of token ids ``[B, context]`` (unit length if ``normalize``)."""
        x = self.text(tokens)
        return F.normalize(x, dim=-1) if normalize else x

    def clamp_logit_scale_(self) -> None:
        """Clamp the ``logit_scale`` parameter in place to [0, log(100)] (call after each optimizer step)."""
        with torch.no_grad():
            self.logit_scale.clamp_(0, self.config.logit_scale_max)

    def forward(self, images: torch.Tensor, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        image_features = self.encode_image(images, normalize=True)
        text_features = self.encode_text(tokens, normalize=True)
        return image_features, text_features, self.logit_scale.clamp(max=self.config.logit_scale_max).exp()


def clip_loss(image_features: torch.Tensor, text_features: torch.Tensor, logit_scale: torch.Tensor) -> torch.Tensor:
    """Symmetric cross-entropy over the ``B × B`` cosine-similarity matrix times ``logit_scale`` (already exp'd,
    as ``CLIP.forward`` returns it). Features are expected L2-normalised; matching pairs share a row index."""
    if image_features.shape != text_features.shape or image_features.ndim != 2:
        raise ValueError(
            f"clip_loss expects two [B, D] feature tensors of the same shape, got {tuple(image_features.shape)} "
            f"and {tuple(text_features.shape)}"
        )
    logits = logit_scale * image_features.float() @ text_features.float().t()
    labels = torch.arange(logits.shape[0], device=logits.device)
    return (F.cross_entropy(logits, labels) + F.cross_entropy(logits.t(), labels)) / 2


def count_parameters(model: nn.Module) -> int:
    """Number of parameter elements (works on the ``meta`` device)."""
    return sum(p.numel() for p in model.parameters())


