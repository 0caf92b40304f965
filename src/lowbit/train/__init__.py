"""lowbit.train: the CLIP training loop, its config, checkpoints, schedule, metrics and zero-shot evaluation."""

from lowbit.train.checkpoint import load_checkpoint, save_checkpoint
from lowbit.train.config import TrainConfig, load_yaml
from lowbit.train.loop import NonFiniteLossError, resolve_config, train
from lowbit.train.schedule import WarmupCosine, warmup_cosine_scheduler
from lowbit.train.zeroshot import evaluate_zeroshot

__all__ = [
    "NonFiniteLossError",
    "TrainConfig",
    "WarmupCosine",
    "evaluate_zeroshot",
    "load_checkpoint",
    "load_yaml",
    "resolve_config",
    "save_checkpoint",
    "train",
    "warmup_cosine_scheduler",
]
