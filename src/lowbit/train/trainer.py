"""The ``Trainer``: the model (converted to the recipe, sharded / DDP-wrapped / compiled), its optimizer, schedule
and monitors, built from the config (``build_trainer``) or restored from a checkpoint (``restore``); and the
DDP replica check (``check_replicas``)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from lowbit.models import CLIP, convert_clip, count_parameters
from lowbit.train.checkpoint import set_rng_state
from lowbit.train.compiling import CompileChoice, compile_blocks, resolve_compile, resolve_fuse
from lowbit.train.config import CUDA_GRAPH_MODES, TrainConfig, resolve_layers
from lowbit.train.distributed import load_dcp, load_full_into_fsdp, replicas_agree, shard_model
from lowbit.train.env import Env
from lowbit.train.schedule import warmup_cosine_scheduler

__all__ = ["REPLICA_CHECKS", "ReplicaDivergenceError", "Trainer", "build_trainer", "check_replicas", "restore"]

REPLICA_CHECKS = 10  # steps checked after the start (or a resume) under DDP with CUDA graphs


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
    layers: str = "clip"  # which linears the recipe converted: clip or auto (resolve_layers of the config's choice)
    fuse: tuple[bool, str] = (False, "")  # converted fused or per linear, and why (resolve_fuse of the config's choice)

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


def _layers_note(layers: str, model: torch.nn.Module) -> str:
    """``layers auto``: the convert report's measured summary (:meth:`ConvertReport.measured_summary`); ``""``
    otherwise."""
    from lowbit.nn import convert_report

    report = convert_report(model)
    if layers != "auto" or report is None:
        return ""
    return f"lowbit train: layers auto: {report.measured_summary()}"


def build_trainer(cfg: TrainConfig, env: Env, model_cfg: Any) -> Trainer:
    """Model (converted to the recipe, sharded/wrapped/compiled), optimizer, schedule and monitors."""
    torch.manual_seed(cfg.seed)
    raw_model = CLIP(model_cfg)
    n_params = count_parameters(raw_model)
    # layers "auto": each block linear's shape timed on this device at this process's batch (lowbit.nn.autolayers);
    # every rank takes rank 0's timings so that all convert the same layers
    layers = resolve_layers(cfg.layers, env.device)
    choice = resolve_compile(cfg, env)
    fuse = resolve_fuse(cfg, choice)
    raw_model = convert_clip(raw_model, cfg.recipe, keep_last_blocks=cfg.keep_last_blocks, layers=layers,
                             fuse=fuse[0], device=env.device, batch_size=cfg.batch_size,
                             ranks_agree=env.world_size > 1).to(env.device)
    fsdp8 = False
    notes: list[str] = [_layers_note(layers, raw_model)]  # printed after the run's first line
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
        notes=[n for n in notes if n], compiled=choice, layers=layers, fuse=fuse,
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


class ReplicaDivergenceError(RuntimeError):
    """DDP ranks hold different parameters: their gradients were not (all) averaged."""


def check_replicas(tr: Trainer, step: int) -> None:
    """Raise ``ReplicaDivergenceError`` (on every rank) unless the DDP replicas hold the same parameters."""
    if replicas_agree(tr.raw_model):
        return
    how = (" under CUDA graphs: rerun with --compile-mode default (or --no-compile)" if tr.graphs else "")
    raise ReplicaDivergenceError(f"lowbit train: the DDP ranks' parameters differ after step {step}{how}; the "
                                 "last checkpoint (if any) is from before")
