"""The CLIP training loop (``lowbit train``), in the style of nanoGPT's train.py: set up, loop, evaluate.

One process trains on one device; under ``torchrun`` (``WORLD_SIZE`` > 1) every process takes a GPU and its
own shard of the data (``batch_size`` per process), the model is wrapped in DDP or sharded with FSDP2
(``parallel``), features are all-gathered for the contrastive loss over the global batch
(``lowbit.train.distributed``) and rank 0 writes the run directory:

    OUT/metrics.csv  OUT/eval.csv  OUT/tensorboard/  OUT/checkpoint.pt (or checkpoint.dcp/)  OUT/summary.json  OUT/config.yaml
"""

from __future__ import annotations

import contextlib
import datetime as dt
import importlib
import importlib.metadata
import json
import math
import os
import platform
import shutil
import time
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import yaml

import lowbit
from lowbit.data.spec import zeroshot_spec
from lowbit.kernels.ops import compiled_quantize_mode
from lowbit.models import CLIP, clip_loss, convert_clip, count_parameters, get_config, get_tokenizer
from lowbit.train.checkpoint import (
    CHECKPOINT_NAME,
    DCP_NAME,
    get_rng_state,
    load_checkpoint,
    resolve_checkpoint,
    save_checkpoint,
    set_rng_state,
)
from lowbit.train.config import CUDA_GRAPH_MODES, TrainConfig, load_yaml
from lowbit.train.distributed import (
    all_finite,
    average_loss,
    average_replicated_grads,
    contrastive_loss,
    grad_norm_and_clip,
    load_dcp,
    load_full_into_fsdp,
    no_grad_sync,
    save_dcp,
    shard_model,
)
from lowbit.train.fsdp8 import precompute_scales
from lowbit.train.metrics import RunLogger
from lowbit.train.schedule import warmup_cosine_scheduler
from lowbit.train.zeroshot import evaluate_zeroshot

__all__ = ["NonFiniteLossError", "resolve_config", "train"]

# Options that may differ between a run and its resumption without changing what is computed.
RESUMABLE_CHANGES = {
    "steps", "stop_at", "resume", "out", "eval_every", "log_every", "save_every", "progress", "zeroshot",
    "zeroshot_limit", "monitor", "activations", "compile", "compile_mode", "compiled_quantize", "threads", "device", "workers", "parallel", "local_loss", "gather_with_grad",
    "fsdp_8bit_allgather",  # exact: the same numbers either way
}
# May change on resume if the global batch (batch_size x processes x accum_steps) stays the same.
GLOBAL_BATCH_OPTIONS = {"batch_size", "accum_steps"}


class NonFiniteLossError(RuntimeError):
    """The loss became NaN/Inf (or the weights did); the run stopped without saving the bad state."""

    def __init__(self, step: int, value: float, checkpoint: Path | None, checkpoint_step: int | None, what: str = "loss") -> None:
        self.step, self.value, self.checkpoint, self.checkpoint_step = step, value, checkpoint, checkpoint_step
        kept = (
            f"last good checkpoint: {checkpoint} (step {checkpoint_step})"
            if checkpoint is not None
            else "no checkpoint had been written yet"
        )
        super().__init__(f"{what} is {value} at step {step}: stopped without saving this state; {kept}")


def data_module() -> Any:
    """``lowbit.data`` (imported lazily; tests replace this function)."""
    return importlib.import_module("lowbit.data")


def resolve_config(overrides: dict[str, Any] | None = None, config_file: str | None = None) -> TrainConfig:
    """Defaults < checkpoint's config (if resuming) < YAML ``config_file`` < ``overrides`` (the command line)."""
    overrides = dict(overrides or {})
    from_file = load_yaml(config_file) if config_file else {}
    resume = overrides.get("resume") or from_file.get("resume") or ""
    base = TrainConfig()
    if resume:
        ckpt = load_checkpoint(resume)
        saved = {k: v for k, v in ckpt["config"].items() if k not in ("stop_at", "resume", "out")}
        base = base.replace(saved)
        world = int(os.environ.get("WORLD_SIZE", "1"))
        saved_world = int(ckpt.get("world_size", 1))
        if world != saved_world and "batch_size" not in from_file and "batch_size" not in overrides:
            # another number of processes: keep the global batch by default (per-process batch rescaled)
            accum = int(overrides.get("accum_steps", from_file.get("accum_steps", base.accum_steps)))
            total = base.batch_size * saved_world * base.accum_steps
            if total % (world * accum) == 0:
                base = base.replace({"batch_size": total // (world * accum), "accum_steps": accum})
    merged = base.to_dict()
    for layer in (from_file, overrides):
        merged = _deep_merge(merged, layer)
    return TrainConfig.from_dict(merged)


def _deep_merge(base: dict[str, Any], top: dict[str, Any]) -> dict[str, Any]:
    """``top`` over ``base``; nested mappings (the ``model`` overrides) merge key by key."""
    out = dict(base)
    for k, v in top.items():
        out[k] = _deep_merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def _versions() -> dict[str, str]:
    out = {"lowbit": str(lowbit.__version__), "torch": str(torch.__version__), "python": platform.python_version()}
    try:
        out["triton"] = importlib.metadata.version("triton")
    except importlib.metadata.PackageNotFoundError:
        out["triton"] = "not installed"
    return out


def _device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"cpu ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"


def cpu_threads(requested: int = 0) -> int:
    """Threads for CPU training: ``requested``, or (0) the cores that are free, less one, at least 1.

    PyTorch's intra-op threads meet at a barrier after every op, so one thread whose core is taken by another
    process stalls them all: measured here, a tiny CLIP step took 7x longer on 2 threads than on 1 while
    other work shared the 2 cores. Auto mode therefore leaves a core spare and avoids busy ones (1-minute
    load average); on a 2-core machine it uses 1 thread. The count is fixed for the run (results depend on it).
    """
    if requested:
        return requested
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cores = os.cpu_count() or 1
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else 0.0
    return max(1, min(torch.get_num_threads(), math.floor(cores - load + 0.5) - 1))


def _default_out() -> Path:
    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    out, i = Path("runs") / stamp, 1
    while out.exists():
        out, i = Path("runs") / f"{stamp}-{i}", i + 1
    return out


def _param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """Weight decay on matrices only (not on gains, biases, embeddings, positions or the temperature), as in open_clip."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        (decay if p.ndim >= 2 and "embedding" not in name else no_decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def _optimizer(cfg: TrainConfig, model: torch.nn.Module) -> torch.optim.Optimizer:
    groups = _param_groups(model, cfg.weight_decay)
    betas = (cfg.beta1, cfg.beta2)
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(groups, lr=cfg.lr, betas=betas, eps=cfg.eps, weight_decay=cfg.weight_decay)
    try:
        from lowbit.optim import StableAdamW
    except ImportError as e:
        raise RuntimeError(f"optimizer 'stableadamw' needs lowbit.optim.StableAdamW, not available in this build ({e}); use --optimizer adamw") from e
    return StableAdamW(groups, lr=cfg.lr, betas=betas, eps=cfg.eps, weight_decay=cfg.weight_decay)


def _monitor(cfg: TrainConfig, model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> Any:
    if not cfg.monitor:
        return None
    try:
        from lowbit.monitor import RMSMonitor
    except ImportError as e:
        raise RuntimeError(f"--monitor needs lowbit.monitor.RMSMonitor, not available in this build ({e})") from e
    return RMSMonitor(model, optimizer)



def _fsdp8(cfg: TrainConfig, model: torch.nn.Module, precision: str, master: bool) -> bool:
    """``fsdp_8bit_allgather``: gather eligible weights as their 8-bit codes (``lowbit.train.fsdp8``); one note."""
    from lowbit.train.fsdp8 import allgather_8bit_format, describe, enable_8bit_allgather

    if not cfg.fsdp_8bit_allgather or cfg.recipe in ("none", "bf16"):
        return False
    why = ("" if allgather_8bit_format(cfg.recipe) else f"recipe {cfg.recipe!r} scales W per row/block, not per tensor")
    if not why:
        enable_8bit_allgather(model, torch.bfloat16 if precision == "bf16" else None)
    if master:
        print(f"lowbit train: fsdp all-gather in 16 bits: {why}" if why else f"lowbit train: {describe(model)}",
              flush=True)
    return not why


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
        persistent_workers=True, prefetch_factor=4,
    )
    return iter(loader)


def _batches(dataset: Any, batch_size: int, tokenizer: Any) -> Any:
    """Infinite ``(images [B,3,H,W], tokens [B,context])`` from an iterable of ``(image, caption)``."""
    it = iter(dataset)
    while True:
        items = [next(it) for _ in range(batch_size)]
        yield torch.stack([im for im, _ in items]), tokenizer([c for _, c in items])


def train(cfg: TrainConfig) -> dict[str, Any]:
    """Run (or resume) a training run; returns the summary written to ``OUT/summary.json``.

    Raises ``NonFiniteLossError`` if the loss becomes NaN/Inf, leaving the last good checkpoint in place.
    """
    cfg.validate()
    with compiled_quantize_mode(cfg.compiled_quantize):  # read when the compiled model traces: during the run
        return _train(cfg)


def _train(cfg: TrainConfig) -> dict[str, Any]:
    # ---------------------------------------------------------------- processes, device, precision
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    distributed = world_size > 1
    parallel = cfg.parallel if distributed else None  # None, "ddp" or "fsdp"
    device_str = cfg.device if cfg.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(device_str)
    local_rank = int(os.environ.get("LOCAL_RANK", "0")) if distributed else 0
    gpus = torch.cuda.device_count() if device.type == "cuda" else 0
    if device.type == "cuda" and max(local_rank, device.index or 0) >= gpus:
        who = f"process LOCAL_RANK={local_rank} needs its own GPU" if distributed else f"{device_str} asked for"
        raise ValueError(f"device: {who}, but this machine has {gpus} CUDA device(s); "
                         + ("start fewer processes per node (torchrun --nproc_per_node) or " if distributed else "")
                         + "train on the CPU (--device cpu)")
    if distributed:  # the backend follows the device, so `--device cpu` on a GPU machine runs on gloo
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    rank = dist.get_rank() if distributed else 0
    master = rank == 0
    if device.type == "cuda":
        if distributed:
            device = torch.device("cuda", local_rank)
        elif device.index is None:  # set_device needs an index; "cuda" means the current device
            device = torch.device("cuda", torch.cuda.current_device())
        torch.cuda.set_device(device)
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    precision = cfg.precision if cfg.precision != "auto" else ("bf16" if device.type == "cuda" else "fp32")
    threads_before = torch.get_num_threads()
    if device.type == "cpu":
        torch.set_num_threads(cpu_threads(cfg.threads))
    device_name = _device_name(device)

    def autocast() -> contextlib.AbstractContextManager:
        return torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16")

    # ---------------------------------------------------------------- resume, run directory
    ckpt = load_checkpoint(cfg.resume) if cfg.resume else None
    out = Path(cfg.out) if cfg.out else (resolve_checkpoint(cfg.resume).parent if cfg.resume else _default_out())
    samples_per_step = cfg.batch_size * world_size * cfg.accum_steps  # the global batch
    data_position = 0  # samples this rank has consumed
    if ckpt is not None:
        keep = RESUMABLE_CHANGES | GLOBAL_BATCH_OPTIONS
        changed = {k for k, v in ckpt["config"].items() if k not in keep and hasattr(cfg, k) and getattr(cfg, k) != v}
        saved_world = int(ckpt.get("world_size", 1))
        saved_global = int(ckpt["config"]["batch_size"]) * saved_world * int(ckpt["config"].get("accum_steps", 1))
        if saved_global != samples_per_step:
            raise ValueError(
                f"cannot resume with global batch {samples_per_step} (batch_size {cfg.batch_size} x {world_size} "
                f"process(es) x accum_steps {cfg.accum_steps}): the checkpoint's is {saved_global} "
                f"({ckpt['config']['batch_size']} x {saved_world} x {ckpt['config'].get('accum_steps', 1)})"
            )
        if changed:
            raise ValueError(f"cannot resume with changed option(s) {', '.join(sorted(changed))}: they change the computation")
        seen = int(ckpt.get("samples_seen", int(ckpt["data_position"]) * saved_world))
        data_position = seen // world_size  # the global stream is dealt round-robin: rank r's k-th = k*W + r
    start_step = int(ckpt["step"]) if ckpt else 0
    end_step = min(cfg.stop_at or cfg.steps, cfg.steps)
    if master:
        out.mkdir(parents=True, exist_ok=True)
        (out / "config.yaml").write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False))

    # ---------------------------------------------------------------- model, recipe, optimizer, schedule
    torch.manual_seed(cfg.seed)
    model_cfg = get_config(cfg.preset, **cfg.model)
    raw_model = CLIP(model_cfg)
    n_params = count_parameters(raw_model)
    raw_model = convert_clip(raw_model, cfg.recipe, keep_last_blocks=cfg.keep_last_blocks, layers=cfg.layers).to(device)
    act_monitor = None  # hooks go on before sharding / compiling; train-mode forwards only, no per-step sync
    if cfg.activations:
        from lowbit.monitor import ActivationMonitor

        act_monitor = ActivationMonitor(raw_model)
    fsdp8 = False
    if parallel == "fsdp":  # shard before the optimizer is built: it must hold the DTensor parameters
        if cfg.monitor and cfg.optimizer != "stableadamw":
            raise ValueError("monitor under parallel=fsdp needs optimizer stableadamw (its RMS is reduced over the shards)")
        shard_model(raw_model, device, bf16_params=precision == "bf16" and device.type == "cuda")
        fsdp8 = _fsdp8(cfg, raw_model, precision, master)
    optimizer = _optimizer(cfg, raw_model)
    scheduler = warmup_cosine_scheduler(optimizer, cfg.warmup, cfg.steps, cfg.min_lr_ratio)
    if ckpt is not None:
        if ckpt.get("format") == "dcp":
            load_dcp(ckpt["path"], raw_model, optimizer)  # any number of ranks, sharded or not
        elif parallel == "fsdp":
            load_full_into_fsdp(raw_model, optimizer, ckpt)
        else:
            raw_model.load_state_dict(ckpt["model"])
            optimizer.load_state_dict(ckpt["optimizer"])
        scheduler.load_state_dict(ckpt["scheduler"])
        set_rng_state(ckpt["rng"])
    model: torch.nn.Module = raw_model
    if parallel == "ddp":
        model = torch.nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    graphs = cfg.compile and cfg.compile_mode in CUDA_GRAPH_MODES and device.type == "cuda"
    if graphs and world_size > 1 and not (parallel == "ddp" and os.environ.get("LOWBIT_DDP_CUDAGRAPHS") == "1"):
        why = ("FSDP2's all-gathers and reshards run in hooks between the captured graphs and free the memory the "
               "graphs would replay into" if parallel == "fsdp" else
               "compiled DDP splits the graph at its gradient buckets (torch._dynamo.config.optimize_ddp) and "
               "all-reduces the gradients, which live in the CUDA-graph pool and are overwritten by the next replay, "
               "from hooks between the graphs; whether that is safe is not verified yet (bench/multi_gpu.py "
               "checks it on GPUs; LOWBIT_DDP_CUDAGRAPHS=1 lifts this check to try it)")
        raise ValueError(f"compile_mode={cfg.compile_mode!r} (CUDA graphs) is not supported with several processes "
                         f"under {parallel}: {why}. Use compile_mode 'default' or 'max-autotune-no-cudagraphs'")
    if cfg.compile:
        model = torch.compile(model, mode=None if cfg.compile_mode == "default" else cfg.compile_mode)
    monitor = _monitor(cfg, raw_model, optimizer)

    # ---------------------------------------------------------------- data
    data = data_module()
    tokenizer = get_tokenizer(model_cfg.tokenizer, model_cfg.text.context_length)
    loader_kw = {"batch_size": cfg.batch_size} if cfg.workers else {}
    dataset = data.build_train_data(
        cfg.data, image_size=model_cfg.vision.image_size, seed=cfg.seed, start=data_position, rank=rank,
        world_size=world_size, **loader_kw,
    )
    if cfg.workers:
        batches = _loader_batches(dataset, cfg.batch_size, tokenizer, cfg.workers, pin=device.type == "cuda")
    else:
        batches = _batches(dataset, cfg.batch_size, tokenizer)
    tasks = []
    evaluating = master or parallel == "fsdp"  # FSDP: every rank takes part in the (sharded) forward
    zeroshot = zeroshot_spec(cfg.zeroshot, cfg.data)  # "auto": a prepared --data folder's own tasks, else synthetic
    if evaluating and zeroshot not in ("", "none"):
        tasks = data.build_zeroshot(zeroshot, image_size=model_cfg.vision.image_size, seed=0, limit=cfg.zeroshot_limit or None)

    # ---------------------------------------------------------------- bookkeeping
    logger = RunLogger(out, resume_step=start_step if ckpt else None) if master else None
    last_ckpt: Path | None = resolve_checkpoint(cfg.resume) if cfg.resume else None
    last_ckpt_step: int | None = start_step if ckpt else None
    evals: list[dict[str, Any]] = []

    def save(step: int) -> None:
        nonlocal last_ckpt, last_ckpt_step
        if not all_finite(raw_model):
            raise NonFiniteLossError(step, float("nan"), last_ckpt, last_ckpt_step, what="a weight")
        meta = {
            "scheduler": scheduler.state_dict(),
            "rng": get_rng_state(),  # every rank's RNG is seeded alike and only the model init draws from it
            "data_position": data_position,  # samples consumed per rank
            "samples_seen": data_position * world_size,
            "world_size": world_size,
            "step": step,
            "config": cfg.to_dict(),
            "model_config": model_cfg.to_dict(),
            "versions": _versions(),
        }
        if parallel == "fsdp":
            last_ckpt, last_ckpt_step = save_dcp(out / DCP_NAME, raw_model, optimizer, meta), step
            if master:
                (out / CHECKPOINT_NAME).unlink(missing_ok=True)
        elif master:
            state = {"model": raw_model.state_dict(), "optimizer": optimizer.state_dict(), **meta}
            last_ckpt, last_ckpt_step = save_checkpoint(out / CHECKPOINT_NAME, state), step
            if (out / DCP_NAME).is_dir():
                shutil.rmtree(out / DCP_NAME)

    def evaluate(step: int, announce: bool = True) -> None:
        nonlocal evals
        if not tasks:
            return
        evals = evaluate_zeroshot(raw_model, tasks, tokenizer, device, autocast)
        if not master:
            return
        assert logger is not None
        logger.log_eval(step, evals)
        if announce and cfg.progress:
            pbar.write(f"step {step} zero-shot top-1: " + ", ".join(f"{r['task']} {100 * r['top1']:.1f}%" for r in evals))

    if master:
        n_low = sum(1 for m in raw_model.modules() if isinstance(m, torch.nn.Linear) and type(m) is not torch.nn.Linear)
        n_lin = sum(1 for m in raw_model.modules() if isinstance(m, torch.nn.Linear))
        print(
            f"lowbit train: {cfg.preset} ({n_params:,} params) | recipe {cfg.recipe} ({n_low}/{n_lin} linears) | "
            f"{cfg.optimizer} lr {cfg.lr:g} | {cfg.steps} steps x {samples_per_step} | {cfg.data} | {device_name}, "
            f"{precision}" + (f" | {world_size} x {parallel}" if parallel else "")
            + (f" | accum {cfg.accum_steps}" if cfg.accum_steps > 1 else "") + f" | {out}",
            flush=True,
        )
        if n_low == 0 and cfg.recipe not in ("none", "bf16"):
            print(f"lowbit train: warning: layers={cfg.layers!r} leaves every linear of {cfg.preset} in 16-bit "
                  f"(none passes the filter), so recipe {cfg.recipe!r} changes nothing", flush=True)

    from tqdm.auto import tqdm

    pbar = tqdm(total=cfg.steps, initial=start_step, disable=not (master and cfg.progress), unit="step", dynamic_ncols=True, mininterval=0.5)
    losses: list[float] = []
    t_train, t_interval, steps_since_log = 0.0, 0.0, 0  # seconds in training steps (not eval/saving)
    wall0, cpu0 = time.perf_counter(), time.process_time()
    samples_per_s = 0.0
    step_times: list[float] = []
    accum = cfg.accum_steps
    model.train()

    # ---------------------------------------------------------------- the loop
    try:
        for step in range(start_step + 1, end_step + 1):  # `step` counts completed updates (1-based)
            t0 = time.perf_counter()
            if graphs:  # a new iteration: the CUDA graphs may reuse the last step's output memory
                torch.compiler.cudagraph_mark_step_begin()
            micro = []
            for _ in range(accum):
                images, tokens = next(batches)
                micro.append((images.to(device, non_blocking=True), tokens.to(device, non_blocking=True)))
            cached: list[tuple[torch.Tensor, torch.Tensor]] = []
            if accum > 1:  # features of every micro-batch, so that each loss sees the whole global batch
                with torch.no_grad(), autocast():
                    cached = [tuple(model(images, tokens)[:2]) for images, tokens in micro]  # type: ignore[misc]
            optimizer.zero_grad(set_to_none=True)
            loss_value = float("nan")
            for j, (images, tokens) in enumerate(micro):
                with no_grad_sync(model, parallel, sync=j == accum - 1):
                    with autocast():
                        image_features, text_features, logit_scale = model(images, tokens)
                        if cached:
                            image_features = torch.cat([c[0] for c in cached[:j]] + [image_features] + [c[0] for c in cached[j + 1 :]])
                            text_features = torch.cat([c[1] for c in cached[:j]] + [text_features] + [c[1] for c in cached[j + 1 :]])
                        if distributed:
                            loss = contrastive_loss(
                                image_features, text_features, logit_scale, local_loss=cfg.local_loss,
                                gather_with_grad=cfg.gather_with_grad, accum_steps=accum,
                            )
                        elif accum > 1:
                            loss = contrastive_loss(image_features, text_features, logit_scale, accum_steps=accum)
                        else:
                            loss = clip_loss(image_features, text_features, logit_scale)
                    if j == 0:
                        loss_value = loss.item()
                        if distributed and cfg.local_loss:  # this rank's share: the global loss is the mean
                            loss_value = average_loss(loss_value)
                        if not math.isfinite(loss_value):
                            raise NonFiniteLossError(step, loss_value, last_ckpt, last_ckpt_step)
                    loss.backward()
            max_norm = cfg.grad_clip if cfg.grad_clip > 0 else float("inf")
            logging = step % cfg.log_every == 0 or step == end_step  # the same on every rank
            if parallel == "fsdp":
                average_replicated_grads(raw_model)  # logit_scale (not sharded)
                grad_norm = grad_norm_and_clip(raw_model, max_norm) if (logging or cfg.grad_clip > 0) else float("nan")
            else:
                grad_norm = torch.nn.utils.clip_grad_norm_(raw_model.parameters(), max_norm)
            from_optimizer = monitor is not None and getattr(monitor, "bias_corrected", False)  # StableAdamW
            if monitor is not None:  # RMS of this step's update (SPEC §4); no host sync
                monitor.record_loss(step, loss_value)
                if not from_optimizer:
                    monitor.update(step)
            optimizer.step()
            if fsdp8:  # the next all-gathers' scales: one all-reduce for all 8-bit-gathered weights
                precompute_scales(raw_model)
            if from_optimizer:
                monitor.update_from_optimizer(step)  # the RMS StableAdamW just computed, no extra pass
            scheduler.step()
            raw_model.clamp_logit_scale_()
            data_position += cfg.batch_size * accum
            dt_step = time.perf_counter() - t0
            step_times.append(dt_step)
            t_train, t_interval = t_train + dt_step, t_interval + dt_step
            losses.append(loss_value)
            steps_since_log += 1

            if master and logging:
                samples_per_s = steps_since_log * samples_per_step / max(t_interval, 1e-9)
                t_interval, steps_since_log = 0.0, 0
                row = {
                    "step": step,
                    "loss": loss_value,
                    "lr": _lr_used(scheduler, step),
                    "samples_per_s": samples_per_s,
                    "logit_scale": raw_model.logit_scale.exp().item(),
                    "grad_norm": float(grad_norm),
                    **(monitor.metrics() if monitor is not None else {}),  # rms/<param>, rms_max, ...
                    **(act_monitor.metrics(reset=True) if act_monitor is not None else {}),  # act/<block>, act_max
                }
                assert logger is not None
                logger.log_step(row)
            pbar.update(1)
            pbar.set_postfix(loss=f"{loss_value:.4f}", lr=f"{_lr_used(scheduler, step):.2e}", samples_s=f"{samples_per_s:.0f}")
            if cfg.save_every > 0 and step % cfg.save_every == 0 and step != end_step:
                save(step)
            if evaluating and cfg.eval_every and step % cfg.eval_every == 0 and step != end_step:
                evaluate(step)
        # ------------------------------------------------------------ the end
        if end_step > start_step and cfg.save_every >= 0:  # -1: no checkpoint at all (benchmarks)
            save(end_step)
        if evaluating:
            evaluate(end_step, announce=False)  # the caller prints the final results
    finally:
        pbar.close()
        if logger is not None:
            logger.close()
        if monitor is not None and hasattr(monitor, "close"):
            monitor.close()
        if act_monitor is not None:
            act_monitor.remove()
        if distributed:
            dist.destroy_process_group()
        torch.set_num_threads(threads_before)

    summary = {
        "status": "finished" if end_step == cfg.steps else "stopped",
        "step": end_step,
        "final_loss": losses[-1] if losses else None,
        "final_loss_avg10": sum(losses[-10:]) / len(losses[-10:]) if losses else None,
        "zeroshot": {r["task"]: r["top1"] for r in evals},
        "chance": {r["task"]: r["chance"] for r in evals},
        "zeroshot_mean": sum(r["top1"] for r in evals) / len(evals) if evals else None,
        "samples_per_s": (len(losses) * samples_per_step / t_train) if t_train else None,
        # after warm-up: without this invocation's first min(5, n/2) steps (compilation, autotuning, allocator)
        "samples_per_s_steady": _steady(step_times, samples_per_step),
        "peak_memory_gb": torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None,
        "train_seconds": t_train,
        "wall_seconds": time.perf_counter() - wall0,  # this invocation's loop, evaluations included
        "cpu_seconds": time.process_time() - cpu0,  # CPU time of all threads (contention-independent)
        "samples_seen": data_position * world_size,
        "parameters": n_params,
        "recipe": cfg.recipe,
        "optimizer": cfg.optimizer,
        "precision": precision,
        "device": device_name,
        "world_size": world_size,
        "parallel": parallel or "none",
        "global_batch": samples_per_step,
        "config": cfg.to_dict(),
        "model_config": model_cfg.to_dict(),
        "versions": _versions(),
        "out": str(out),
    }
    if master:
        (out / "summary.json").write_text(json.dumps(summary, indent=2))
    return summary


def _steady(step_times: list[float], samples_per_step: int) -> float | None:
    skip = min(5, len(step_times) // 2)
    rest = step_times[skip:]
    return len(rest) * samples_per_step / sum(rest) if rest and sum(rest) > 0 else None


def _lr_used(scheduler: torch.optim.lr_scheduler.LRScheduler, step: int) -> float:
    """The learning rate the update of (1-based) ``step`` used."""
    return scheduler.base_lrs[0] * scheduler.lr_lambdas[0](step - 1)  # type: ignore[attr-defined]
