"""``lowbit bench model``: the training step of a third-party model (open_clip, timm, Hugging Face transformers),
bf16 vs each recipe, converted with one ``lowbit.convert(model, recipe, module_filter=..., fuse=...)`` call.

``--model SPEC`` names the model without downloading anything (random weights, random inputs):
``open_clip:<name>[:key=value,...]``, ``timm:<name>[:key=value,...]`` or ``hf:<model type or config
class>[:key=value,...]``; how each is built and fed is ``lowbit.bench.workloads``'s docstring. Each package is needed
only for its own prefix; without it the command stops with one line naming it.

The step is the same for every row: forward under bf16 autocast on CUDA (fp32 on the CPU; ``--precision``),
the loss (read back, so that a non-finite loss is an error, not a speed), backward, and the optimizer step
(``--optimizer``: lowbit's StableAdamW, fused Triton kernel on CUDA, or torch's AdamW; ``lowbit train``'s
parameter groups) on fp32 master weights. The timing, the per-row error handling and the output follow
``lowbit bench step``: the median of ``--steps`` steps after ``--warmup`` untimed ones, the ratio to the bf16 row
of the same run, ``torch.cuda.max_memory_allocated`` per row (parameters, gradients and optimizer state
included), ``model.json`` / ``model.md`` rewritten after every row, a process per row on CUDA (``--isolate``).
MFU: the model as built, counted by ``lowbit.models.flops.count_train_flops`` (PyTorch's ``FlopCounterMode`` over
one forward on the meta device, x3 for the backward), per sample, over the device's dense bf16 peak.

* ``--recipe RECIPE:fused`` / ``RECIPE:per-linear``: that row with / without ``fuse``, whatever ``--fuse`` says,
  so that one run (one baseline, one autotuning of each GEMM shape) times both.
* ``--layers auto`` (default): ``convert``'s own filter (both widths ≥ ``lowbit.nn.convert.MIN_FEATURES`` and
  multiples of 16); ``all``: every ``nn.Linear`` (``module_filter=lambda fqn, m: True``). ``--fuse``: also fuse
  the Linear → activation → Linear MLPs ``convert`` recognises (off by default, as in ``convert``; on an H100 the
  timm and Hugging Face ViT-H steps ran the same fused and per-linear, ``bench/results/h100/model-vit-h-14.md``). The torchao anchors (when importable) use the same
  filter.
* ``--compile``: ``torch.compile`` of the repeated blocks (``--compile-scope blocks``: the children of every
  ``nn.ModuleList`` / ``nn.Sequential`` whose children are two or more modules of one class, compiled in place;
  the whole model when there are none) or of the whole model (``model``). ``--cudagraphs``: with ``mode=
  "reduce-overhead"``, each step marked with ``torch.compiler.cudagraph_mark_step_begin`` as the trainer does.

The modules: ``lowbit.bench.workloads`` (the spec, the model of each prefix and its inputs and loss),
``lowbit.bench.model_row`` (one row: conversion, compilation, timing, FLOPs) and this one (the run: the rows, the
table, the options). The names of the first two are re-exported here.
"""

from __future__ import annotations

import argparse
from typing import Any

import torch

from lowbit.bench.common import (
    RowTable,
    cleanup,
    compile_model,
    environment,
    repeated_blocks,
    requested_recipes,
    setup_device,
    split_recipe,
)
from lowbit.bench.model_row import (
    LAYERS,
    convert_model,
    count_flops,
    module_filter,
    time_row,
)
from lowbit.bench.profile import add_profile_argument
from lowbit.bench.rows import add_isolate_argument, isolate_default, plain_args, run_row
from lowbit.bench.workloads import (
    PACKAGES,
    PIP_NAMES,
    ModelSpec,
    Workload,
    build_workload,
    hf_config,
    hf_workload,
    open_clip_kwargs,
    open_clip_workload,
    parse_spec,
    require,
    timm_input_size,
    timm_workload,
)

__all__ = [
    "COLUMNS", "DEFAULT_RECIPES", "HELP", "LAYERS", "PACKAGES", "PIP_NAMES", "ROW_TARGET", "ModelSpec", "Workload",
    "add_arguments", "build_workload", "check", "compile_model", "convert_model", "count_flops", "hf_config",
    "hf_workload", "measure_row", "module_filter", "open_clip_kwargs", "open_clip_workload", "parse_spec",
    "repeated_blocks", "require", "run", "run_model", "split_recipe", "time_row", "timm_input_size", "timm_workload",
]

HELP = ("an open_clip, timm or Hugging Face model's training step (random weights, no download) per recipe vs bf16: "
        "images/s or tokens/s, peak memory")

DEFAULT_RECIPES = ["bf16", "switchback", "fp8-switchback"]
COLUMNS = ["model", "recipe", "batch", "compiled", "converted", "fused", "ms_per_step", "throughput", "unit",
           "vs_bf16", "tflops", "mfu", "peak_mem_GiB", "loss", "warmup_s", "optimizer", "error"]


# The function a row runs (in this process or in a child: lowbit.bench.rows); a test points it at a stand-in.
ROW_TARGET = "lowbit.bench.model:measure_row"
_BUILT: dict[str, Workload] = {}  # spec -> the workload as built, reused by the rows run in this process


def measure_row(job: dict[str, Any]) -> dict[str, Any]:
    """One row of ``job`` (``args``, ``spec``, ``recipe``): what a child process runs. The model of a spec is built
    once per process (random init of a ViT-H takes seconds) and copied per row."""
    args = argparse.Namespace(**job["args"])
    device = torch.device(args.device)
    setup_device(device)
    spec = parse_spec(job["spec"])
    key = f"{spec}|{args.seq_len}|{args.seed}"
    cleanup(device)
    try:
        if key not in _BUILT:
            torch.manual_seed(args.seed)
            _BUILT.clear()
            _BUILT[key] = build_workload(spec, args.seq_len)
        return time_row(spec, job["recipe"], args, device, _BUILT[key])
    finally:
        cleanup(device)


def _conversion(row: dict[str, Any]) -> str:
    """What a row's line says after its MFU: the linears converted, the MLPs (and LayerNorms) fused."""
    norms = f" (+ {row['fused_norms']} LayerNorms)" if row.get("fused_norms") else ""
    return f", converted {row['converted']}" + (f", fused {row['fused']}{norms}" if row["fused"] else "")


def run_model(args: argparse.Namespace) -> dict[str, Any]:
    """Every (model, recipe) row; the table of finished rows is written after each row and at the end, whatever
    ends the run (an exception, Ctrl-C: then ``payload["interrupted"]``)."""
    specs = check(args)
    device = torch.device(args.device)
    isolate = isolate_default(args)
    payload: dict[str, Any] = {"env": environment(device), "args": plain_args(args), "rows": [], "isolated": isolate}
    table = RowTable("model", args.out, COLUMNS, payload, rate="throughput", samples="samples_per_s")
    try:
        with table.recording():
            for spec in specs:
                table.new_group()
                for recipe in requested_recipes(args):
                    print(f"[{spec} {recipe}] batch {args.batch_size}: building" + (" and compiling" if args.compile
                          else "") + (" (own process)" if isolate else ""), flush=True)
                    job = {"args": plain_args(args), "spec": str(spec), "recipe": recipe}
                    row = {"model": str(spec), "recipe": recipe, "batch": args.batch_size,
                           **run_row(ROW_TARGET, job, isolate)}
                    table.add(row, f"{spec} {recipe}", row.get("flops_per_sample"), detail=_conversion)
    finally:
        _BUILT.clear()
    return payload


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", nargs="+", required=True, metavar="SPEC",
                        help="open_clip:<name>[:k=v,...] (open_clip.create_model, pretrained=None), "
                             "timm:<name>[:k=v,...] (timm.create_model, pretrained=False) or "
                             "hf:<model type or config class>[:k=v,...] (a transformers model from its config, "
                             "e.g. hf:clip:vision.hidden_size=1280); no download")
    parser.add_argument("--recipe", "--recipes", dest="recipes", nargs="+", default=DEFAULT_RECIPES,
                        help="lowbit recipes, bf16/none (the model as built, the baseline; added if missing) or "
                             "torchao-* anchors; RECIPE:fused / RECIPE:per-linear set --fuse for that row only")
    parser.add_argument("--batch-size", type=int, default=32, help="samples per step, same for every recipe")
    parser.add_argument("--seq-len", type=int, default=0,
                        help="tokens per text sample (0: the model's maximum, at most 512; CLIP: its context)")
    parser.add_argument("--steps", type=int, default=10, help="timed steps per row (median reported)")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps first (compilation happens here)")
    parser.add_argument("--layers", choices=list(LAYERS), default="auto",
                        help="auto: lowbit.convert's default filter (both widths >= 1280, multiples of 16); "
                             "all: every nn.Linear; measured: only the linears whose recipe measures faster than "
                             "bf16 on this GPU at the rows each sees in one forward (lowbit.nn.measured_filter with "
                             "linear_tokens; cached; without CUDA the width threshold decides)")
    parser.add_argument("--fuse", action="store_true",
                        help="convert(..., fuse=True): Linear -> activation -> Linear MLPs as one LowbitMLP "
                             "(opt-in, as in convert)")
    parser.add_argument("--compile", action="store_true", help="torch.compile (see --compile-scope)")
    parser.add_argument("--cudagraphs", action="store_true",
                        help="with --compile: mode='reduce-overhead' (CUDA graphs: launches cost no CPU time)")
    parser.add_argument("--compile-scope", choices=["blocks", "model"], default="blocks",
                        help="blocks: each repeated block (the whole model when none is found); model: the whole model")
    parser.add_argument("--optimizer", choices=["stableadamw", "adamw"], default="stableadamw")
    parser.add_argument("--precision", choices=["auto", "bf16", "fp32"], default="auto",
                        help="auto: bf16 autocast on CUDA, fp32 on the CPU")
    parser.add_argument("--seed", type=int, default=0, help="weights of every row (the same model per row)")
    parser.add_argument("--no-anchors", action="store_true", help="leave out the torchao anchors")
    add_profile_argument(parser, "<model>-<recipe>")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--out", default=None, help="directory for model.json and model.md (rewritten per row)")
    add_isolate_argument(parser)


def check(args: argparse.Namespace) -> list[ModelSpec]:
    """The options and every ``--model``'s package, before anything runs (``lowbit bench`` calls it before its
    CPU warning): a bad value or a missing package is one line, not a table of errors."""
    if args.steps < 1 or args.warmup < 0 or args.batch_size < 1 or args.seq_len < 0 or args.profile < 0:
        raise ValueError("--steps and --batch-size must be >= 1, --warmup, --seq-len and --profile >= 0")
    if args.cudagraphs and not args.compile:
        raise ValueError("--cudagraphs needs --compile (CUDA graphs come from torch.compile's reduce-overhead mode)")
    specs = [parse_spec(s) for s in args.model]
    for spec, text in zip(specs, args.model, strict=True):
        require(spec.source, text)
    return specs


def run(args: argparse.Namespace) -> int:
    payload = run_model(args)
    return 130 if payload.get("interrupted") else 0

