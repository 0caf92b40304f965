"""One ``lowbit bench model`` row: the built model copied, converted to the recipe (``--layers``, ``--fuse``,
``RECIPE:fused`` / ``RECIPE:per-linear``, torchao anchors), compiled (``--compile-scope``, ``--cudagraphs``), warmed
up and timed; the model FLOPs per sample for MFU."""

from __future__ import annotations

import argparse
import copy
import dataclasses
import math
import statistics
import time
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from lowbit.bench.common import (
    BASELINES,
    compile_model,
    is_lowbit_recipe,
    make_optimizer,
    split_recipe,
    time_steps,
    torchao_anchors,
)
from lowbit.bench.profile import profile_row
from lowbit.bench.workloads import ModelSpec, Workload
from lowbit.models import fused_counts

LAYERS = ("auto", "all", "measured")


# ---------------------------------------------------------------------------------------------- conversion
def module_filter(layers: str, recipe: str | None = None, tokens: dict[str, int] | None = None,
                  device: torch.device | None = None) -> Callable[[str, nn.Module], bool] | None:
    """``auto``: None (``convert``'s default size filter); ``all``: every linear; ``measured``: the linears
    ``recipe`` measured faster than bf16 on ``device`` at their ``tokens`` rows (``lowbit.nn.measured_filter``;
    without a recipe, as ``auto``)."""
    if layers not in LAYERS:
        raise ValueError(f"--layers must be one of {', '.join(LAYERS)}, got {layers!r}")
    if layers == "measured" and recipe is not None:
        from lowbit.nn.autolayers import measured_filter

        counts = tokens or {}
        return measured_filter(recipe, counts.get, device if device is not None else "cpu")
    return (lambda fqn, m: True) if layers == "all" else None


def convert_model(model: nn.Module, recipe: str, layers: str, fuse: bool, tokens: dict[str, int] | None = None,
                  device: torch.device | None = None) -> tuple[nn.Module, str, int]:
    """``model`` converted to ``recipe`` (bf16/none: as it is; ``torchao-*``: torchao's training linears on the same
    layers, ``measured`` as ``auto`` for them; ``RECIPE:fused`` / ``RECIPE:per-linear`` override ``fuse``; ``tokens``
    and ``device``: where ``measured`` times each shape); returns (model, "k/n" linears converted, MLPs fused)."""
    import lowbit
    from lowbit.nn.convert import convert_report, default_filter, matmul_layers

    recipe, fuse = split_recipe(recipe, fuse)
    n_lin = matmul_layers(model)
    anchors = torchao_anchors()
    flt = module_filter(layers, recipe if is_lowbit_recipe(recipe) else None, tokens, device)
    if recipe in BASELINES:
        return model, f"0/{n_lin}", 0
    if recipe in anchors:
        model = anchors[recipe](model, flt or default_filter)
        n_conv = sum(1 for m in model.modules() if isinstance(m, nn.Linear)
                     and (type(m) is not nn.Linear or type(m.weight) is not nn.Parameter))
        return model, f"{n_conv}/{n_lin}", 0
    if recipe.startswith("torchao-"):
        raise RuntimeError(f"{recipe}: torchao is not importable here")
    model = lowbit.convert(model, recipe, module_filter=flt, fuse=fuse)
    rep = convert_report(model)
    assert rep is not None
    return model, f"{len(rep.converted)}/{n_lin}", fused_counts(model)[0]


# ---------------------------------------------------------------------------------------------- one row
def time_row(spec: ModelSpec, recipe: str, args: argparse.Namespace, device: torch.device,
             built: Workload) -> dict[str, Any]:
    """Copy ``built`` (the unconverted workload of ``spec``), convert, (compile,) warm up and time one (model,
    recipe); errors propagate to the caller."""

    cuda = device.type == "cuda"
    precision = args.precision if args.precision != "auto" else ("bf16" if cuda else "fp32")
    row: dict[str, Any] = {"model": str(spec), "recipe": recipe, "batch": args.batch_size, "precision": precision}
    torch.manual_seed(args.seed)
    w = dataclasses.replace(built, model=copy.deepcopy(built.model))
    row["flops_per_sample"] = count_flops(w, args.batch_size)  # the model as built: converted layers hide theirs
    tokens = None
    if args.layers == "measured" and is_lowbit_recipe(split_recipe(recipe, args.fuse)[0]):
        # count each linear's rows in one forward on the device; the filter measures those shapes there
        from lowbit.nn.autolayers import linear_tokens

        w.model.to(device)
        with torch.random.fork_rng(devices=[device] if cuda else []):  # every row still times the same batch
            batch = w.batch(args.batch_size, device)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16"):
                tokens = linear_tokens(w.model, lambda: w.loss(w.model, batch))
    model, row["converted"], row["fused"] = convert_model(w.model, recipe, args.layers, args.fuse, tokens, device)
    row["fused_norms"] = fused_counts(model)[1]  # LayerNorms fused with their consumer (lowbit.nn.block_norms)
    from lowbit.nn.convert import convert_report

    if (rep := convert_report(model)) is not None:  # what stayed 16-bit and why, counted by cause (per layer:
        row["convert_report"] = rep.summary()  # lowbit.convert_report(model).table())
        print(f"  [{spec} {recipe}] {rep.summary()}", flush=True)
        if tokens is not None:  # --layers measured: each measured shape's gain, why the rest stayed 16-bit
            row["layers_measured"] = rep.measured_summary()
            print(f"  [{spec} {recipe}] layers measured: {row['layers_measured']}", flush=True)
    model = model.to(device)
    graphs = args.compile and args.cudagraphs
    fwd_model: nn.Module = model
    row["compiled"] = "no"
    if args.compile:
        fwd_model, row["compiled"] = compile_model(model, args.compile_scope, "reduce-overhead" if graphs else None)
        row["compiled"] += " +cudagraphs" if graphs else ""
    inputs = w.batch(args.batch_size, device)
    opt = make_optimizer(model, args.optimizer, None)
    last: list[float] = []
    n = [0]

    def step() -> None:  # forward, loss, backward, optimizer: the same for every row
        n[0] += 1
        if graphs:
            torch.compiler.cudagraph_mark_step_begin()
        opt.zero_grad(set_to_none=True)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16"):
            loss = w.loss(fwd_model, inputs)
        value = loss.item()
        if not math.isfinite(value):  # a speed of a step that does not train is no result
            raise FloatingPointError(f"{spec} {recipe}: non-finite loss {value} at step {n[0]}")
        loss.backward()
        opt.step()
        last[:] = [value]

    t0 = time.perf_counter()
    for i in range(max(args.warmup, 1)):
        step()
        if cuda:
            torch.cuda.synchronize(device)
        print(f"  [{spec} {recipe}] warm-up step {i + 1}/{max(args.warmup, 1)} done "
              f"({time.perf_counter() - t0:.1f} s)", flush=True)
    row["warmup_s"] = time.perf_counter() - t0
    row["optimizer"] = args.optimizer  # lowbit train's parameter groups and defaults (StableAdamW: fused on CUDA)
    times = time_steps(step, args.steps, device)
    ms = statistics.median(times)
    per_step = args.batch_size * w.per_sample
    row.update(loss=last[0], ms_per_step=ms, ms_min=min(times), ms_max=max(times), unit=f"{w.unit}/s",
               throughput=per_step / ms * 1000, samples_per_s=args.batch_size / ms * 1000)
    if cuda:
        row["peak_mem_GiB"] = torch.cuda.max_memory_allocated(device) / 2**30
    if getattr(args, "profile", 0):  # after the timing, so that the profiler's overhead is in no timed step
        profile_row(row, step, args, device, f"{spec} {recipe}")
    return row


def count_flops(w: Workload, batch: int) -> float | None:
    """Model FLOPs per training sample of ``w``'s model (``lowbit.models.flops.count_train_flops``): one forward on
    the meta device (no memory, no time), else two real samples where a model cannot run on meta."""
    from lowbit.models.flops import count_train_flops

    try:
        meta = copy.deepcopy(w.model).to("meta")
        inputs = {k: v.to("meta") for k, v in w.batch(batch, torch.device("cpu")).items()}
        flops = count_train_flops(lambda: w.loss(meta, inputs), samples=batch)
    except Exception:
        flops = None
    if flops is None:
        inputs = w.batch(2, next(w.model.parameters()).device)
        flops = count_train_flops(lambda: w.loss(w.model, inputs), samples=2)
    return flops

