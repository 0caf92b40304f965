"""lowbit.optim: StableAdamW (AdamW with per-tensor update clipping, SPEC §5)."""

from lowbit.optim._stable_adamw import StableAdamW, folded_betas, stable_adamw

__all__ = ["StableAdamW", "folded_betas", "stable_adamw"]
