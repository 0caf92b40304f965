"""``lowbit train``: train CLIP (default: the ``tiny`` preset on synthetic data, SwitchBack int8, StableAdamW).

Options come from the defaults, then the checkpoint (``--resume``), then ``--config FILE.yaml``, then the command
line; ``--set KEY=VALUE`` sets any option (``--set model.layer_scale_init=0.0`` for a model field).
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any

HELP = "train CLIP (default: tiny preset, synthetic data, switchback int8, StableAdamW; minutes on a CPU)"

# flag -> (TrainConfig field, type, help)
_OPTIONS: list[tuple[str, str, Any, str]] = [
    ("--preset", "preset", str, "model preset: tiny, vit-s-32, vit-b-32, vit-l-14, vit-h-14"),
    ("--recipe", "recipe", str, "precision recipe from lowbit.nn (switchback, bf16, fp8-switchback, ...) or none"),
    ("--optimizer", "optimizer", str, "adamw or stableadamw"),
    ("--lr", "lr", float, "peak learning rate"),
    ("--beta1", "beta1", float, "Adam beta1"),
    ("--beta2", "beta2", float, "Adam beta2 (the paper: lower is more stable)"),
    ("--eps", "eps", float, "Adam epsilon"),
    ("--weight-decay", "weight_decay", float, "decoupled weight decay (matrices only)"),
    ("--warmup", "warmup", int, "linear warmup steps"),
    ("--grad-clip", "grad_clip", float, "max gradient norm, 0 = off"),
    ("--batch-size", "batch_size", int, "samples per step per process (global batch = this x processes x accum steps)"),
    ("--accum-steps", "accum_steps", int, "micro-batches per update (exact: the loss sees the whole global batch)"),
    ("--parallel", "parallel", str, "under torchrun: ddp (DistributedDataParallel) or fsdp (FSDP2, bf16 params on GPU)"),
    ("--workers", "workers", int, "DataLoader worker processes per rank for the training data, 0 = none"),
    ("--steps", "steps", int, "total steps (the cosine schedule's length)"),
    ("--stop-at", "stop_at", int, "end this invocation after this step, as if pre-empted (resume later)"),
    ("--layers", "layers", str, "default: auto on CUDA, clip on the CPU; clip: convert every block linear; auto: "
     "only those whose recipe measures faster than bf16 at their shape (tokens x in -> out), timed on this GPU at "
     "start-up and cached per shape (~/.cache/lowbit or $LOWBIT_CACHE_DIR; on the CPU a width threshold decides: "
     ">= 1280, so tiny keeps all 16-bit); wide: that threshold alone (the layers lowbit.convert's default converts "
     "in open_clip, timm or Hugging Face models)"),
    ("--compile-mode", "compile_mode", str, "with --compile: default, reduce-overhead (CUDA graphs: no per-launch CPU "
     "cost), max-autotune or max-autotune-no-cudagraphs (without --compile, auto picks reduce-overhead itself)"),
    ("--compiled-quantize", "compiled_quantize", str, "with --compile: kernel (lowbit's Triton quantizers), inductor "
     "(the same numerics traced, so inductor fuses them into the op producing each tensor) or mixed (only the "
     "activation's forward producer traced)"),
    ("--precision", "precision", str, "bf16 or fp32 (default: bf16 autocast on GPU, fp32 on CPU)"),
    ("--data", "data", str, "training data spec (lowbit.data), e.g. synthetic"),
    ("--zeroshot", "zeroshot", str, "zero-shot evaluation spec; auto: a prepared --data folder's own tasks, else "
     "synthetic; none: no evaluation"),
    ("--zeroshot-limit", "zeroshot_limit", int, "images per zero-shot task, 0 = all"),
    ("--max-bad-fraction", "max_bad_fraction", float, "stop when more than this fraction of the samples read is "
     "unusable (undecodable image, missing caption or file; judged after 200 samples; default 0.1)"),
    ("--max-image-pixels", "max_image_pixels", int, "skip (and count) images with more pixels, read from the header "
     "before decoding (default 2^25 = 33.5 MP: above 24-33 MP camera photos; a decoded image that size is 100 MB)"),
    ("--dist-timeout", "dist_timeout", float, "under torchrun: seconds a collective waits for the other ranks before "
     "the run stops with a line naming the frozen or dead rank"),
    ("--out", "out", str, "run directory (default runs/<timestamp>; with --resume, the checkpoint's directory)"),
    ("--resume", "resume", str, "continue exactly from a checkpoint file or run directory"),
    ("--eval-every", "eval_every", int, "steps between zero-shot evaluations, 0 = at the end only"),
    ("--log-every", "log_every", int, "steps between metrics rows"),
    ("--save-every", "save_every", int, "steps between checkpoints, 0 = at the end only, -1 = none (benchmarks)"),
    ("--seed", "seed", int, "random seed (model init and data order)"),
    ("--device", "device", str, "auto, cpu, cuda or cuda:N"),
    ("--threads", "threads", int, "CPU threads, 0 = auto (free cores less one, at least 1)"),
]


def help_defaults() -> dict[str, Any]:
    """TrainConfig's defaults, shown by ``--help`` (the flags themselves default to None: only given ones override)."""
    import dataclasses

    from lowbit.train.config import TrainConfig

    return {f.name: getattr(TrainConfig(), f.name) for f in dataclasses.fields(TrainConfig)}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", metavar="FILE", help="YAML file of options (command-line flags win)")
    for flag, dest, typ, text in _OPTIONS:
        parser.add_argument(flag, dest=dest, type=typ, default=None, help=text)
    parser.add_argument("--compile", dest="compile", action="store_true", default=None,
                        help="torch.compile the whole model with --compile-mode (default: auto: on one GPU, one "
                        "process and accum steps 1, each transformer block compiled with CUDA graphs, mode "
                        "reduce-overhead; eager elsewhere; the run's first line says which and why)")
    parser.add_argument("--no-compile", dest="compile", action="store_false", default=None,
                        help="eager: no torch.compile, even on a GPU")
    parser.add_argument("--monitor", action="store_true", default=None, help="log per-parameter RMS (loss-spike predictor)")
    parser.add_argument("--activations", action="store_true", default=None,
                        help="log max |activation| of each transformer block as act/<block>")
    parser.add_argument("--local-loss", action="store_true", default=None,
                        help="each rank: its samples against all gathered ones (open_clip's local_loss)")
    parser.add_argument("--no-gather-with-grad", dest="gather_with_grad", action="store_false", default=None,
                        help="all-gather features without gradient (the local gradient is rescaled; same result)")
    parser.add_argument("--fsdp-8bit-allgather", dest="fsdp_8bit_allgather", action="store_true", default=None,
                        help="--parallel fsdp: all-gather weights of tensor-wise recipes (switchback, switchback-m, "
                        "fp8-switchback, fp8-tensorwise) as their int8/e4m3 codes, half the bytes of bf16; exact (default)")
    parser.add_argument("--no-fsdp-8bit-allgather", dest="fsdp_8bit_allgather", action="store_false", default=None,
                        help="--parallel fsdp: all-gather weights in 16 bits")
    parser.add_argument("--fuse", dest="fuse", action="store_true", default=None,
                        help="fused blocks: each MLP one LowbitMLP (fc1, activation, fc2 in one autograd function), "
                        "each LayerNorm fused with the quantization of its consumer (LayerNormMLP, LayerNormLinear); "
                        "same parameters and checkpoints (default auto: fused where the run is compiled and the "
                        "recipe row-wise, as fp8-switchback and switchback; per linear elsewhere)")
    parser.add_argument("--no-fuse", dest="fuse", action="store_false", default=None,
                        help="convert linear by linear")
    parser.add_argument("--no-progress", dest="progress", action="store_false", default=None, help="no progress bar")
    parser.add_argument("--overwrite", action="store_true", default=None,
                        help="--out holds another run: delete it and start over (without this the run is refused)")
    parser.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE",
                        help="set any option (YAML value), e.g. --set model.qk_norm=true; repeatable")


def _parse_sets(items: list[str]) -> dict[str, Any]:
    import yaml

    out: dict[str, Any] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise ValueError(f"--set expects KEY=VALUE, got {item!r}")
        try:
            value = yaml.safe_load(raw) if raw else ""
        except yaml.YAMLError:
            raise ValueError(f"--set {item!r}: the value is not valid YAML") from None
        *parents, leaf = key.replace("-", "_").split(".")
        node = out
        for p in parents:
            node = node.setdefault(p, {})
            if not isinstance(node, dict):
                raise ValueError(f"--set {item!r}: {p} is not a mapping")
        node[leaf] = value
    return out


def overrides_from_args(args: argparse.Namespace) -> dict[str, Any]:
    """The options given on the command line (flags left out are not overrides)."""
    out = {dest: getattr(args, dest) for _, dest, _, _ in _OPTIONS if getattr(args, dest, None) is not None}
    for name in ("compile", "monitor", "activations", "progress", "local_loss", "gather_with_grad",
                 "fsdp_8bit_allgather", "overwrite", "fuse"):
        if getattr(args, name, None) is not None:
            out[name] = getattr(args, name)
    sets = _parse_sets(getattr(args, "sets", []) or [])
    if "model" in sets:
        out["model"] = sets.pop("model")
    out.update(sets)
    return out


def run(args: argparse.Namespace) -> int:
    """Errors reach the user as one line from ``lowbit.cli.main`` (a traceback with ``--debug``); warnings, lowbit's
    and the libraries', as one line each on stderr (``lowbit.messages``, routed by ``lowbit.cli.main``)."""
    return _run(args)


def _run(args: argparse.Namespace) -> int:
    from lowbit.train import NonFiniteLossError, resolve_config, train

    try:
        cfg = resolve_config(overrides_from_args(args), args.config)
    except ValueError as e:
        print(f"lowbit train: error: {e}", file=sys.stderr)
        if debug_enabled(args):
            raise
        return 2
    try:
        summary = train(cfg)
    except NonFiniteLossError as e:
        print(f"lowbit train: error: {e}", file=sys.stderr)
        if debug_enabled(args):
            raise
        return 1
    if summary["status"] == "nothing to do":  # a finished run resumed: the trainer said so and changed nothing
        return 0
    if int(os.environ.get("RANK", "0")) != 0:  # torchrun: rank 0 reports
        return EXIT_CODES.get(summary.get("signal", ""), 0)
    if summary["status"] == "interrupted":
        print(f"lowbit train: {summary['signal']}: interrupted at step {summary['step']}; resume with: "
              f"lowbit train --resume {summary['out']}", file=sys.stderr)
        return EXIT_CODES[summary["signal"]]
    loss = summary["final_loss"]
    print(f"run: {summary['out']}  steps: {summary['step']}  final loss: {loss:.4f}" if loss is not None else f"run: {summary['out']}")
    if summary["samples_per_s"]:
        print(throughput_line(summary))
    for task, acc in summary["zeroshot"].items():
        print(f"zero-shot top-1 on {task}: {100 * acc:.1f}% (chance {100 * summary['chance'][task]:.1f}%)")
    if len(summary["zeroshot"]) > 1:
        chance = sum(summary["chance"].values()) / len(summary["chance"])
        print(f"zero-shot top-1, mean of {len(summary['zeroshot'])} tasks: {100 * summary['zeroshot_mean']:.1f}% (chance {100 * chance:.1f}%)")
    return 0


def throughput_line(summary: dict[str, Any]) -> str:
    """Steady-state images/s (after the warm-up steps: compilation, autotuning) beside the whole-run average, each
    with its MFU (``lowbit.hardware``; "unknown" off the GPU table), and the share of the step time the device
    waited for the data loader (a run that waits much is input-bound: more ``--workers``)."""
    from lowbit.hardware import format_mfu

    where = f"on {summary['device']} ({summary['recipe']}, {summary['precision']})"
    average = (f"{summary['samples_per_s']:.1f} images/s whole-run average (warm-up and compilation included, "
               f"MFU {format_mfu(summary.get('mfu'))})")
    wait = summary.get("data_wait_frac")
    waited = f"; data wait {100 * wait:.1f}% of the step time" if wait is not None else ""
    steady = summary.get("samples_per_s_steady")
    if not steady:
        return f"throughput: {average} {where}{waited}"
    return (f"throughput: {steady:.1f} images/s steady state (after warm-up, MFU "
            f"{format_mfu(summary.get('mfu_steady'))}), {average} {where}{waited}")


EXIT_CODES = {"SIGINT": 130, "SIGTERM": 143}  # 128 + the signal's number, as shells report them


def debug_enabled(args: argparse.Namespace | None = None) -> bool:
    """``--debug`` or ``LOWBIT_DEBUG=1``: errors keep their traceback."""
    return bool(getattr(args, "debug", False)) or os.environ.get("LOWBIT_DEBUG", "") not in ("", "0")
