"""One training update, ``train_step``: the same function ``lowbit train`` loops over and ``lowbit bench step``
times (forward, contrastive loss over the global batch, backward, gradient norm and clipping, optimizer and
schedule step, ``logit_scale`` clamp)."""

from __future__ import annotations

import math

import torch

from lowbit.models import clip_loss
from lowbit.train.distributed import (
    average_loss,
    average_replicated_grads,
    contrastive_loss,
    grad_norm_and_clip,
    no_grad_sync,
)
from lowbit.train.fsdp8 import precompute_scales
from lowbit.train.trainer import Trainer

__all__ = ["train_step"]


class _NonFiniteLoss(Exception):
    def __init__(self, value: float) -> None:
        self.value = value


def train_step(tr: Trainer, micro: list[tuple[torch.Tensor, torch.Tensor]], step: int, logging: bool = True) -> tuple[float, float]:
    """One update on the micro-batches ``micro`` (already on the device): forward, contrastive loss over the
    global batch, backward, gradient norm (and clipping), optimizer and schedule step, ``logit_scale`` clamp.

    Returns ``(loss, grad_norm)`` (``grad_norm`` is NaN when not ``logging`` and not clipping: no pass over the
    gradients then; at ViT-H/14 on an H100 the norm and clip_grad_norm_'s scaling by 1.0 took 4.3 ms a step).
    A non-finite loss raises before the backward, leaving the weights as they were."""
    model, raw_model, env, accum = tr.model, tr.raw_model, tr.env, tr.accum_steps
    if tr.graphs:  # a new iteration: the CUDA graphs may reuse the last step's output memory
        torch.compiler.cudagraph_mark_step_begin()
    cached: list[tuple[torch.Tensor, torch.Tensor]] = []
    if accum > 1:  # features of every micro-batch, so that each loss sees the whole global batch
        with torch.no_grad(), env.autocast():
            cached = [tuple(model(images, tokens)[:2]) for images, tokens in micro]  # type: ignore[misc]
    tr.optimizer.zero_grad(set_to_none=True)
    loss_value = float("nan")
    for j, (images, tokens) in enumerate(micro):
        with no_grad_sync(model, env.parallel, sync=j == accum - 1):
            with env.autocast():
                image_features, text_features, logit_scale = model(images, tokens)
                if cached:
                    image_features = torch.cat([c[0] for c in cached[:j]] + [image_features] + [c[0] for c in cached[j + 1 :]])
                    text_features = torch.cat([c[1] for c in cached[:j]] + [text_features] + [c[1] for c in cached[j + 1 :]])
                if env.distributed:
                    loss = contrastive_loss(
                        image_features, text_features, logit_scale, local_loss=tr.local_loss,
                        gather_with_grad=tr.gather_with_grad, accum_steps=accum,
                    )
                elif accum > 1:
                    loss = contrastive_loss(image_features, text_features, logit_scale, accum_steps=accum)
                else:
                    loss = clip_loss(image_features, text_features, logit_scale)
            if j == 0:
                loss_value = loss.item()
                if env.distributed and tr.local_loss:  # this rank's share: the global loss is the mean
                    loss_value = average_loss(loss_value)
                if not math.isfinite(loss_value):
                    raise _NonFiniteLoss(loss_value)
            loss.backward()
    max_norm = tr.grad_clip if tr.grad_clip > 0 else float("inf")
    if env.parallel == "fsdp":
        average_replicated_grads(raw_model)  # logit_scale (not sharded)
        grad_norm = grad_norm_and_clip(raw_model, max_norm) if (logging or tr.grad_clip > 0) else float("nan")
    elif tr.grad_clip > 0:
        grad_norm = torch.nn.utils.clip_grad_norm_(raw_model.parameters(), max_norm)
    elif logging:  # only logged: one read of every gradient (clip_grad_norm_ would also scale them all by 1.0)
        grad_norm = torch.nn.utils.get_total_norm([p.grad for p in raw_model.parameters() if p.grad is not None])
    else:  # StableAdamW clips its own updates: nothing needs the norm on a step that logs nothing
        grad_norm = float("nan")
    monitor = tr.monitor
    from_optimizer = monitor is not None and getattr(monitor, "bias_corrected", False)  # StableAdamW
    if monitor is not None:  # RMS of this step's update (SPEC §4); no host sync
        monitor.record_loss(step, loss_value)
        if not from_optimizer:
            monitor.update(step)
    tr.optimizer.step()
    if tr.fsdp8:  # the next all-gathers' scales: one all-reduce for all 8-bit-gathered weights
        precompute_scales(raw_model)
    if from_optimizer:
        monitor.update_from_optimizer(step)  # the RMS StableAdamW just computed, no extra pass
    if tr.scheduler is not None:
        tr.scheduler.step()
    raw_model.clamp_logit_scale_()
    return loss_value, grad_norm  # type: ignore[return-value]
