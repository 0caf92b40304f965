"""The run's first line (device, precision, recipe, compile choice, model, optimizer, steps, data, output) and
the notes and warnings after it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from lowbit.messages import warn
from lowbit.models import fused_counts
from lowbit.train.compiling import resolve_compile
from lowbit.train.config import CUDA_GRAPH_MODES, TrainConfig
from lowbit.train.env import Env
from lowbit.train.trainer import Trainer

__all__ = ["announce", "compile_choice", "fuse_choice"]


def announce(cfg: TrainConfig, env: Env, tr: Trainer, samples_per_step: int, out: Path,
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
        f"layers {tr.layers}, {fuse_choice(cfg, tr)} | {compile_choice(cfg, env, tr)} | {cfg.preset} ({tr.n_params:,} params) | "
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
        warn(f"layers={tr.layers!r} leaves every linear of {cfg.preset} in 16-bit "
              f"(none passes the filter), so recipe {cfg.recipe!r} changes nothing")
    if cfg.steps < cfg.warmup:
        warn(f"steps {cfg.steps} < warmup {cfg.warmup}: the learning rate never reaches "
              f"lr {cfg.lr:g} (set --warmup below --steps)")
    shards = damage.get("damaged_shards") or {}
    if shards:
        listed = "; ".join(f"{p} ({why})" for p, why in list(shards.items())[:3])
        more = f"; and {len(shards) - 3} more" if len(shards) > 3 else ""
        warn(f"{len(shards)} damaged shard(s), read up to the damage: {listed}{more}")
    empty = damage.get("empty_shards") or {}
    if empty:  # nothing read from them: say so (summary.json's data section counts them)
        listed = "; ".join(f"{p} ({why})" for p, why in list(empty.items())[:3])
        more = f"; and {len(empty) - 3} more" if len(empty) > 3 else ""
        warn(f"{len(empty)} shard(s) without a usable sample, left out: {listed}{more}")
    if damage.get("incomplete_samples"):
        warn(f"{damage['incomplete_samples']:,} sample(s) without an image or a caption "
              "left out of the shards")


def fuse_choice(cfg: TrainConfig, tr: Trainer) -> str:
    """``per-linear (why)``, or fused with how many MLPs and LayerNorms (``convert_clip(fuse=True)``) and why: the
    trainer's ``resolve_fuse`` (a trainer built elsewhere: the config's own ``fuse``)."""
    fused, why = tr.fuse if tr.fuse[1] else (cfg.fuse is True, f"fuse {str(cfg.fuse).lower()}")
    if not fused:
        return f"per-linear ({'not fused' if why == 'fuse false' else why})"
    mlps, norms = fused_counts(tr.raw_model)
    return f"fused ({mlps} MLPs, {norms} LayerNorms" + ("" if why == "fuse true" else f"; {why}") + ")"


def compile_choice(cfg: TrainConfig, env: Env, tr: Trainer) -> str:
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
