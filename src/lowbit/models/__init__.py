"""lowbit.models: CLIP (configs + presets, towers, loss), tokenizers, and the precision-conversion helper."""

from lowbit.models.clip import CLIP, clip_loss, count_parameters
from lowbit.models.config import CLIPConfig, TextConfig, VisionConfig, get_config, list_presets
from lowbit.models.convert import (
    LAYERS,
    clip_module_filter,
    convert_clip,
    fused_counts,
    make_clip_module_filter,
)
from lowbit.models.tokenizer import BPETokenizer, ByteTokenizer, get_tokenizer

__all__ = [
    "CLIP",
    "LAYERS",
    "BPETokenizer",
    "ByteTokenizer",
    "CLIPConfig",
    "TextConfig",
    "VisionConfig",
    "clip_loss",
    "clip_module_filter",
    "convert_clip",
    "count_parameters",
    "fused_counts",
    "get_config",
    "get_tokenizer",
    "list_presets",
    "make_clip_module_filter",
]
