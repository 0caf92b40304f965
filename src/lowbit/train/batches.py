"""The training stream as batches (in the process or from DataLoader workers), moved to the device; and the
run's data (``open_data``: this rank's share from its resume position, the zero-shot tasks)."""

from __future__ import annotations

import importlib
import signal
from typing import TYPE_CHECKING, Any

import torch

from lowbit.data.spec import zeroshot_spec
from lowbit.models import get_tokenizer

if TYPE_CHECKING:
    from lowbit.train.books import _Run

__all__ = ["data_module", "open_data"]


def data_module() -> Any:
    """``lowbit.data`` (imported lazily; tests replace this function)."""
    return importlib.import_module("lowbit.data")


class _Collate:
    """DataLoader collate: stack images, tokenize captions (a class, so that workers can pickle it)."""

    def __init__(self, tokenizer: Any) -> None:
        self.tokenizer = tokenizer

    def __call__(self, items: list[tuple[torch.Tensor, str]]) -> tuple[torch.Tensor, torch.Tensor]:
        return torch.stack([im for im, _ in items]), self.tokenizer([c for _, c in items])


def _loader_batches(dataset: Any, batch_size: int, tokenizer: Any, workers: int, pin: bool) -> Any:
    """``_batches`` from ``workers`` DataLoader processes (same batches, in the same order: the dataset was
    built with ``batch_size``, see ``lowbit.data.stream``)."""
    loader = torch.utils.data.DataLoader(
        dataset, batch_size=batch_size, num_workers=workers, collate_fn=_Collate(tokenizer), pin_memory=pin,
        persistent_workers=True, prefetch_factor=4, worker_init_fn=_ignore_sigint,
    )
    return iter(loader)


def _to_device(images: torch.Tensor, device: torch.device) -> torch.Tensor:
    """A batch of images on ``device``, float32 CLIP-normalised: stored images travel as uint8 pixels (a quarter of
    the bytes through the DataLoader's shared memory and to the GPU; ``lowbit.data.normalize_uint8`` gives the
    values the loader would have computed, bit for bit), rendered ones (synthetic) as float32."""
    images = images.to(device, non_blocking=True)
    return data_module().normalize_uint8(images) if images.dtype == torch.uint8 else images


def _ignore_sigint(worker_id: int) -> None:
    """DataLoader workers leave Ctrl-C to the training process, which finishes its step and saves (a worker that
    died of the terminal's SIGINT would fail the next batch)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def _batches(dataset: Any, batch_size: int, tokenizer: Any) -> Any:
    """Infinite ``(images [B,3,H,W], tokens [B,context])`` from an iterable of ``(image, caption)``."""
    it = iter(dataset)
    while True:
        items = [next(it) for _ in range(batch_size)]
        yield torch.stack([im for im, _ in items]), tokenizer([c for _, c in items])


def open_data(run: _Run) -> Any:
    """The training stream (this rank's share, from its resume position) as batches; the zero-shot tasks."""
    cfg, env, model_cfg = run.cfg, run.env, run.model_cfg
    data = data_module()
    run.tokenizer = tokenizer = get_tokenizer(model_cfg.tokenizer, model_cfg.text.context_length)
    loader_kw = {"batch_size": cfg.batch_size} if cfg.workers else {}
    run.dataset = dataset = data.build_train_data(
        cfg.data, image_size=model_cfg.vision.image_size, seed=cfg.seed, start=run.data_position, rank=env.rank,
        world_size=env.world_size, uint8=True, max_image_pixels=cfg.max_image_pixels, **loader_kw,  # uint8 pixels: normalised on the device (_to_device)
    )
    run.damage = dict(getattr(dataset, "damage", None) or {})
    zeroshot = zeroshot_spec(cfg.zeroshot, cfg.data)  # "auto": a prepared --data folder's own tasks, else synthetic
    if (env.master or env.parallel == "fsdp") and zeroshot not in ("", "none"):  # FSDP: every rank evaluates
        run.tasks = data.build_zeroshot(zeroshot, image_size=model_cfg.vision.image_size, seed=0,
                                        limit=cfg.zeroshot_limit or None)
    if cfg.workers:
        return _loader_batches(dataset, cfg.batch_size, tokenizer, cfg.workers, pin=env.device.type == "cuda")
    return _batches(dataset, cfg.batch_size, tokenizer)
