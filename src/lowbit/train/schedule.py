"""Learning-rate schedule: linear warmup, then cosine decay to ``min_ratio`` of the peak."""

from __future__ import annotations

import math

import torch

__all__ = ["WarmupCosine", "warmup_cosine_scheduler"]


class WarmupCosine:
    """LR multiplier for 0-based step ``s``: ``(s+1)/warmup`` during warmup, then cosine from 1 to ``min_ratio``
    at step ``steps - 1``. A class (not a lambda) so ``LambdaLR.state_dict()`` stays plain data."""

    def __init__(self, warmup: int, steps: int, min_ratio: float = 0.0) -> None:
        self.warmup, self.steps, self.min_ratio = warmup, steps, min_ratio

    def __call__(self, s: int) -> float:
        if s < self.warmup:
            return (s + 1) / self.warmup
        span = max(1, self.steps - 1 - self.warmup)
        progress = min(1.0, (s - self.warmup) / span)
        return self.min_ratio + (1 - self.min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


def warmup_cosine_scheduler(
    optimizer: torch.optim.Optimizer, warmup: int, steps: int, min_ratio: float = 0.0
) -> torch.optim.lr_scheduler.LambdaLR:
    """``LambdaLR`` over ``WarmupCosine``; call ``.step()`` once after each optimizer step."""
    return torch.optim.lr_scheduler.LambdaLR(optimizer, WarmupCosine(warmup, steps, min_ratio))
