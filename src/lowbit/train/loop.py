"""The CLIP training loop (``lowbit train``), in the style of nanoGPT's train.py: set up, loop, evaluate.

One process trains on one device; under ``torchrun`` (``WORLD_SIZE`` > 1) every process takes a GPU and its
own shard of the data (``batch_size`` per process), the model is wrapped in DDP or sharded with FSDP2
(``parallel``), features are all-gathered for the contrastive loss over the global batch
(``lowbit.train.distributed``) and rank 0 writes the run directory:

    OUT/metrics.csv  OUT/eval.csv  OUT/tensorboard/  OUT/checkpoint.pt (+ checkpoint.prev.pt, or checkpoint.dcp/)
    OUT/summary.json  OUT/config.yaml

Reading order: ``train`` → ``_train`` (everything that can refuse the run, before anything is written: names,
``--out``, the checkpoint to resume, a prepared data folder's manifest) → ``setup_env`` (processes, device) →
``_run``: ``build_trainer`` (model, recipe, optimizer, schedule, wrapping), ``restore`` (resume), the data, then
the loop, which calls ``train_step`` once per update (the same function ``lowbit bench step`` times) and keeps
the books in ``_Run`` (checkpoints, evaluation, skipped-data counts; ``Interrupt`` turns SIGINT/SIGTERM into a
checkpoint at the end of the current step).
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
import signal
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import torch
import torch.distributed as dist
import yaml

import lowbit
from lowbit.data.spec import zeroshot_spec
from lowbit.kernels.ops import compiled_quantize_mode
from lowbit.messages import did_you_mean, warn
from lowbit.models import (
    CLIP,
    clip_loss,
    convert_clip,
    count_parameters,
    fused_counts,
    get_config,
    get_tokenizer,
)
from lowbit.train.checkpoint import (
    CHECKPOINT_NAME,
    DCP_NAME,
    PREV_NAME,
    get_rng_state,
    load_checkpoint,
    save_checkpoint,
    set_rng_state,
)
from lowbit.train.compiling import CompileChoice, compile_blocks, resolve_compile
from lowbit.train.config import CUDA_GRAPH_MODES, TrainConfig, load_yaml
from lowbit.train.distributed import (
    all_finite,
    average_loss,
    average_replicated_grads,
    contrastive_loss,
    destroy_process_group,
    grad_norm_and_clip,
    load_dcp,
    load_full_into_fsdp,
    no_grad_sync,
    replicas_agree,
    save_dcp,
    shard_model,
    sum_over_ranks,
)
from lowbit.train.fsdp8 import precompute_scales
from lowbit.train.metrics import RunLogger
from lowbit.train.schedule import warmup_cosine_scheduler
from lowbit.train.zeroshot import evaluate_zeroshot

__all__ = ["DataError", "Env", "NonFiniteLossError", "RunExistsError", "Trainer", "resolve_config", "train", "train_step"]

# Options that may differ between a run and its resumption without changing what is computed.
RESUMABLE_CHANGES = {
    "steps", "stop_at", "resume", "out", "eval_every", "log_every", "save_every", "progress", "zeroshot",
    "zeroshot_limit", "monitor", "activations", "compile", "compile_mode", "compiled_quantize", "threads", "device", "workers", "parallel", "local_loss", "gather_with_grad",
    "overwrite", "max_bad_fraction",
    "fsdp_8bit_allgather",  # exact: the same numbers either way
    "fuse",  # same parameters, state_dict keys and numerics (bit-identical on the CPU) fused or per-linear
}
# May change on resume if the global batch (batch_size x processes x accum_steps) stays the same.
GLOBAL_BATCH_OPTIONS = {"batch_size", "accum_steps"}
# What makes a directory a run (``--out`` holding any of them is refused unless ``overwrite``).
CHECKPOINT_FILES = (CHECKPOINT_NAME, PREV_NAME, DCP_NAME, f".{DCP_NAME}.old")  # what --resume can continue from
RUN_FILES = (*CHECKPOINT_FILES, "metrics.csv", "eval.csv", "summary.json", "config.yaml", "tensorboard")

SKIP_REASONS = {  # dataset.stats key -> what it means (lowbit.data.stream.STAT_KEYS)
    "skipped_images": "undecodable image",
    "skipped_captions": "missing or empty caption",
    "missing_files": "missing file",
}
BAD_MIN_SAMPLES = 200  # the bad-data fraction is judged after this many samples


class DataError(ValueError):
    """The training data is unusable (too many bad samples, a prepared folder that does not match its manifest)."""


class RunExistsError(ValueError):
    """``--out`` already holds a run (neither ``--resume`` nor ``--overwrite`` given)."""


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
        saved = {k: v for k, v in ckpt["config"].items() if k not in ("stop_at", "resume", "out", "overwrite")}
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


def _explain_compile_failure(e: Exception, tr: Trainer) -> None:
    """A torch.compile error (dynamo / inductor) under ``compile: auto``, which the user did not ask for: raise one
    line that says so and how to train eager instead (the original error stays attached as the cause)."""
    choice = tr.compiled
    if choice is None or not choice.compile or not choice.reason.startswith("auto"):
        return
    if not type(e).__module__.startswith(("torch._dynamo", "torch._inductor")):
        return
    first = str(e).strip().splitlines()[0] if str(e).strip() else ""
    raise RuntimeError(f"torch.compile failed in the blocks that compile auto compiled ({choice.reason}): "
                       f"{type(e).__name__}: {first[:300]}; train eager with --no-compile (compile: false)") from e


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


def train(cfg: TrainConfig) -> dict[str, Any]:
    """Run (or resume) a training run; returns the summary written to ``OUT/summary.json``.

    Raises ``NonFiniteLossError`` if the loss becomes NaN/Inf, leaving the last good checkpoint in place. On
    SIGINT/SIGTERM the current step finishes, a checkpoint is written and the summary says
    ``status: "interrupted"`` (with ``signal``); a second signal aborts at once (``KeyboardInterrupt``).
    """
    cfg.validate()
    with compiled_quantize_mode(cfg.compiled_quantize):  # read when the compiled model traces: during the run
        return _train(cfg)


# ================================================================================================ set-up
@dataclass
class Env:
    """Processes, device and precision of this run."""

    world_size: int
    rank: int
    parallel: str | None  # None (one process), "ddp" or "fsdp"
    device: torch.device
    precision: str  # "bf16" (autocast) or "fp32"
    device_name: str = ""

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def master(self) -> bool:
        return self.rank == 0

    def autocast(self) -> contextlib.AbstractContextManager:
        return torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.precision == "bf16")


def setup_env(cfg: TrainConfig) -> Env:
    """Device checks, the process group (under torchrun), TF32 on CUDA, CPU threads."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    distributed = world_size > 1
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
    if device.type == "cuda":
        if distributed:
            device = torch.device("cuda", local_rank)
        elif device.index is None:  # set_device needs an index; "cuda" means the current device
            device = torch.device("cuda", torch.cuda.current_device())
        torch.cuda.set_device(device)
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    precision = cfg.precision if cfg.precision != "auto" else ("bf16" if device.type == "cuda" else "fp32")
    if device.type == "cpu":
        torch.set_num_threads(cpu_threads(cfg.threads))
    env = Env(world_size, rank, cfg.parallel if distributed else None, device, precision)
    env.device_name = _device_name(device)
    return env


def check_names(cfg: TrainConfig) -> Any:
    """The model config; an unknown preset, model option or recipe raises ``ValueError`` before anything is
    written (no orphan run directory)."""
    model_cfg = get_config(cfg.preset).replace(cfg.model, where="model")  # errors name keys as the file does
    if cfg.recipe != "none":
        from lowbit.functional import RECIPES

        if cfg.recipe not in RECIPES:  # the trainer also takes "none" (plain nn.Linear): list it too
            names = ["none", *RECIPES]
            raise ValueError(f"unknown recipe {cfg.recipe!r}{did_you_mean([cfg.recipe], names)}; choose one of: "
                             f"{', '.join(names)}")
    return model_cfg


def existing_run(out: Path) -> list[str]:
    """The files of a run that ``out`` already holds (empty if none)."""
    return [n for n in RUN_FILES if (out / n).exists()] if out.is_dir() else []


def check_out(cfg: TrainConfig, out: Path, resume_dir: Path | None, master: bool) -> None:
    """Refuse an ``out`` that holds another run unless ``overwrite`` (then rank 0 deletes that run's files)."""
    same = resume_dir is not None and out.resolve() == resume_dir.resolve()
    if same:
        if cfg.overwrite:
            raise ValueError(f"--overwrite with --resume {resume_dir} would delete the run being resumed; "
                             "drop --overwrite, or pass another --out")
        return
    found = existing_run(out)
    if not found:
        return
    if not cfg.overwrite:
        if not set(found) & set(CHECKPOINT_FILES):  # no checkpoint (e.g. a double Ctrl-C before the first save)
            raise RunExistsError(
                f"--out {out} already holds a run without a checkpoint ({', '.join(found)}), so it cannot be "
                "resumed: pass --overwrite to delete it and start over, or choose another --out"
            )
        raise RunExistsError(
            f"--out {out} already holds a run ({', '.join(found)}): continue it with `lowbit train --resume {out}`, "
            "or pass --overwrite to delete it and start over"
        )
    if master:
        for name in found:
            p = out / name
            shutil.rmtree(p) if p.is_dir() and not p.is_symlink() else p.unlink()


def make_run_dir(cfg: TrainConfig, out: Path) -> None:
    """Create ``out`` and write ``config.yaml``; an unusable path is one clear ``OSError``."""
    try:
        out.mkdir(parents=True, exist_ok=True)
        (out / "config.yaml").write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False))
    except OSError as e:
        what = e.strerror or str(e)
        if isinstance(e, FileExistsError | NotADirectoryError):
            what = "a file is in the way (not a directory)"
        raise OSError(e.errno, f"cannot use run directory {str(out)!r}: {what}") from e


def check_resume(cfg: TrainConfig, ckpt: dict[str, Any], world_size: int) -> int:
    """Refuse a resume that would change the computation; returns this rank's data position (samples)."""
    samples_per_step = cfg.batch_size * world_size * cfg.accum_steps
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
    return seen // world_size  # the global stream is dealt round-robin: rank r's k-th = k*W + r


@dataclass
class Trainer:
    """The model and everything that updates it: what ``train_step`` needs (``lowbit bench step`` builds one
    around its own model)."""

    model: torch.nn.Module  # what the forward calls: DDP-wrapped and/or compiled
    raw_model: torch.nn.Module  # the CLIP module itself (state dict, clamp, grad norms)
    optimizer: torch.optim.Optimizer
    env: Env
    scheduler: Any = None
    accum_steps: int = 1
    grad_clip: float = 0.0
    local_loss: bool = False
    gather_with_grad: bool = True
    graphs: bool = False  # CUDA graphs: mark each step's beginning
    monitor: Any = None
    act_monitor: Any = None
    n_params: int = 0
    fsdp8: bool = False  # FSDP2 gathers eligible weights as 8-bit codes: refresh their scales after each update
    compiled: CompileChoice | None = None  # what build_trainer compiled (resolve_compile); None: built elsewhere
    notes: list[str] = field(default_factory=list)  # set-up notes, printed after the run's first line

    @property
    def replica_checks(self) -> int:
        """Steps after the start checked with ``replicas_agree`` (besides every checkpoint): DDP with CUDA graphs,
        where the gradients DDP all-reduces live in the graphs' memory pool; 0 elsewhere."""
        ddp = self.env.parallel == "ddp" and self.env.world_size > 1
        return REPLICA_CHECKS if self.graphs and ddp else 0


def _fsdp8(cfg: TrainConfig, model: torch.nn.Module, precision: str) -> tuple[bool, str]:
    """``fsdp_8bit_allgather``: gather eligible weights as their 8-bit codes (``lowbit.train.fsdp8``); returns
    (on, the note ``_announce`` prints after the run's first line)."""
    from lowbit.train.fsdp8 import allgather_8bit_format, describe, enable_8bit_allgather

    if not cfg.fsdp_8bit_allgather or cfg.recipe in ("none", "bf16"):
        return False, ""
    why = ("" if allgather_8bit_format(cfg.recipe) else f"recipe {cfg.recipe!r} scales W per row/block, not per tensor")
    if not why:
        enable_8bit_allgather(model, torch.bfloat16 if precision == "bf16" else None)
    return not why, f"lowbit train: fsdp all-gather in 16 bits: {why}" if why else f"lowbit train: {describe(model)}"


def build_trainer(cfg: TrainConfig, env: Env, model_cfg: Any) -> Trainer:
    """Model (converted to the recipe, sharded/wrapped/compiled), optimizer, schedule and monitors."""
    torch.manual_seed(cfg.seed)
    raw_model = CLIP(model_cfg)
    n_params = count_parameters(raw_model)
    raw_model = convert_clip(raw_model, cfg.recipe, keep_last_blocks=cfg.keep_last_blocks, layers=cfg.layers,
                             fuse=cfg.fuse).to(env.device)
    fsdp8 = False
    notes: list[str] = []  # printed after the run's first line
    act_monitor = None  # hooks go on before sharding / compiling; train-mode forwards only, no per-step sync
    if cfg.activations:
        from lowbit.monitor import ActivationMonitor

        act_monitor = ActivationMonitor(raw_model)
    if env.parallel == "fsdp":  # shard before the optimizer is built: it must hold the DTensor parameters
        if cfg.monitor and cfg.optimizer != "stableadamw":
            raise ValueError("monitor under parallel=fsdp needs optimizer stableadamw (its RMS is reduced over the shards)")
        shard_model(raw_model, env.device, bf16_params=env.precision == "bf16" and env.device.type == "cuda")
        fsdp8, note = _fsdp8(cfg, raw_model, env.precision)
        notes.append(note)
    optimizer = _optimizer(cfg, raw_model)
    scheduler = warmup_cosine_scheduler(optimizer, cfg.warmup, cfg.steps, cfg.min_lr_ratio)
    model: torch.nn.Module = raw_model
    if env.parallel == "ddp":
        model = torch.nn.parallel.DistributedDataParallel(model, device_ids=[env.device.index] if env.device.type == "cuda" else None)
    choice = resolve_compile(cfg, env)
    graphs = choice.compile and choice.mode in CUDA_GRAPH_MODES and env.device.type == "cuda"
    if graphs and env.parallel == "fsdp" and env.world_size > 1:
        raise ValueError(f"compile_mode={cfg.compile_mode!r} (CUDA graphs) is not supported under FSDP with several "
                         "processes: FSDP2's all-gathers and reshards run in hooks between the captured graphs and free "
                         "the memory the graphs would replay into. Use parallel ddp, or compile_mode 'default' or "
                         "'max-autotune-no-cudagraphs'")
    if choice.scope == "model":
        model = torch.compile(model, mode=None if choice.mode == "default" else choice.mode)
    elif choice.scope == "blocks":  # in place: raw_model's blocks are compiled too (evaluation turns them off)
        compile_blocks(raw_model, choice.mode)
    tr = Trainer(
        model=model, raw_model=raw_model, optimizer=optimizer, env=env, scheduler=scheduler, accum_steps=cfg.accum_steps,
        grad_clip=cfg.grad_clip, local_loss=cfg.local_loss, gather_with_grad=cfg.gather_with_grad, graphs=graphs,
        monitor=_monitor(cfg, raw_model, optimizer), act_monitor=act_monitor, n_params=n_params, fsdp8=fsdp8,
        notes=[n for n in notes if n], compiled=choice,
    )
    if tr.replica_checks:
        tr.notes.append(f"DDP with CUDA graphs: the ranks' parameters are compared after each of the first "
                        f"{tr.replica_checks} steps and at every checkpoint")
    return tr


def restore(tr: Trainer, ckpt: dict[str, Any]) -> None:
    """Load a checkpoint's model, optimizer, schedule and RNG state (any format, any number of ranks)."""
    if ckpt.get("format") == "dcp":
        load_dcp(ckpt["path"], tr.raw_model, tr.optimizer)  # any number of ranks, sharded or not
    elif tr.env.parallel == "fsdp":
        load_full_into_fsdp(tr.raw_model, tr.optimizer, ckpt)
    else:
        tr.raw_model.load_state_dict(ckpt["model"])
        tr.optimizer.load_state_dict(ckpt["optimizer"])
    tr.scheduler.load_state_dict(ckpt["scheduler"])
    set_rng_state(ckpt["rng"])


# ================================================================================================ one step
class _NonFiniteLoss(Exception):
    def __init__(self, value: float) -> None:
        self.value = value


def train_step(tr: Trainer, micro: list[tuple[torch.Tensor, torch.Tensor]], step: int, logging: bool = True) -> tuple[float, float]:
    """One update on the micro-batches ``micro`` (already on the device): forward, contrastive loss over the
    global batch, backward, gradient norm (and clipping), optimizer and schedule step, ``logit_scale`` clamp.

    Returns ``(loss, grad_norm)`` (``grad_norm`` may be NaN under FSDP when not ``logging`` and not clipping).
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
    else:
        grad_norm = torch.nn.utils.clip_grad_norm_(raw_model.parameters(), max_norm)
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


# ================================================================================================ signals
class Interrupt:
    """SIGINT/SIGTERM during training: remember the signal (the loop stops after the current step and saves);
    a second one aborts at once (``KeyboardInterrupt``). Handlers are installed only in the main thread."""

    NAMES: ClassVar[dict[int, str]] = {signal.SIGINT: "SIGINT", signal.SIGTERM: "SIGTERM"}

    def __init__(self) -> None:
        self.signum = 0
        self._old: dict[int, Any] = {}

    def __enter__(self) -> Interrupt:
        if threading.current_thread() is threading.main_thread():
            for sig in self.NAMES:
                self._old[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        for sig, old in self._old.items():
            signal.signal(sig, old)
        self._old.clear()

    def _handle(self, signum: int, frame: Any) -> None:
        if self.signum:
            raise KeyboardInterrupt(f"second {self.NAMES.get(signum, signum)}: aborted without saving")
        self.signum = signum
        os.write(2, f"\nlowbit train: {self.NAMES.get(signum, signum)} received: finishing this step and saving a "
                    "checkpoint (send it again to abort at once)\n".encode())


# ================================================================================================ the run
class _Run:
    """The loop's state between steps: bookkeeping (checkpoints, logs, data accounting) around ``train_step``."""

    def __init__(self, cfg: TrainConfig, env: Env, tr: Trainer, model_cfg: Any, out: Path) -> None:
        self.cfg, self.env, self.tr, self.model_cfg, self.out = cfg, env, tr, model_cfg, out
        self.samples_per_step = cfg.batch_size * env.world_size * cfg.accum_steps  # the global batch
        self.data_position = 0  # samples this rank has consumed
        self.last_ckpt: Path | None = None
        self.last_ckpt_step: int | None = None
        self.evals: list[dict[str, Any]] = []
        self.skipped_before: dict[str, int] = {}  # data skips counted by earlier invocations (from the checkpoint)
        self.skipped: dict[str, int] = {}  # this run's totals (all ranks, earlier invocations included)
        self.tasks: list[Any] = []
        self.tokenizer: Any = None
        self.dataset: Any = None
        self.damage: dict[str, Any] = {}  # what indexing the data lost (damaged shards, incomplete samples)
        self.logger: RunLogger | None = None
        self.pbar: Any = None
        # this invocation's timing: seconds in training steps (not evaluation or saving)
        self.losses: list[float] = []
        self.step_times: list[float] = []
        self.t_train = self.t_interval = self.samples_per_s = 0.0
        self.steps_since_log = self.skips_reported = 0
        self.wall0, self.cpu0 = time.perf_counter(), time.process_time()

    # ---- logs
    def open_logs(self, start_step: int, resumed: bool) -> None:
        from tqdm.auto import tqdm

        master, cfg = self.env.master, self.cfg
        self.logger = RunLogger(self.out, resume_step=start_step if resumed else None) if master else None
        self.pbar = tqdm(total=cfg.steps, initial=start_step, disable=not (master and cfg.progress), unit="step",
                         dynamic_ncols=True, mininterval=0.5)
        self.wall0, self.cpu0 = time.perf_counter(), time.process_time()

    def close(self) -> None:
        tr = self.tr
        if self.pbar is not None:
            self.pbar.close()
        if self.logger is not None:
            self.logger.close()
        if tr.monitor is not None and hasattr(tr.monitor, "close"):
            tr.monitor.close()
        if tr.act_monitor is not None:
            tr.act_monitor.remove()

    def record(self, step: int, loss_value: float, grad_norm: float, logging: bool, seconds: float, signum: int) -> int:
        """The books after one update: timing, data counts (and every rank's word on a signal: returns how many
        ranks saw one), the metrics row, the progress line."""
        cfg, tr, master = self.cfg, self.tr, self.env.master
        self.step_times.append(seconds)
        self.t_train, self.t_interval = self.t_train + seconds, self.t_interval + seconds
        self.losses.append(loss_value)
        self.steps_since_log += 1
        signalled = self.count_data(self.dataset, 1 if signum else 0)
        self.check_bad_fraction(self.data_position * self.env.world_size)
        bad = sum(self.skipped.values())
        if master and logging:
            self.samples_per_s = self.steps_since_log * self.samples_per_step / max(self.t_interval, 1e-9)
            self.t_interval, self.steps_since_log = 0.0, 0
            row = {
                "step": step,
                "loss": loss_value,
                "lr": _lr_used(tr.scheduler, step),
                "samples_per_s": self.samples_per_s,
                "logit_scale": tr.raw_model.logit_scale.exp().item(),
                "grad_norm": float(grad_norm),
                **({f"data/{k}": v for k, v in self.skipped.items()} if bad else {}),  # once data was skipped
                **(tr.monitor.metrics() if tr.monitor is not None else {}),  # rms/<param>, rms_max, ...
                **(tr.act_monitor.metrics(reset=True) if tr.act_monitor is not None else {}),  # act/<block>, act_max
            }
            assert self.logger is not None
            self.logger.log_step(row)
        if master and bad > self.skips_reported:
            if not self.skips_reported or not cfg.progress:
                self.pbar.write(f"lowbit train: step {step}: skipped {bad:,} bad sample(s) so far "
                                f"({describe_skips(self.skipped)})")
            self.skips_reported = bad
        self.pbar.update(1)
        postfix = {"loss": f"{loss_value:.4f}", "lr": f"{_lr_used(tr.scheduler, step):.2e}",
                   "samples_s": f"{self.samples_per_s:.0f}"}
        if bad:
            postfix["skipped"] = f"{bad}"
        self.pbar.set_postfix(postfix)
        return signalled

    def summary(self, step: int, interrupted: int) -> dict[str, Any]:
        """``summary.json`` (written by rank 0) of this invocation."""
        cfg, env, evals, losses = self.cfg, self.env, self.evals, self.losses
        status = "interrupted" if interrupted else ("finished" if step == cfg.steps else "stopped")
        summary = {
            "status": status,
            **({"signal": Interrupt.NAMES.get(interrupted, str(interrupted))} if interrupted else {}),
            "step": step,
            "final_loss": losses[-1] if losses else None,
            "final_loss_avg10": sum(losses[-10:]) / len(losses[-10:]) if losses else None,
            "zeroshot": {r["task"]: r["top1"] for r in evals},
            "chance": {r["task"]: r["chance"] for r in evals},
            "zeroshot_mean": sum(r["top1"] for r in evals) / len(evals) if evals else None,
            "samples_per_s": (len(losses) * self.samples_per_step / self.t_train) if self.t_train else None,
            # after warm-up: without this invocation's first min(5, n/2) steps (compilation, autotuning, allocator)
            "samples_per_s_steady": _steady(self.step_times, self.samples_per_step),
            "peak_memory_gb": torch.cuda.max_memory_allocated(env.device) / 2**30 if env.device.type == "cuda" else None,
            "train_seconds": self.t_train,
            "wall_seconds": time.perf_counter() - self.wall0,  # this invocation's loop, evaluations included
            "cpu_seconds": time.process_time() - self.cpu0,  # CPU time of all threads (contention-independent)
            "samples_seen": self.data_position * env.world_size,
            "data": {**self.skipped, **{k: (len(v) if isinstance(v, dict) else v) for k, v in self.damage.items()}},
            "parameters": self.tr.n_params,
            "recipe": cfg.recipe,
            "optimizer": cfg.optimizer,
            "precision": env.precision,
            "compiled": _compile_choice(cfg, env, self.tr),  # what compile (auto by default) chose, and why
            "device": env.device_name,
            "world_size": env.world_size,
            "parallel": env.parallel or "none",
            "global_batch": self.samples_per_step,
            "config": cfg.to_dict(),
            "model_config": self.model_cfg.to_dict(),
            "versions": _versions(),
            "out": str(self.out),
        }
        if env.master:
            (self.out / "summary.json").write_text(json.dumps(summary, indent=2))
            if any(self.skipped.values()):
                print(f"lowbit train: data: skipped {sum(self.skipped.values()):,} bad sample(s): "
                      f"{describe_skips(self.skipped)}", flush=True)
        return summary

    # ---- checkpoints
    def save(self, step: int) -> None:
        cfg, env, tr, out = self.cfg, self.env, self.tr, self.out
        if not all_finite(tr.raw_model):
            raise NonFiniteLossError(step, float("nan"), self.last_ckpt, self.last_ckpt_step, what="a weight")
        if env.parallel == "ddp" and env.world_size > 1:
            check_replicas(tr, step)
        meta = {
            "scheduler": tr.scheduler.state_dict(),
            "rng": get_rng_state(),  # every rank's RNG is seeded alike and only the model init draws from it
            "data_position": self.data_position,  # samples consumed per rank
            "samples_seen": self.data_position * env.world_size,
            "data_skipped": dict(self.skipped),
            "world_size": env.world_size,
            "step": step,
            "config": cfg.to_dict(),
            "model_config": self.model_cfg.to_dict(),
            "versions": _versions(),
        }
        if env.parallel == "fsdp":
            self.last_ckpt, self.last_ckpt_step = save_dcp(out / DCP_NAME, tr.raw_model, tr.optimizer, meta), step
            if env.master:
                (out / CHECKPOINT_NAME).unlink(missing_ok=True)
                (out / PREV_NAME).unlink(missing_ok=True)
        elif env.master:
            state = {"model": tr.raw_model.state_dict(), "optimizer": tr.optimizer.state_dict(), **meta}
            # resumed from checkpoint.prev.pt (checkpoint.pt was damaged): keep the good one as the previous
            keep = not (self.last_ckpt is not None and self.last_ckpt.name == PREV_NAME)
            self.last_ckpt = save_checkpoint(out / CHECKPOINT_NAME, state, keep_previous=keep)
            self.last_ckpt_step = step
            if (out / DCP_NAME).is_dir():
                shutil.rmtree(out / DCP_NAME)

    # ---- evaluation
    def evaluate(self, step: int, announce: bool = True) -> None:
        if not self.tasks:
            return
        # blocks compiled in place (compile auto) run eager here, as the whole-model compile leaves raw_model: no
        # recompiles for eval mode and other shapes, no CUDA-graph replays outside the training steps
        regional = self.tr.compiled is not None and self.tr.compiled.scope == "blocks"
        with torch.compiler.set_stance("force_eager") if regional else contextlib.nullcontext():
            self.evals = evaluate_zeroshot(self.tr.raw_model, self.tasks, self.tokenizer, self.env.device,
                                           self.env.autocast)
        if not self.env.master:
            return
        assert self.logger is not None
        self.logger.log_eval(step, self.evals)
        if announce and self.cfg.progress:
            self.pbar.write(f"step {step} zero-shot top-1: " + ", ".join(f"{r['task']} {100 * r['top1']:.1f}%" for r in self.evals))

    # ---- data accounting
    def count_data(self, dataset: Any, interrupted: int) -> int:
        """Skipped-sample counters summed over ranks (one all_reduce per step under torchrun, which also makes
        every rank agree on an interrupt); returns the number of ranks that saw a signal."""
        local = getattr(dataset, "stats", None) or {}
        keys = list(SKIP_REASONS)
        values = [interrupted] + [int(local.get(k, 0)) for k in keys]
        if self.env.distributed:
            values = sum_over_ranks(values)
        self.skipped = {k: self.skipped_before.get(k, 0) + v for k, v in zip(keys, values[1:])}
        return values[0]

    def check_bad_fraction(self, consumed: int) -> None:
        """Stop when more than ``max_bad_fraction`` of the samples read were unusable (after ``BAD_MIN_SAMPLES``)."""
        bad = sum(self.skipped.values())
        seen = bad + consumed
        if bad and seen >= BAD_MIN_SAMPLES and bad > self.cfg.max_bad_fraction * seen:
            raise DataError(
                f"too much bad training data: {bad:,} of {seen:,} samples read ({100 * bad / seen:.1f}%) were skipped "
                f"({describe_skips(self.skipped)}), more than max_bad_fraction {self.cfg.max_bad_fraction:g}; "
                f"check the data ({self.cfg.data}) or raise --max-bad-fraction"
            )


def describe_skips(skipped: dict[str, int]) -> str:
    return ", ".join(f"{SKIP_REASONS.get(k, k)} {v:,}" for k, v in skipped.items() if v)


def check_prepared_data(spec: str, sha256_limit: int = 1 << 30) -> None:
    """A folder made by ``lowbit data prepare``: every file its manifest lists must have the recorded size, and
    (when the folder holds at most ``sha256_limit`` bytes: cheap) the recorded SHA-256."""
    if not (isinstance(spec, str) and os.path.isdir(spec) and os.path.isfile(os.path.join(spec, "manifest.json"))):
        return
    from lowbit.data.spec import read_manifest
    from lowbit.data.tars import sha256_file

    try:
        manifest = read_manifest(spec)
    except (OSError, ValueError) as e:
        raise DataError(f"prepared data {spec!r}: {e}") from e
    files = manifest.get("files", {})
    problems = []
    for name, info in files.items():
        p = Path(spec) / name
        size = p.stat().st_size if p.is_file() else None
        if size is None:
            problems.append(f"{name} is missing")
        elif "bytes" in info and size != int(info["bytes"]):
            problems.append(f"{name} has {size:,} bytes, the manifest says {int(info['bytes']):,}"
                            + (" (truncated)" if size < int(info["bytes"]) else ""))
    if not problems and sum(int(i.get("bytes", 0)) for i in files.values()) <= sha256_limit:
        problems = [f"{n} does not match its SHA-256" for n, i in files.items()
                    if i.get("sha256") and sha256_file(Path(spec) / n) != i["sha256"]]
    if problems:
        shown = "; ".join(problems[:3]) + (f"; and {len(problems) - 3} more" if len(problems) > 3 else "")
        raise DataError(f"prepared data {spec!r} does not match its manifest: {shown} "
                        f"(`lowbit data verify {spec}` lists all; prepare it again)")


def _train(cfg: TrainConfig) -> dict[str, Any]:
    threads_before = torch.get_num_threads()
    # ---------------------------------------------------------------- checks before anything is written
    model_cfg = check_names(cfg)
    ckpt = load_checkpoint(cfg.resume) if cfg.resume else None
    resume_dir = Path(ckpt["path"]).parent if ckpt is not None else None
    out = Path(cfg.out) if cfg.out else (resume_dir if resume_dir is not None else _default_out())
    master = int(os.environ.get("RANK", "0")) == 0
    check_out(cfg, out, resume_dir, master)
    data_position = check_resume(cfg, ckpt, int(os.environ.get("WORLD_SIZE", "1"))) if ckpt is not None else 0
    check_prepared_data(cfg.data)
    env = setup_env(cfg)
    try:
        summary = _run(cfg, env, model_cfg, ckpt, out, data_position)
        if env.distributed:
            # every rank done before any tears the group down: a gloo peer still talking to a destroyed group
            # aborted its process at exit ("terminate called without an active exception", rc 1) now and then
            dist.barrier()
        return summary
    finally:
        if env.distributed:
            destroy_process_group()  # its threads may outlive it: lowbit.train.distributed "teardown"
        torch.set_num_threads(threads_before)


def _run(cfg: TrainConfig, env: Env, model_cfg: Any, ckpt: dict[str, Any] | None, out: Path, data_position: int) -> dict[str, Any]:
    """Model, resume, data, the loop, the summary."""
    start_step = int(ckpt["step"]) if ckpt else 0
    end_step = min(cfg.stop_at or cfg.steps, cfg.steps)
    tr = build_trainer(cfg, env, model_cfg)
    run = _Run(cfg, env, tr, model_cfg, out)
    if ckpt is not None:
        restore(tr, ckpt)
        run.data_position = data_position
        run.last_ckpt, run.last_ckpt_step = Path(ckpt["path"]), start_step
        run.skipped_before = {k: int(v) for k, v in (ckpt.get("data_skipped") or {}).items()}
        run.skipped = dict(run.skipped_before)
    batches = _data(run)
    if env.master:  # after everything that can refuse the run: no orphan folder
        make_run_dir(cfg, out)
        _announce(cfg, env, tr, run.samples_per_step, out, (start_step, ckpt["path"]) if ckpt else None, run.damage)
    run.open_logs(start_step, resumed=ckpt is not None)
    try:
        step, interrupted = _loop(run, batches, start_step, end_step)
    finally:
        run.close()
    return run.summary(step, interrupted)


def _data(run: _Run) -> Any:
    """The training stream (this rank's share, from its resume position) as batches; the zero-shot tasks."""
    cfg, env, model_cfg = run.cfg, run.env, run.model_cfg
    data = data_module()
    run.tokenizer = tokenizer = get_tokenizer(model_cfg.tokenizer, model_cfg.text.context_length)
    loader_kw = {"batch_size": cfg.batch_size} if cfg.workers else {}
    run.dataset = dataset = data.build_train_data(
        cfg.data, image_size=model_cfg.vision.image_size, seed=cfg.seed, start=run.data_position, rank=env.rank,
        world_size=env.world_size, uint8=True, **loader_kw,  # uint8 pixels: normalised on the device (_to_device)
    )
    run.damage = dict(getattr(dataset, "damage", None) or {})
    zeroshot = zeroshot_spec(cfg.zeroshot, cfg.data)  # "auto": a prepared --data folder's own tasks, else synthetic
    if (env.master or env.parallel == "fsdp") and zeroshot not in ("", "none"):  # FSDP: every rank evaluates
        run.tasks = data.build_zeroshot(zeroshot, image_size=model_cfg.vision.image_size, seed=0,
                                        limit=cfg.zeroshot_limit or None)
    if cfg.workers:
        return _loader_batches(dataset, cfg.batch_size, tokenizer, cfg.workers, pin=env.device.type == "cuda")
    return _batches(dataset, cfg.batch_size, tokenizer)


REPLICA_CHECKS = 10  # steps checked after the start (or a resume) under DDP with CUDA graphs


class ReplicaDivergenceError(RuntimeError):
    """DDP ranks hold different parameters: their gradients were not (all) averaged."""


def check_replicas(tr: Trainer, step: int) -> None:
    """Raise ``ReplicaDivergenceError`` (on every rank) unless the DDP replicas hold the same parameters."""
    if replicas_agree(tr.raw_model):
        return
    how = (" under CUDA graphs: rerun with --compile-mode default (or --no-compile)" if tr.graphs else "")
    raise ReplicaDivergenceError(f"lowbit train: the DDP ranks' parameters differ after step {step}{how}; the "
                                 "last checkpoint (if any) is from before")


def _loop(run: _Run, batches: Any, start_step: int, end_step: int) -> tuple[int, int]:
    """Steps ``start_step + 1 .. end_step``, periodic checkpoints and evaluations, the final checkpoint and
    evaluation. Returns the last step taken and the signal that stopped the run early (0: none)."""
    cfg, env, tr = run.cfg, run.env, run.tr
    evaluating = env.master or env.parallel == "fsdp"  # FSDP: every rank takes part in the (sharded) forward
    step, interrupted = start_step, 0
    tr.model.train()
    with Interrupt() as interrupt:
        for step in range(start_step + 1, end_step + 1):  # `step` counts completed updates (1-based)
            t0 = time.perf_counter()
            micro = []
            for _ in range(cfg.accum_steps):
                images, tokens = next(batches)
                micro.append((_to_device(images, env.device), tokens.to(env.device, non_blocking=True)))
            logging = step % cfg.log_every == 0 or step == end_step  # the same on every rank
            try:
                loss, grad_norm = train_step(tr, micro, step, logging)
            except _NonFiniteLoss as e:
                raise NonFiniteLossError(step, e.value, run.last_ckpt, run.last_ckpt_step) from None
            except Exception as e:
                _explain_compile_failure(e, tr)
                raise
            run.data_position += cfg.batch_size * cfg.accum_steps
            stop = run.record(step, loss, grad_norm, logging, time.perf_counter() - t0, interrupt.signum)
            if step - start_step <= tr.replica_checks:  # after the step's row is written, outside its timing
                check_replicas(tr, step)
            if stop:
                interrupted = interrupt.signum or signal.SIGTERM  # another rank's signal: pre-emption
                break
            if cfg.save_every > 0 and step % cfg.save_every == 0 and step != end_step:
                run.save(step)
            if evaluating and cfg.eval_every and step % cfg.eval_every == 0 and step != end_step:
                run.evaluate(step)
        # the end, or the interrupted step; save_every -1: no checkpoint at all (benchmarks)
        if step > start_step and run.last_ckpt_step != step and cfg.save_every >= 0:
            run.save(step)
        if evaluating and not interrupted:
            run.evaluate(end_step, announce=False)  # the caller prints the final results
    return step, interrupted


def _announce(cfg: TrainConfig, env: Env, tr: Trainer, samples_per_step: int, out: Path,
              resumed_from: tuple[int, str] | None, damage: dict[str, Any]) -> None:
    """The run's first line: what it chose (device and precision, recipe on how many linears and which layers,
    eager / torch.compile mode / CUDA graphs, model, optimizer, steps, data, output); then notes and warnings
    (rank 0)."""
    raw = tr.raw_model
    n_low = sum(1 for m in raw.modules() if isinstance(m, torch.nn.Linear) and type(m) is not torch.nn.Linear)
    n_lin = sum(1 for m in raw.modules() if isinstance(m, torch.nn.Linear))
    precision = "bf16 autocast" if env.precision == "bf16" else env.precision
    print(
        f"lowbit train: {env.device_name}, {precision} | recipe {cfg.recipe} ({n_low}/{n_lin} linears), "
        f"layers {cfg.layers}, {_fuse_choice(cfg, raw)} | {_compile_choice(cfg, env, tr)} | {cfg.preset} ({tr.n_params:,} params) | "
        f"{cfg.optimizer} lr {cfg.lr:g} | {cfg.steps} steps x {samples_per_step} | {cfg.data}"
        + (f" | {env.world_size} x {env.parallel}" if env.parallel else "")
        + (f" | accum {cfg.accum_steps}" if cfg.accum_steps > 1 else "") + f" | {out}",
        flush=True,
    )
    for note in tr.notes:
        print(note, flush=True)
    if resumed_from is not None:
        print(f"lowbit train: resumed from step {resumed_from[0]} ({resumed_from[1]})", flush=True)
    if n_low == 0 and cfg.recipe not in ("none", "bf16"):
        warn(f"layers={cfg.layers!r} leaves every linear of {cfg.preset} in 16-bit "
             f"(none passes the filter), so recipe {cfg.recipe!r} changes nothing")
    if cfg.steps < cfg.warmup:
        warn(f"steps {cfg.steps} < warmup {cfg.warmup}: the learning rate never reaches "
             f"lr {cfg.lr:g} (set --warmup below --steps)")
    shards = damage.get("damaged_shards") or {}
    if shards:
        listed = "; ".join(f"{p} ({why})" for p, why in list(shards.items())[:3])
        more = f"; and {len(shards) - 3} more" if len(shards) > 3 else ""
        warn(f"{len(shards)} damaged shard(s), read up to the damage: {listed}{more}")
    if damage.get("incomplete_samples"):
        warn(f"{damage['incomplete_samples']:,} sample(s) without an image or a caption "
             "left out of the shards")


def _fuse_choice(cfg: TrainConfig, model: torch.nn.Module) -> str:
    """``per-linear``, or with ``fuse`` how many MLPs and LayerNorms were fused (``convert_clip(fuse=True)``)."""
    if not cfg.fuse:
        return "per-linear (not fused)"
    mlps, norms = fused_counts(model)
    return f"fused ({mlps} MLPs, {norms} LayerNorms)"


def _compile_choice(cfg: TrainConfig, env: Env, tr: Trainer) -> str:
    """``eager``, or what torch.compile compiles (the whole model or each block), its mode, whether it replays
    CUDA graphs and how compiled layers quantize; then why (``resolve_compile``), e.g. ``eager (auto: CPU)``."""
    choice = tr.compiled or resolve_compile(cfg, env)
    if not choice.compile:
        return f"eager ({choice.reason})"
    text = f"torch.compile {choice.scope}, mode {choice.mode}"
    if tr.graphs:
        text += " + CUDA graphs"
    elif choice.mode in CUDA_GRAPH_MODES:
        text += f" (no CUDA graphs on {env.device.type})"
    if cfg.recipe not in ("none", "bf16"):
        text += f", quantize: {cfg.compiled_quantize}"
    return f"{text} ({choice.reason})"


def _steady(step_times: list[float], samples_per_step: int) -> float | None:
    skip = min(5, len(step_times) // 2)
    rest = step_times[skip:]
    return len(rest) * samples_per_step / sum(rest) if rest and sum(rest) > 0 else None


def _lr_used(scheduler: torch.optim.lr_scheduler.LRScheduler, step: int) -> float:
    """The learning rate the update of (1-based) ``step`` used."""
    return scheduler.base_lrs[0] * scheduler.lr_lambdas[0](step - 1)  # type: ignore[attr-defined]
