"""Zero-shot classification: embed each class's prompts, average per class, pick the nearest class."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F

__all__ = ["class_embeddings", "evaluate_zeroshot", "zeroshot_top1"]


@torch.no_grad()
def class_embeddings(
    model: Any,
    tokenizer: Callable[[Sequence[str]], torch.Tensor],
    classnames: Sequence[str],
    templates: Sequence[str],
    device: torch.device,
    batch_size: int = 256,
) -> torch.Tensor:
    """``[num_classes, D]`` unit vectors: mean of the normalised embeddings of ``template.format(c)``.

    All prompts of the task go through the text tower in batches of ``batch_size``."""
    prompts = [t.format(c) for c in classnames for t in templates]
    tokens = tokenizer(prompts)
    feats = torch.cat(
        [model.encode_text(tokens[i : i + batch_size].to(device), normalize=True).float() for i in range(0, len(prompts), batch_size)]
    )
    return F.normalize(feats.view(len(classnames), len(templates), -1).mean(dim=1), dim=-1)


@torch.no_grad()
def zeroshot_top1(model: Any, classifier: torch.Tensor, dataset: Any, device: torch.device, batch_size: int = 256) -> tuple[float, int]:
    """Top-1 accuracy and image count of ``dataset`` (``(image, label)`` items) under ``classifier``."""
    correct = total = 0
    for i in range(0, len(dataset), batch_size):  # no DataLoader: it would draw from the global RNG
        items = [dataset[j] for j in range(i, min(i + batch_size, len(dataset)))]
        images, labels = torch.stack([im for im, _ in items]), torch.tensor([int(lb) for _, lb in items])
        feats = model.encode_image(images.to(device), normalize=True).float()
        pred = (feats @ classifier.t()).argmax(dim=-1).cpu()
        correct += int((pred == labels).sum())
        total += len(pred)
    return correct / max(total, 1), total


def evaluate_zeroshot(
    model: Any,
    tasks: Sequence[tuple[Any, Any]],
    tokenizer: Callable[[Sequence[str]], torch.Tensor],
    device: torch.device,
    autocast: Any = None,
) -> list[dict[str, Any]]:
    """Evaluate every ``(ZeroShotTask, dataset)``; returns ``[{task, top1, chance, n}]``. Restores train mode."""
    was_training = model.training
    model.eval()
    results = []
    try:
        for task, dataset in tasks:
            ctx = autocast() if autocast is not None else torch.autocast(device.type, enabled=False)
            with ctx:
                clf = class_embeddings(model, tokenizer, task.classnames, task.templates, device)
                top1, n = zeroshot_top1(model, clf, dataset, device)
            results.append({"task": task.name, "top1": top1, "chance": 1.0 / len(task.classnames), "n": n})
    finally:
        model.train(was_training)
    return results
