"""CLIP model configuration and the preset registry (open_clip-style ``get_config(name)``).

Parameter counts (whole CLIP, ``qk_norm=False``, ``layer_scale_init=None``; checked in tests/models):

| preset | vision (width/layers/heads, patch, image) | text (width/layers/heads, vocab) | embed | parameters |
|---|---|---|---|---|
| ``tiny`` | 128/3/4, patch 8, 32 px | 64/2/2, bytes 259 | 128 | 768,385 |
| ``vit-s-32`` | 384/12/6, patch 32, 224 px | 384/12/6, BPE 49408 | 384 | 63,085,825 |
| ``vit-b-32`` | 768/12/12, patch 32, 224 px | 512/12/8, BPE 49408 | 512 | 151,277,313 |
| ``vit-l-14`` | 1024/24/16, patch 14, 224 px | 768/12/12, BPE 49408 | 768 | 427,616,513 |
| ``vit-h-14`` | 1280/32/16, patch 14, 224 px | 1024/24/16, BPE 49408 | 1024 | 986,109,441 |
"""

from __future__ import annotations

import copy
import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any

from lowbit.messages import did_you_mean, nearest
from lowbit.models.tokenizer import TOKENIZERS, vocab_size

__all__ = ["PRESETS", "CLIPConfig", "TextConfig", "VisionConfig", "get_config", "list_presets"]


def _positive_int(owner: str, name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ValueError(f"{owner}.{name} must be a positive int, got {value!r}")


@dataclass
class VisionConfig:
    """ViT image tower: ``image_size``/``patch_size`` pixels, ``layers`` pre-LN blocks of ``width`` channels."""

    image_size: int = 224
    patch_size: int = 32
    width: int = 768
    layers: int = 12
    heads: int = 12
    mlp_ratio: float = 4.0

    def validate(self) -> None:
        for name in ("image_size", "patch_size", "width", "layers", "heads"):
            _positive_int("vision", name, getattr(self, name))
        if self.image_size % self.patch_size:
            raise ValueError(f"vision.image_size {self.image_size} is not a multiple of patch_size {self.patch_size}")
        if self.width % self.heads:
            raise ValueError(f"vision.width {self.width} is not divisible by heads {self.heads}")
        if not self.mlp_ratio > 0:
            raise ValueError(f"vision.mlp_ratio must be > 0, got {self.mlp_ratio!r}")

    @property
    def grid(self) -> int:
        """Patches per side."""
        return self.image_size // self.patch_size

    @property
    def tokens(self) -> int:
        """Sequence length of the tower: the patches and the class token."""
        return self.grid**2 + 1


@dataclass
class TextConfig:
    """Causal text tower: ``layers`` pre-LN blocks of ``width`` channels over ``context_length`` tokens."""

    context_length: int = 77
    vocab_size: int = 49408
    width: int = 512
    layers: int = 12
    heads: int = 8
    mlp_ratio: float = 4.0

    def validate(self) -> None:
        for name in ("context_length", "vocab_size", "width", "layers", "heads"):
            _positive_int("text", name, getattr(self, name))
        if self.context_length < 2:
            raise ValueError(f"text.context_length must be >= 2, got {self.context_length}")
        if self.width % self.heads:
            raise ValueError(f"text.width {self.width} is not divisible by heads {self.heads}")
        if not self.mlp_ratio > 0:
            raise ValueError(f"text.mlp_ratio must be > 0, got {self.mlp_ratio!r}")


@dataclass
class CLIPConfig:
    """A CLIP model: two towers projected to ``embed_dim``.

    ``layer_scale_init``: ``None`` = no LayerScale, a float = LayerScale on every residual branch initialised to it
    (``0.0`` is the paper's zero init). ``qk_norm``: LayerNorm on queries and keys per head.
    ``tokenizer``: ``"bytes"`` (no files needed) or ``"bpe"`` (CLIP's; its vocabulary file ships with lowbit);
    ``text.vocab_size`` must be at least that tokenizer's vocabulary.
    """

    vision: VisionConfig = field(default_factory=VisionConfig)
    text: TextConfig = field(default_factory=TextConfig)
    embed_dim: int = 512
    layer_scale_init: float | None = None
    qk_norm: bool = False
    tokenizer: str = "bpe"
    logit_scale_init: float = math.log(1 / 0.07)
    logit_scale_max: float = math.log(100)

    def __post_init__(self) -> None:
        if isinstance(self.vision, dict):
            self.vision = VisionConfig(**self.vision)
        if isinstance(self.text, dict):
            self.text = TextConfig(**self.text)
        self.validate()

    def validate(self) -> None:
        """Raise ``ValueError`` naming the first bad field."""
        self.vision.validate()
        self.text.validate()
        _positive_int("clip", "embed_dim", self.embed_dim)
        if self.tokenizer not in TOKENIZERS:
            raise ValueError(f"clip.tokenizer must be one of {', '.join(TOKENIZERS)}, got {self.tokenizer!r}")
        if self.text.vocab_size < vocab_size(self.tokenizer):
            raise ValueError(
                f"text.vocab_size {self.text.vocab_size} is smaller than the {self.tokenizer!r} tokenizer's "
                f"vocabulary ({vocab_size(self.tokenizer)})"
            )
        if self.layer_scale_init is not None and not math.isfinite(float(self.layer_scale_init)):
            raise ValueError(f"clip.layer_scale_init must be None or a finite float, got {self.layer_scale_init!r}")
        if not isinstance(self.qk_norm, bool):
            raise ValueError(f"clip.qk_norm must be a bool, got {self.qk_norm!r}")
        if not self.logit_scale_init <= self.logit_scale_max:
            raise ValueError(f"clip.logit_scale_init {self.logit_scale_init} exceeds logit_scale_max {self.logit_scale_max}")

    def to_dict(self) -> dict[str, Any]:
        """Plain nested dict (YAML/JSON/checkpoint friendly)."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> CLIPConfig:
        """Inverse of ``to_dict``; unknown keys raise ``ValueError``."""
        return _replace(cls(), d, "clip")

    def replace(self, overrides: dict[str, Any] | None = None, *, where: str = "clip", **kw: Any) -> CLIPConfig:
        """A copy with (possibly nested, e.g. ``{"vision": {"layers": 4}}``) fields replaced; ``where`` names the
        mapping in errors as the caller's file does (``lowbit train``'s ``model``: ``model.vision.widht``)."""
        return _replace(self, {**(overrides or {}), **kw}, where)


def _replace(cfg: Any, overrides: dict[str, Any], where: str) -> Any:
    names = {f.name for f in dataclasses.fields(cfg)}
    changes: dict[str, Any] = {}
    for key, value in overrides.items():
        if key not in names:
            hint = _hint(cfg, key, where)
            raise ValueError(f"unknown model option {where}.{key}{hint}; known: {', '.join(sorted(names))}")
        current = getattr(cfg, key)
        if dataclasses.is_dataclass(current) and isinstance(value, dict):
            value = _replace(current, value, f"{where}.{key}")
        changes[key] = value
    if isinstance(cfg, CLIPConfig):
        out = copy.deepcopy(cfg)
        for k, v in changes.items():
            setattr(out, k, v)
        out.__post_init__()
        return out
    out = dataclasses.replace(cfg, **changes)
    out.validate()
    return out


def _hint(cfg: Any, key: str, where: str) -> str:
    """The nearest option's full name, also one level down (``model.widht``: ``model.vision.width or
    model.text.width``)."""
    paths: dict[str, list[str]] = {}
    for f in dataclasses.fields(cfg):
        paths.setdefault(f.name, []).append(f"{where}.{f.name}")
        if dataclasses.is_dataclass(sub := getattr(cfg, f.name)):
            for g in dataclasses.fields(sub):
                paths.setdefault(g.name, []).append(f"{where}.{f.name}.{g.name}")
    near = nearest(key, paths)
    return f" (did you mean {' or '.join(paths[near])}?)" if near else ""


def _bpe_text(width: int, layers: int, heads: int) -> TextConfig:
    return TextConfig(context_length=77, vocab_size=49408, width=width, layers=layers, heads=heads)


PRESETS: dict[str, CLIPConfig] = {
    # Trains on one CPU core in ~3 minutes (`lowbit train`); byte tokenizer, so no files needed. The text
    # tower is narrow because 77 byte tokens per caption make it the costly tower.
    "tiny": CLIPConfig(
        vision=VisionConfig(image_size=32, patch_size=8, width=128, layers=3, heads=4),
        text=TextConfig(context_length=77, vocab_size=259, width=64, layers=2, heads=2),
        embed_dim=128,
        tokenizer="bytes",
    ),
    # open_clip ViT-S-32.
    "vit-s-32": CLIPConfig(
        vision=VisionConfig(image_size=224, patch_size=32, width=384, layers=12, heads=6),
        text=_bpe_text(384, 12, 6),
        embed_dim=384,
    ),
    # OpenAI CLIP ViT-B/32.
    "vit-b-32": CLIPConfig(
        vision=VisionConfig(image_size=224, patch_size=32, width=768, layers=12, heads=12),
        text=_bpe_text(512, 12, 8),
        embed_dim=512,
    ),
    # OpenAI CLIP ViT-L/14.
    "vit-l-14": CLIPConfig(
        vision=VisionConfig(image_size=224, patch_size=14, width=1024, layers=24, heads=16),
        text=_bpe_text(768, 12, 12),
        embed_dim=768,
    ),
    # open_clip ViT-H-14 (the paper's largest model).
    "vit-h-14": CLIPConfig(
        vision=VisionConfig(image_size=224, patch_size=14, width=1280, layers=32, heads=16),
        text=_bpe_text(1024, 24, 16),
        embed_dim=1024,
    ),
}


def list_presets() -> list[str]:
    """Names accepted by ``get_config``."""
    return list(PRESETS)


def get_config(name: str, **overrides: Any) -> CLIPConfig:
    """A fresh copy of preset ``name`` (case-insensitive; ``_`` and ``/`` read as ``-``), with ``overrides``."""
    key = name.lower().replace("_", "-").replace("/", "-")
    if key not in PRESETS:
        raise ValueError(f"unknown model preset {name!r}{did_you_mean([key], PRESETS)}; choose one of {', '.join(PRESETS)}")
    cfg = copy.deepcopy(PRESETS[key])
    return cfg.replace(overrides) if overrides else cfg
