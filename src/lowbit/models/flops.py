"""Model FLOPs of a CLIP training step, for throughput's MFU (``lowbit.hardware.mfu``).

Counted from the configuration, as PaLM's MFU counts them: every matmul at 2 FLOPs per multiply-add, the
backward at twice the forward (dgrad + wgrad), so a training sample costs ``3 x`` its forward. Recomputation,
elementwise work, norms and the optimizer are left out (they are overhead, not model FLOPs).

Forward FLOPs of one sample:

- a transformer tower of ``L`` blocks, width ``w``, MLP width ``h``, ``n`` tokens:
  ``L * (2 n (3 w^2 + w^2 + 2 w h) + 4 n^2 w * c)``: the q/k/v and output projections, the MLP, and attention's
  ``Q K^T`` and ``A V`` (``c = 1``; ``c = 1/2`` for the causal text tower, whose masked half is not computed);
- vision: patch embedding ``2 * grid^2 * 3 p^2 * w`` and ``n = grid^2 + 1`` (class token); its projection acts on
  the class token alone (``2 w e``);
- text: ``n`` = context length, its projection on the pooled token (``2 w e``);
- the loss: the ``B x B`` similarity matrix, ``2 e`` per sample per sample of the batch (``batch`` given).

ViT-H/14: about 0.38 TFLOP forward, 1.14 TFLOP per trained image.
"""

from __future__ import annotations

from typing import Any

from lowbit.models.config import CLIPConfig

__all__ = ["clip_forward_flops", "clip_train_flops", "count_train_flops", "tower_forward_flops"]


def tower_forward_flops(width: int, layers: int, mlp_ratio: float, tokens: int, causal: bool = False) -> float:
    """Forward FLOPs of ``layers`` pre-LN transformer blocks over ``tokens`` tokens (one sample)."""
    w, h, n = width, int(width * mlp_ratio), tokens
    linear = 2 * n * (3 * w * w + w * w + 2 * w * h)
    attention = 4 * n * n * w * (0.5 if causal else 1.0)
    return float(layers * (linear + attention))


def clip_forward_flops(cfg: CLIPConfig, batch: int = 1) -> float:
    """Forward FLOPs of one image-caption pair through both towers and, with ``batch``, its share of the loss."""
    v, t, e = cfg.vision, cfg.text, cfg.embed_dim
    vision = (2 * v.grid**2 * 3 * v.patch_size**2 * v.width
              + tower_forward_flops(v.width, v.layers, v.mlp_ratio, v.tokens)
              + 2 * v.width * e)
    text = tower_forward_flops(t.width, t.layers, t.mlp_ratio, t.context_length, causal=True) + 2 * t.width * e
    loss = 2 * e * batch  # one row of the batch x batch logits
    return float(vision + text + loss)


def clip_train_flops(cfg: CLIPConfig, batch: int = 1) -> float:
    """Model FLOPs of one training sample (forward + backward = 3 x forward)."""
    return 3.0 * clip_forward_flops(cfg, batch)


def count_train_flops(model: Any, *inputs: Any, samples: int) -> float | None:
    """Model FLOPs per training sample of any module, counted by PyTorch's ``FlopCounterMode`` over one
    forward on ``inputs`` (``samples`` samples), times 3; ``None`` where the counter fails. For third-party
    models (timm, Hugging Face, open_clip) whose shape lowbit does not know."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    try:
        counter = FlopCounterMode(display=False)
        with counter, torch.no_grad():
            model(*inputs)
        return 3.0 * counter.get_total_flops() / samples
    except Exception:  # a counter gap must not cost the benchmark its row
        return None
