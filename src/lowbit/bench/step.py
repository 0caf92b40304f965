"""``lowbit bench step``: throughput and peak memory of the full CLIP training step, per recipe.

One step is ``lowbit train``'s own step function (``lowbit.train.step.train_step``) with the trainer's optimizer
(``lowbit.train.trainer``'s parameter groups and optimizer): both towers forward, the contrastive loss (read back for
the trainer's non-finite check), backward (the gradient norm only with clipping: a step of ``lowbit train`` that
logs nothing takes none), the optimizer step (StableAdamW, fused Triton
kernel on CUDA), ``logit_scale`` clamp. Under bf16 autocast on CUDA
(fp32 on the CPU), with fp32 master weights, on random images and tokens already on the device (no data loader,
so the numbers are the model's, not the input pipeline's). Every recipe of a preset runs at the same batch size.

* Recipes go through ``lowbit.models.convert_clip`` (``--layers clip``: every block linear, as ``lowbit train``
  does on the CPU; ``--layers auto``: as ``lowbit train`` on CUDA, only the block linears whose recipe measures faster
  than bf16 at their shape at this batch, timed on the device when the row's model is converted and cached per
  shape (``lowbit.nn.autolayers``; on the CPU and for the torchao anchors, ``lowbit.nn.convert``'s width
  threshold).
  ``bf16`` / ``none`` are the plain ``nn.Linear`` model, the baseline of the ratios. A plain recipe name converts per
  linear; ``RECIPE:fused`` as ``lowbit train`` does by default when compiled (``fuse: auto``).
* When torchao is importable (and ``--no-anchors`` is not given), its float8 (tensorwise, rowwise) and int8
  mixed-precision training linears join the table as anchors, on the same layers.
* ``--compile``: ``torch.compile`` of each transformer block (``--compile-scope blocks``, regional compilation:
  one compiled graph per tower, reused by all its blocks, so ViT-H compiles in seconds rather than minutes)
  or of the whole model (``--compile-scope model``). Compilation happens in the warm-up steps and is excluded
  from the timing (reported as ``warmup_s``). ``--cudagraphs`` compiles with ``mode="reduce-overhead"``: the
  blocks replay CUDA graphs, so the per-launch CPU cost (about 40 µs per Triton launch on the H100 host, several
  launches per quantized linear) no longer bounds the step.
* Timing: the median of per-step times after ``--warmup`` steps (CUDA events on CUDA, ``perf_counter`` on the
  CPU); images/s = batch / median; ratio = this row's images/s over the baseline row of the same preset measured
  in the same run. Peak memory: ``torch.cuda.max_memory_allocated`` (reset per row; parameters, gradients and
  optimizer state included).
* MFU: model FLOPs per image (``lowbit.models.flops.clip_train_flops``: both towers, attention and the loss,
  forward + backward) times images/s, as ``tflops`` and as a share of the device's dense bf16 peak (``mfu``,
  ``lowbit.hardware``; "unknown" on the CPU). A row above 75% is printed with a warning: a measurement error.
* A row that fails (out of memory, compile error, a recipe the device cannot run) is recorded with its error;
  the others still run. On CUDA each row runs in a process of its own (``--isolate``, ``lowbit.bench.rows``):
  a row that crashes or poisons the CUDA context (an illegal memory access in a torchao anchor) loses only
  itself. Results are rewritten to ``--out`` after every row, and the table of finished rows is written and
  printed whatever ends the run (an exception, Ctrl-C), so a run cut short keeps its rows.

A timm or Hugging Face model's step (converted with ``lowbit.convert``): ``lowbit bench step --model SPEC`` runs
``lowbit bench model`` (``lowbit.bench.model``) with this command's options.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from lowbit.bench.common import (
    BASELINES,
    RowTable,
    cleanup,
    environment,
    is_lowbit_recipe,
    make_optimizer,
    requested_recipes,
    setup_device,
    split_recipe,
    time_steps,
    torchao_anchors,
)
from lowbit.bench.common import compile_model as common_compile_model
from lowbit.bench.profile import add_profile_argument, profile_row
from lowbit.bench.rows import add_isolate_argument, isolate_default, plain_args, run_row
from lowbit.kernels import ops
from lowbit.models.convert import LAYERS
from lowbit.nn.convert import convert_report

HELP = "full CLIP training step (towers, loss, backward, optimizer) per recipe vs bf16: images/s, MFU, peak memory"

DEFAULT_RECIPES = ["bf16", "switchback", "switchback-m", "fp8-switchback", "fp8-tensorwise"]
# Same batch for every recipe of a preset. Sized for one 80 GB H100 with the bf16 baseline (fp32 master weights
# and AdamW state, bf16 activations; see experiments/gpu_step.sh for the estimate).
DEFAULT_BATCH = {"tiny": 8, "vit-s-32": 256, "vit-b-32": 256, "vit-l-14": 128, "vit-h-14": 96}
COLUMNS = ["preset", "recipe", "batch", "compiled", "quantize", "converted", "ms_per_step", "images_per_s", "vs_bf16",
           "tflops", "mfu", "peak_mem_GiB", "loss", "warmup_s", "graphs", "optimizer", "error"]


# ---------------------------------------------------------------------------------------------- conversion
def layer_filter(layers: str, recipe: str | None = None, device: torch.device | None = None,
                 tokens: dict[str, int] | None = None) -> Callable[[str, nn.Module], bool]:
    """Which linears a recipe converts: ``clip`` = every block linear; ``auto`` = those that ``recipe`` runs faster
    than bf16 at their shape, measured on ``device`` at ``tokens[tower]`` rows (without them: ``lowbit.nn``'s
    size threshold); see ``lowbit.models.convert``."""
    from lowbit.models import make_clip_module_filter

    try:
        return make_clip_module_filter(layers=layers, recipe=recipe, device=device, tokens=tokens)
    except ValueError:
        raise ValueError(f"--layers must be one of {', '.join(LAYERS)}, got {layers!r}") from None


def build_model(preset: str, recipe: str, device: torch.device, layers: str = "clip",
                batch: int = 0) -> tuple[nn.Module, str]:
    """The preset's CLIP on ``device`` converted to ``recipe`` (or a torchao anchor); returns (model, "k/n")
    where k of the n ``nn.Linear`` modules were converted (``layers="auto"``: measured at ``batch`` samples per
    step on ``device``, see :func:`layer_filter`). ``RECIPE:fused`` converts with
    ``convert_clip(fuse=True)`` (each block's LayerNorm→qkv and LayerNorm→MLP fused; ``bf16:fused`` is lowbit's
    fused 16-bit path), ``RECIPE:per-linear`` (the same as a plain name) without."""
    from lowbit.models import CLIP, convert_clip, fused_counts, get_config

    recipe, fuse = split_recipe(recipe, False)
    if fuse and recipe in BASELINES:
        recipe = "bf16"  # lowbit's fused 16-bit blocks, not the plain nn.Linear baseline
    elif fuse and recipe.startswith("torchao-"):
        raise ValueError(f"{recipe}:fused: torchao anchors convert per linear only")
    model = CLIP(get_config(preset))
    n_lin = sum(1 for m in model.modules() if isinstance(m, nn.Linear))
    from lowbit.models.convert import clip_tokens

    anchors = torchao_anchors()
    flt = layer_filter(layers, recipe if is_lowbit_recipe(recipe) else None, device,
                       clip_tokens(model.config, batch) if batch > 0 else None)
    if recipe in BASELINES and not fuse:
        pass
    elif recipe in anchors:
        model = anchors[recipe](model, flt)
    elif recipe.startswith("torchao-"):
        raise RuntimeError(f"{recipe}: torchao is not importable here")
    else:
        model = convert_clip(model, recipe, module_filter=flt, fuse=fuse)
    model = model.to(device)
    n_conv = sum(1 for m in model.modules() if isinstance(m, nn.Linear) and type(m) is not nn.Linear)
    if recipe == "torchao-int8-mixed":  # a weight subclass, not a module swap
        n_conv = sum(1 for m in model.modules() if isinstance(m, nn.Linear) and type(m.weight) is not nn.Parameter)
    if fuse:
        mlps, norms = fused_counts(model)
        return model, f"{n_conv}/{n_lin}, fused {mlps} MLPs + {norms} LNs"
    return model, f"{n_conv}/{n_lin}"


def compile_model(model: nn.Module, scope: str, mode: str | None = None) -> nn.Module:
    """Regional (``blocks``: each transformer block of both towers, in place) or whole-model (``model``)
    ``torch.compile`` (:func:`lowbit.bench.common.compile_model`, as ``bench model`` compiles); ``mode`` is
    torch.compile's (``"reduce-overhead"``: CUDA graphs)."""
    return common_compile_model(model, scope, mode)[0]


def random_batch(model: nn.Module, batch: int, device: torch.device, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Random images and token ids (one end token per caption, at a random position) on ``device``."""
    cfg = model.config
    g = torch.Generator().manual_seed(seed)
    images = torch.randn(batch, 3, cfg.vision.image_size, cfg.vision.image_size, generator=g)
    ctx, vocab = cfg.text.context_length, cfg.text.vocab_size
    eot = model.text.eot_id
    tokens = torch.randint(1, vocab, (batch, ctx), generator=g)
    tokens[tokens == eot] = 1
    pos = torch.randint(2, ctx, (batch,), generator=g)
    tokens[torch.arange(batch), pos] = eot
    return images.to(device), tokens.to(device)


# ---------------------------------------------------------------------------------------------- one row
def time_row(preset: str, recipe: str, batch: int, args: argparse.Namespace, device: torch.device) -> dict[str, Any]:
    """Build, (compile,) warm up and time one (preset, recipe); errors propagate to the caller."""
    cuda = device.type == "cuda"
    precision = args.precision if args.precision != "auto" else ("bf16" if cuda else "fp32")
    row: dict[str, Any] = {"preset": preset, "recipe": recipe, "batch": batch, "precision": precision,
                           "compiled": (args.compile_scope + (" +cudagraphs" if args.cudagraphs else ""))
                           if args.compile else "no"}
    torch.manual_seed(0)
    graphs0, skips0 = _graphs(), _cudagraph_skips()
    model, row["converted"] = build_model(preset, recipe, device, args.layers, batch)
    if args.layers == "auto" and (report := convert_report(model)) is not None:  # which layers stayed 16-bit, and why
        row["layers_auto"] = report.measured_summary()
        print(f"  [{preset} {recipe}] layers auto: {row['layers_auto']}", flush=True)
    graphs = args.compile and args.cudagraphs
    fwd = compile_model(model, args.compile_scope, "reduce-overhead" if graphs else None) if args.compile else model
    images, tokens = random_batch(model, batch, device)
    impl: str | None = None
    opt = make_optimizer(model, args.optimizer, impl)

    from lowbit.train.env import Env
    from lowbit.train.step import _NonFiniteLoss, train_step
    from lowbit.train.trainer import Trainer

    env = Env(world_size=1, rank=0, parallel=None, device=device, precision=precision)
    last: list[float] = []  # the latest step's loss
    n = [0]

    def step() -> None:  # the trainer's step: forward, loss, backward, grad norm, optimizer, clamp
        n[0] += 1
        tr = Trainer(model=fwd, raw_model=model, optimizer=opt, env=env, graphs=graphs)
        try:
            loss, _ = train_step(tr, [(images, tokens)], n[0], logging=False)
        except _NonFiniteLoss as e:  # a speed of a step that does not train is no result
            raise FloatingPointError(f"{preset} {recipe}: non-finite loss {e.value} at step {n[0]}") from None
        last[:] = [loss]

    def sync() -> None:
        if cuda:
            torch.cuda.synchronize(device)

    t0 = time.perf_counter()
    for i in range(max(args.warmup, 1)):
        try:
            step()
        except Exception:
            # a torchao weight subclass may not go through the fused Triton optimizer: retry once with foreach
            if i > 0 or impl is not None or not recipe.startswith("torchao-") or not cuda:
                raise
            impl = "foreach"
            opt = make_optimizer(model, args.optimizer, impl)
            model.zero_grad(set_to_none=True)
            step()
        sync()
        print(f"  [{preset} {recipe}] warm-up step {i + 1}/{max(args.warmup, 1)} done "
              f"({time.perf_counter() - t0:.1f} s)", flush=True)
    row["warmup_s"] = time.perf_counter() - t0
    subclass = any(g.get("foreach") for g in opt.param_groups) and impl is None
    default = "fused" if cuda else "foreach"
    row["optimizer"] = f"{args.optimizer} ({impl or default}{', subclass weights foreach' if subclass else ''})"
    row["graphs"] = _graphs() - graphs0
    skipped = _cudagraph_skips() - skips0
    if graphs and skipped:  # inductor fell back to plain launches for some graphs: say so, not a silent "cudagraphs"
        row["compiled"] += f" ({skipped} graph(s) without)"
        print(f"  [{preset} {recipe}] note: --cudagraphs: inductor ran {skipped} compiled graph(s) without CUDA "
              "graphs" + (" (the CPU has none)" if not cuda else " (TORCH_LOGS=cudagraphs says why)"), flush=True)
    times = time_steps(step, args.steps, device)
    row["loss"] = float(last[0])
    ms = statistics.median(times)
    row.update(ms_per_step=ms, ms_min=min(times), ms_max=max(times), images_per_s=batch / ms * 1000)
    if cuda:
        row["peak_mem_GiB"] = torch.cuda.max_memory_allocated(device) / 2**30
    if getattr(args, "profile", 0):  # after the timing, so that the profiler's overhead is in no timed step
        profile_row(row, step, args, device, f"{preset} {recipe}")
    return row


def _graphs() -> int:
    """Graphs dynamo has compiled so far in this process (regional compilation: about 2 per tower and row)."""
    try:
        from torch._dynamo.utils import counters

        return int(counters["stats"]["unique_graphs"])
    except Exception:  # pragma: no cover
        return 0


def _cudagraph_skips() -> int:
    """Compiled graphs inductor has run without CUDA graphs though asked for them (``reduce-overhead``)."""
    try:
        from torch._dynamo.utils import counters

        return int(counters["inductor"]["cudagraph_skips"])
    except Exception:  # pragma: no cover
        return 0


def _rows(args: argparse.Namespace) -> list[tuple[str, str | None]]:
    """(recipe, compiled-quantize mode) per row: a compiled lowbit recipe once per requested mode, the rest once
    (mode None: bf16 and the torchao anchors quantize, if at all, their own way)."""
    rows: list[tuple[str, str | None]] = []
    for recipe in requested_recipes(args):
        modes = list(dict.fromkeys(args.compiled_quantize)) if is_lowbit_recipe(recipe) and args.compile else [None]
        rows += [(recipe, m) for m in modes]
    return rows


# The function a row runs (in this process or in a child: lowbit.bench.rows); a test points it at a stand-in.
ROW_TARGET = "lowbit.bench.step:measure_row"


def measure_row(job: dict[str, Any]) -> dict[str, Any]:
    """One row of ``job`` (``args``, ``preset``, ``recipe``, ``batch``, ``mode``): what a child process runs."""
    args = argparse.Namespace(**job["args"])
    device = torch.device(args.device)
    setup_device(device)
    cleanup(device)
    try:
        with ops.compiled_quantize_mode(job["mode"] or ops.compiled_quantize()):
            return time_row(job["preset"], job["recipe"], job["batch"], args, device)
    finally:
        cleanup(device)


def flops_per_image(preset: str, batch: int) -> float | None:
    """Model FLOPs of one trained image-caption pair (``lowbit.models.flops.clip_train_flops``)."""
    from lowbit.models import get_config
    from lowbit.models.flops import clip_train_flops

    try:
        return clip_train_flops(get_config(preset), batch)
    except (KeyError, ValueError):
        return None


def run_step(args: argparse.Namespace) -> dict[str, Any]:
    """Every (preset, recipe) row; the table of finished rows is written after each row and at the end, whatever
    ends the run (an exception, Ctrl-C: then ``payload["interrupted"]``)."""
    device = torch.device(args.device)
    isolate = isolate_default(args)
    payload: dict[str, Any] = {"env": environment(device), "args": plain_args(args), "rows": [],
                               "isolated": isolate}
    table = RowTable("step", args.out, COLUMNS, payload, rate="images_per_s", samples="images_per_s", unit="img/s")
    with table.recording():
        for preset in args.preset:
            batch = args.batch_size or DEFAULT_BATCH.get(preset, 64)
            flops = flops_per_image(preset, batch)
            table.new_group()
            for recipe, mode in _rows(args):
                label = recipe + (f" (quantize: {mode})" if mode else "")
                print(f"[{preset} {label}] batch {batch}: building" + (" and compiling" if args.compile else "")
                      + (" (own process)" if isolate else ""), flush=True)
                job = {"args": plain_args(args), "preset": preset, "recipe": recipe, "batch": batch, "mode": mode}
                row = {"preset": preset, "recipe": recipe, "batch": batch, **run_row(ROW_TARGET, job, isolate)}
                row["quantize"] = mode or "-"
                table.add(row, f"{preset} {label}", flops)
    return payload


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--preset", nargs="+", default=["vit-b-32"], help="CLIP presets (lowbit.models)")
    parser.add_argument("--recipe", "--recipes", dest="recipes", nargs="+", default=DEFAULT_RECIPES,
                        help="lowbit recipes, bf16/none (plain nn.Linear, the baseline; added if missing) or "
                             "torchao-* anchors")
    parser.add_argument("--batch-size", type=int, default=0,
                        help=f"images per step, same for every recipe (0: per preset, {DEFAULT_BATCH})")
    parser.add_argument("--steps", type=int, default=10, help="timed steps per row (median reported)")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps first (compilation happens here)")
    parser.add_argument("--compile", action="store_true", help="torch.compile (see --compile-scope)")
    parser.add_argument("--cudagraphs", action="store_true",
                        help="with --compile: torch.compile(mode='reduce-overhead'), replaying CUDA graphs so that "
                             "kernel launches cost no CPU time")
    parser.add_argument("--compile-scope", choices=["blocks", "model"], default="blocks",
                        help="blocks: each transformer block (regional, fast to compile); model: the whole model")
    parser.add_argument("--layers", choices=list(LAYERS), default="clip",
                        help="clip: every block linear (as lowbit train); auto: only those whose recipe measures "
                             "faster than bf16 at their shape, timed on this GPU at this batch (cached per shape; "
                             "on the CPU, lowbit.nn's width threshold); wide: that threshold alone (both widths "
                             ">= 1280, as lowbit.convert's default converts open_clip, timm or HF models)")
    parser.add_argument("--compiled-quantize", nargs="+", choices=list(ops.COMPILED_QUANTIZE),
                        default=[ops.compiled_quantize()],
                        help="with --compile, how lowbit recipes quantize: kernel (lowbit's Triton ops) or inductor "
                             "(traced reference numerics, fused by inductor into the producing op); several: one "
                             "row per mode, side by side")
    parser.add_argument("--optimizer", choices=["stableadamw", "adamw"], default="stableadamw")
    parser.add_argument("--precision", choices=["auto", "bf16", "fp32"], default="auto",
                        help="auto: bf16 autocast on CUDA, fp32 on the CPU")
    parser.add_argument("--no-anchors", action="store_true", help="leave out the torchao anchors")
    add_profile_argument(parser, "<preset>-<recipe>")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--out", default=None, help="directory for step.json and step.md (rewritten per row)")
    add_isolate_argument(parser)
    parser.add_argument("--model", nargs="+", default=None, metavar="SPEC",
                        help="time a timm or Hugging Face model instead of the presets (timm:NAME, hf:TYPE[:k=v,...]): "
                             "the same as `lowbit bench model --model SPEC` with this command's --recipe, "
                             "--batch-size (0: 32), --steps, --warmup, --compile, --cudagraphs, --compile-scope, "
                             "--optimizer, --precision, --no-anchors, --device and --out (--layers clip: convert's "
                             "default filter, auto: measured per layer); writes model.json / model.md")


def model_args(args: argparse.Namespace) -> argparse.Namespace:
    """``bench step --model ...`` as ``lowbit bench model`` arguments (that benchmark's defaults for the rest)."""
    from lowbit.bench import model

    parser = argparse.ArgumentParser(prog="lowbit bench step --model")
    model.add_arguments(parser)
    out = parser.parse_args(["--model", *args.model])
    for key in ("recipes", "steps", "warmup", "compile", "cudagraphs", "compile_scope", "optimizer", "precision",
                "no_anchors", "device", "out", "profile"):
        setattr(out, key, getattr(args, key))
    out.batch_size = args.batch_size or out.batch_size
    out.layers = {"clip": "auto", "auto": "measured"}.get(args.layers, args.layers)  # (clip: convert's default)
    return out


def check(args: argparse.Namespace) -> None:
    """Before anything runs: with ``--model``, ``lowbit bench model``'s checks (options, the model's package);
    else the options and the presets."""
    if getattr(args, "model", None):
        from lowbit.bench import model

        model.check(model_args(args))
        return
    from lowbit.models import list_presets

    if args.steps < 1 or args.warmup < 0 or args.batch_size < 0 or args.profile < 0:
        raise ValueError("--steps must be >= 1, --warmup, --batch-size and --profile >= 0")
    if args.cudagraphs and not args.compile:
        raise ValueError("--cudagraphs needs --compile (CUDA graphs come from torch.compile's reduce-overhead mode)")
    unknown = [p for p in args.preset if p not in list_presets()]
    if unknown:
        raise ValueError(f"--preset {unknown[0]!r} is not a CLIP preset; choose from {', '.join(list_presets())}")


def cpu_flops(args: argparse.Namespace) -> float | None:
    """Model FLOPs this command would run (every row's warm-up and timed steps), for ``lowbit bench``'s CPU
    estimate; None with ``--model`` (the model is unknown before it is built)."""
    if getattr(args, "model", None):
        return None
    rows = len(_rows(args))
    total = 0.0
    for preset in args.preset:
        batch = args.batch_size or DEFAULT_BATCH.get(preset, 64)
        total += (flops_per_image(preset, batch) or 0.0) * batch * (max(args.warmup, 1) + args.steps) * rows
    return total


def run(args: argparse.Namespace) -> int:
    if getattr(args, "model", None):  # a timm / Hugging Face model: lowbit bench model's step, same options
        from lowbit.bench import model

        return model.run(model_args(args))
    check(args)
    payload = run_step(args)
    return 130 if payload.get("interrupted") else 0
