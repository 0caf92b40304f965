"""``lowbit bench model``: the training step of a third-party model (open_clip, timm, Hugging Face transformers),
bf16 vs each recipe, converted with one ``lowbit.convert(model, recipe, module_filter=..., fuse=...)`` call.

``--model SPEC`` names the model without downloading anything (random weights, random inputs):

* ``open_clip:<name>[:key=value,...]``: ``open_clip.create_model(name, pretrained=None)`` (a name of
  ``open_clip.list_models()``; ``vision.width=32`` / ``text.layers=2`` set keys of its ``vision_cfg`` /
  ``text_cfg``, other keys are ``create_model`` arguments or top-level config keys such as ``embed_dim``), fed random
  images of its tower's ``image_size`` and random tokens of its ``context_length`` (the tokenizer's length),
  ``open_clip.ClipLoss`` (``SigLipLoss`` for a model with a logit bias), images/s.
* ``timm:<name>[:key=value,...]``: ``timm.create_model(name, pretrained=False, **options)``, fed random images of
  the size the model takes (its patch embedding's ``img_size``, so that ``img_size=`` works, else
  ``pretrained_cfg["input_size"]``) and random class labels (cross-entropy).
* ``hf:<model type or config class>[:key=value,...]``: a ``transformers`` model built from its config object
  (``AutoConfig.for_model(type)`` or ``transformers.<Name>Config``; options override the config's attributes; a
  config with sub-configs, such as CLIP's ``text_config`` / ``vision_config``, takes ``text.hidden_size=1024`` for
  one of them and an unprefixed key that only the sub-configs have, such as ``hidden_size=1280``, for each that has
  it). ``clip`` / ``siglip``: ``CLIPModel`` / ``SiglipModel`` (``AutoModel.from_config``) on random
  ``pixel_values`` + ``input_ids`` with ``return_loss=True`` (images/s). A vision config (``image_size``):
  ``AutoModelForImageClassification`` with random labels (images/s). Otherwise a text model: ``AutoModelForMaskedLM`` (or ``AutoModelForCausalLM`` where
  there is no masked-LM head) with ``labels=input_ids`` over ``--seq-len`` tokens (tokens/s).

Each package is needed only for its own prefix; without it the command stops with one line naming it.

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
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import importlib
import math
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from lowbit.bench.common import (
    BASELINES,
    add_mfu,
    cleanup,
    environment,
    make_optimizer,
    markdown_table,
    requested_recipes,
    save_results,
    setup_device,
    split_recipe,
    time_steps,
    torchao_anchors,
    write_results,
)
from lowbit.bench.rows import add_isolate_argument, isolate_default, plain_args, run_row
from lowbit.hardware import format_mfu

HELP = ("an open_clip, timm or Hugging Face model's training step (random weights, no download) per recipe vs bf16: "
        "images/s or tokens/s, peak memory")

DEFAULT_RECIPES = ["bf16", "switchback", "fp8-switchback"]
LAYERS = ("auto", "all")
PACKAGES = {"open_clip": "open_clip", "timm": "timm", "hf": "transformers"}  # SPEC prefix -> the package it needs
PIP_NAMES = {"open_clip": "open_clip_torch"}  # where the pip name is not the import name
COLUMNS = ["model", "recipe", "batch", "compiled", "converted", "fused", "ms_per_step", "throughput", "unit",
           "vs_bf16", "tflops", "mfu", "peak_mem_GiB", "loss", "warmup_s", "optimizer", "error"]


# ---------------------------------------------------------------------------------------------- the spec
@dataclass(frozen=True)
class ModelSpec:
    """A parsed ``--model`` value: ``source`` ("open_clip", "timm" or "hf"), ``name``, ``options`` (key -> int/float/bool/str)."""

    source: str
    name: str
    options: dict[str, Any] = field(default_factory=dict)

    def __str__(self) -> str:
        opts = ",".join(f"{k}={v}" for k, v in self.options.items())
        return f"{self.source}:{self.name}" + (f":{opts}" if opts else "")


def _value(text: str) -> Any:
    """``"1280"`` -> 1280, ``"0.1"`` -> 0.1, ``"true"``/``"false"`` -> bool, ``"none"`` -> None, else the text."""
    low = text.lower()
    if low in ("true", "false"):
        return low == "true"
    if low in ("none", "null"):
        return None
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def parse_spec(spec: str) -> ModelSpec:
    """``open_clip:<name>[:k=v,...]``, ``timm:<name>[:k=v,...]`` or ``hf:<model type or config class>[:k=v,...]``;
    ``ValueError`` naming what is wrong otherwise."""
    source, sep, rest = spec.partition(":")
    if not sep or source not in PACKAGES:
        raise ValueError(f"--model {spec!r}: expected timm:<model name>, hf:<model type or config class> or "
                         "open_clip:<model name>[:key=value,...], e.g. timm:vit_huge_patch14_224, "
                         "hf:clip:vision.hidden_size=1280 or open_clip:ViT-H-14")
    name, _, opts = rest.partition(":")
    name = name.strip()
    if not name:
        raise ValueError(f"--model {spec!r}: no model name after {source}:")
    options: dict[str, Any] = {}
    for item in filter(None, (o.strip() for o in opts.split(","))):
        key, eq, value = item.partition("=")
        if not eq or not key.strip():
            raise ValueError(f"--model {spec!r}: option {item!r} is not key=value")
        options[key.strip()] = _value(value.strip())
    return ModelSpec(source, name, options)


def require(source: str, spec: str | None = None) -> Any:
    """The package a spec prefix needs, imported; ``ImportError`` with one line naming it when it is missing."""
    package = PACKAGES[source]
    try:
        return importlib.import_module(package)
    except ImportError as e:
        if getattr(e, "name", None) not in (package, None):
            raise  # the package is there but one of its own imports failed: show that
        raise ImportError(f"--model {spec or source + ':...'} needs the {package} package, which is not "
                          f"installed: pip install {PIP_NAMES.get(source, package)}") from None


# ---------------------------------------------------------------------------------------------- workloads
@dataclass
class Workload:
    """A model and how to feed it: ``batch(n, device)`` -> keyword inputs, ``loss(model, inputs)`` -> scalar;
    ``unit`` is what the throughput counts ("images" or "tokens"), ``per_sample`` how many of them one sample is."""

    model: nn.Module
    batch: Callable[[int, torch.device], dict[str, torch.Tensor]]
    loss: Callable[[nn.Module, dict[str, torch.Tensor]], torch.Tensor]
    unit: str = "images"
    per_sample: int = 1


def _generator(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _output_loss(out: Any, labels: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of 2-D logits against ``labels`` (modulo the class count); the mean square otherwise."""
    if isinstance(out, (tuple, list)):
        out = out[0]
    if isinstance(out, torch.Tensor) and out.ndim == 2 and out.shape[-1] > 1:
        return nn.functional.cross_entropy(out.float(), labels % out.shape[-1])
    return out.float().pow(2).mean()


def timm_input_size(model: nn.Module) -> tuple[int, int, int]:
    """(channels, height, width) the timm ``model`` takes: its patch embedding's ``img_size`` and input channels
    when it has one (``img_size=`` / ``in_chans=`` options change those but not ``pretrained_cfg``), else
    ``pretrained_cfg["input_size"]``, else (3, 224, 224)."""
    cfg = getattr(model, "pretrained_cfg", None) or getattr(model, "default_cfg", None) or {}
    c, h, w = (int(v) for v in tuple(cfg.get("input_size") or (3, 224, 224)))
    c = int(getattr(model, "in_chans", None) or c)
    size = getattr(getattr(model, "patch_embed", None), "img_size", None)
    if isinstance(size, int):
        size = (size, size)
    if isinstance(size, (tuple, list)) and len(size) == 2 and all(isinstance(v, int) for v in size):
        h, w = size
    return c, h, w


def timm_workload(spec: ModelSpec) -> Workload:
    timm = require("timm")
    model = timm.create_model(spec.name, pretrained=False, **spec.options)
    c, h, w = timm_input_size(model)
    classes = int(getattr(model, "num_classes", 0) or 1000)

    def batch(n: int, device: torch.device) -> dict[str, torch.Tensor]:
        g = _generator(0)
        return {"x": torch.randn(n, c, h, w, generator=g).to(device),
                "labels": torch.randint(0, classes, (n,), generator=g).to(device)}

    return Workload(model, batch, lambda m, b: _output_loss(m(b["x"]), b["labels"]))


def hf_config(transformers: Any, spec: ModelSpec) -> Any:
    """The config object of ``spec``: defaults of the model type / config class, ``spec.options`` applied."""
    name = spec.name
    cls = getattr(transformers, name, None) if name.endswith("Config") else None
    if cls is None:
        try:
            cls = type(transformers.AutoConfig.for_model(name))
        except (ValueError, KeyError):
            raise ValueError(f"--model hf:{name}: transformers knows no model type or config class {name!r} "
                             "(e.g. clip, vit, bert or CLIPConfig)") from None
    default = cls()
    subs = {k[: -len("_config")]: v for k, v in vars(default).items() if k.endswith("_config") and hasattr(v, "to_dict")}
    top: dict[str, Any] = {}
    sub_kw: dict[str, dict[str, Any]] = {p: {} for p in subs}
    for key, value in spec.options.items():
        prefix, dot, attr = key.partition(".")
        if dot and prefix in subs:
            if not hasattr(subs[prefix], attr):
                raise ValueError(f"--model {spec}: {type(subs[prefix]).__name__} has no attribute {attr!r}")
            sub_kw[prefix][attr] = value
        elif hasattr(default, key):
            top[key] = value
        elif any(hasattr(s, key) for s in subs.values()):
            for p, s in subs.items():
                if hasattr(s, key):
                    sub_kw[p][key] = value
        else:
            where = f" or its {'/'.join(subs)} configs" if subs else ""
            raise ValueError(f"--model {spec}: {key!r} is not an attribute of {cls.__name__}{where}")
    return cls(**top, **{f"{p}_config": kw for p, kw in sub_kw.items() if kw})


def _seq_len(cfg: Any, requested: int) -> int:
    longest = next((int(v) for k in ("max_position_embeddings", "n_positions", "n_ctx")
                    if isinstance(v := getattr(cfg, k, None), int) and v > 0), 512)
    return min(requested, longest) if requested > 0 else min(longest, 512)


def hf_workload(spec: ModelSpec, seq_len: int = 0) -> Workload:
    transformers = require("hf")
    cfg = hf_config(transformers, spec)
    model_type = getattr(cfg, "model_type", "")
    if model_type in ("clip", "siglip"):  # AutoModel: CLIPModel / SiglipModel, attention implementation auto-set
        model = transformers.AutoModel.from_config(cfg)
        vision, text = cfg.vision_config, cfg.text_config
        size, channels = int(vision.image_size), int(getattr(vision, "num_channels", 3))
        length, vocab = _seq_len(text, seq_len), int(text.vocab_size)

        def batch(n: int, device: torch.device) -> dict[str, torch.Tensor]:
            g = _generator(0)
            return {"pixel_values": torch.randn(n, channels, size, size, generator=g).to(device),
                    "input_ids": torch.randint(1, vocab, (n, length), generator=g).to(device)}

        return Workload(model, batch, lambda m, b: m(**b, return_loss=True).loss)
    if hasattr(cfg, "image_size"):
        model = transformers.AutoModelForImageClassification.from_config(cfg)
        size, channels = int(cfg.image_size), int(getattr(cfg, "num_channels", 3))
        classes = int(getattr(cfg, "num_labels", 2))

        def image_batch(n: int, device: torch.device) -> dict[str, torch.Tensor]:
            g = _generator(0)
            return {"pixel_values": torch.randn(n, channels, size, size, generator=g).to(device),
                    "labels": torch.randint(0, classes, (n,), generator=g).to(device)}

        return Workload(model, image_batch, lambda m, b: m(**b).loss)
    try:
        model = transformers.AutoModelForMaskedLM.from_config(cfg)
    except ValueError:  # no masked-LM head for this type: a decoder
        model = transformers.AutoModelForCausalLM.from_config(cfg)
    length, vocab = _seq_len(cfg, seq_len), int(cfg.vocab_size)

    def text_batch(n: int, device: torch.device) -> dict[str, torch.Tensor]:
        ids = torch.randint(0, vocab, (n, length), generator=_generator(0)).to(device)
        return {"input_ids": ids, "labels": ids}

    return Workload(model, text_batch, lambda m, b: m(**b).loss, unit="tokens", per_sample=length)


def open_clip_kwargs(open_clip: Any, spec: ModelSpec) -> dict[str, Any]:
    """``create_model`` keyword arguments for ``spec``: ``vision.*`` / ``text.*`` options merged into the named
    model's ``vision_cfg`` / ``text_cfg``, ``create_model``'s own parameters passed as they are, any other key as a
    top-level config key (``embed_dim``, ``quick_gelu``...)."""
    import inspect

    cfg = open_clip.get_model_config(spec.name)
    if cfg is None:
        raise ValueError(f"--model {spec}: open_clip knows no model {spec.name!r} (see open_clip.list_models(), e.g. "
                         "ViT-B-32 or ViT-H-14)")
    params = inspect.signature(open_clip.create_model).parameters
    kwargs: dict[str, Any] = {}
    towers = {"vision": dict(cfg.get("vision_cfg") or {}), "text": dict(cfg.get("text_cfg") or {})}
    changed: set[str] = set()
    for key, value in spec.options.items():
        prefix, dot, attr = key.partition(".")
        if dot and prefix in towers:
            towers[prefix][attr] = value
            changed.add(prefix)
        elif dot:
            raise ValueError(f"--model {spec}: {key!r}: only vision.<key> and text.<key> are nested options")
        else:
            kwargs[key] = value
    kwargs.update({f"{t}_cfg": towers[t] for t in changed})
    unknown = [k for k in kwargs if k not in params and k not in cfg and not k.endswith("_cfg")]
    if unknown:
        raise ValueError(f"--model {spec}: {', '.join(map(repr, unknown))} is neither a create_model argument nor a "
                         f"key of {spec.name}'s config ({', '.join(cfg)})")
    return kwargs


def open_clip_workload(spec: ModelSpec) -> Workload:
    open_clip = require("open_clip")
    kwargs = open_clip_kwargs(open_clip, spec)
    model = open_clip.create_model(spec.name, pretrained=None, output_dict=True, pretrained_text=False, **kwargs)
    size = getattr(getattr(model, "visual", None), "image_size", None) or 224
    h, w = (size, size) if isinstance(size, int) else tuple(size)
    length, vocab = int(model.context_length), int(model.vocab_size)
    siglip = getattr(model, "logit_bias", None) is not None
    loss_fn = open_clip.SigLipLoss() if siglip else open_clip.ClipLoss()

    def batch(n: int, device: torch.device) -> dict[str, torch.Tensor]:
        g = _generator(0)
        return {"image": torch.randn(n, 3, h, w, generator=g).to(device),
                "text": torch.randint(0, vocab, (n, length), generator=g).to(device)}

    def loss(m: nn.Module, b: dict[str, torch.Tensor]) -> torch.Tensor:
        out = m(image=b["image"], text=b["text"])
        keys = ("image_features", "text_features", "logit_scale") + (("logit_bias",) if siglip else ())
        return loss_fn(*(out[k] for k in keys))

    return Workload(model, batch, loss)


def build_workload(spec: ModelSpec, seq_len: int = 0) -> Workload:
    """The model of ``spec`` (random weights, train mode) and its inputs and loss."""
    if spec.source == "open_clip":
        w = open_clip_workload(spec)
    else:
        w = timm_workload(spec) if spec.source == "timm" else hf_workload(spec, seq_len)
    w.model.train()
    return w


# ---------------------------------------------------------------------------------------------- conversion
def module_filter(layers: str) -> Callable[[str, nn.Module], bool] | None:
    """``auto``: None (``convert``'s default size filter); ``all``: every linear."""
    if layers not in LAYERS:
        raise ValueError(f"--layers must be one of {', '.join(LAYERS)}, got {layers!r}")
    return None if layers == "auto" else (lambda fqn, m: True)


def convert_model(model: nn.Module, recipe: str, layers: str, fuse: bool) -> tuple[nn.Module, str, int]:
    """``model`` converted to ``recipe`` (bf16/none: as it is; ``torchao-*``: torchao's training linears on the same
    layers; ``RECIPE:fused`` / ``RECIPE:per-linear`` override ``fuse``); returns (model, "k/n" linears converted,
    MLPs fused)."""
    import lowbit
    from lowbit.nn.convert import convert_report, default_filter, matmul_layers

    recipe, fuse = split_recipe(recipe, fuse)
    n_lin = matmul_layers(model)
    flt = module_filter(layers)
    anchors = torchao_anchors()
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
    return model, f"{len(rep.converted)}/{n_lin}", len(rep.fused)


def repeated_blocks(model: nn.Module) -> list[nn.Module]:
    """The children of every outermost ``nn.ModuleList`` / ``nn.Sequential`` holding two or more modules of one
    class (transformer blocks): what ``--compile-scope blocks`` compiles."""
    found: list[nn.Module] = []

    def visit(m: nn.Module) -> None:
        kids = list(m.children())
        if isinstance(m, (nn.ModuleList, nn.Sequential)) and len(kids) >= 2 and len({type(k) for k in kids}) == 1:
            found.extend(kids)
            return
        for k in kids:
            visit(k)

    visit(model)
    return found


def compile_model(model: nn.Module, scope: str, mode: str | None) -> tuple[nn.Module, str]:
    """Compile per ``scope``; returns (what the forward calls, what was compiled, for the table)."""
    if scope == "blocks":
        blocks = repeated_blocks(model)
        if blocks:
            for b in blocks:
                b.compile(mode=mode)
            return model, f"blocks ({len(blocks)})"
        scope = "model"
    if scope == "model":
        return torch.compile(model, mode=mode), "model"
    raise ValueError(f"--compile-scope must be blocks or model, got {scope!r}")


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
    model, row["converted"], row["fused"] = convert_model(w.model, recipe, args.layers, args.fuse)
    from lowbit.nn.convert import convert_report

    if (rep := convert_report(model)) is not None:  # what stayed 16-bit and why, counted by cause (per layer:
        row["convert_report"] = rep.summary()  # lowbit.convert_report(model).table())
        print(f"  [{spec} {recipe}] {rep.summary()}", flush=True)
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


def run_model(args: argparse.Namespace) -> dict[str, Any]:
    """Every (model, recipe) row; the table of finished rows is written after each row and at the end, whatever
    ends the run (an exception, Ctrl-C: then ``payload["interrupted"]``)."""
    specs = check(args)
    device = torch.device(args.device)
    isolate = isolate_default(args)
    payload: dict[str, Any] = {"env": environment(device), "args": plain_args(args), "rows": [], "isolated": isolate}
    try:
        for spec in specs:
            base: float | None = None
            for recipe in requested_recipes(args):
                print(f"[{spec} {recipe}] batch {args.batch_size}: building" + (" and compiling" if args.compile
                      else "") + (" (own process)" if isolate else ""), flush=True)
                job = {"args": plain_args(args), "spec": str(spec), "recipe": recipe}
                row = {"model": str(spec), "recipe": recipe, "batch": args.batch_size,
                       **run_row(ROW_TARGET, job, isolate)}
                err = row.get("error")
                if err is None:
                    if recipe in BASELINES:
                        base = row["throughput"]
                    if base:
                        row["vs_bf16"] = row["throughput"] / base
                    warning = add_mfu(row, row.get("flops_per_sample"), row.get("samples_per_s"),
                                      payload["env"]["device"])
                    if warning:
                        print(warning, file=sys.stderr, flush=True)
                payload["rows"].append(row)
                save_results(args.out, "model", payload, markdown_table(payload["rows"], COLUMNS))
                if err:
                    print(f"[{spec} {recipe}] ERROR {err}", flush=True)
                else:
                    mem = f", peak {row['peak_mem_GiB']:.1f} GiB" if row.get("peak_mem_GiB") else ""
                    mfu = f", MFU {format_mfu(row.get('mfu'))}" if "mfu" in row else ""
                    print(f"[{spec} {recipe}] {row['ms_per_step']:.1f} ms/step, {row['throughput']:.1f} "
                          f"{row['unit']} ({row.get('vs_bf16') or float('nan'):.3f}x bf16){mfu}, converted "
                          f"{row['converted']}" + (f", fused {row['fused']}" if row["fused"] else "") + mem, flush=True)
    except KeyboardInterrupt:
        payload["interrupted"] = f"stopped by Ctrl-C after {len(payload['rows'])} row(s)"
        print(f"lowbit bench model: {payload['interrupted']}; the table holds the finished rows", file=sys.stderr)
    finally:  # the finished rows, whatever ended the run
        _BUILT.clear()
        write_results(args.out, "model", payload, markdown_table(payload["rows"], COLUMNS))
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
                             "all: every nn.Linear")
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
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--out", default=None, help="directory for model.json and model.md (rewritten per row)")
    add_isolate_argument(parser)


def check(args: argparse.Namespace) -> list[ModelSpec]:
    """The options and every ``--model``'s package, before anything runs (``lowbit bench`` calls it before its
    CPU warning): a bad value or a missing package is one line, not a table of errors."""
    if args.steps < 1 or args.warmup < 0 or args.batch_size < 1 or args.seq_len < 0:
        raise ValueError("--steps and --batch-size must be >= 1, --warmup and --seq-len >= 0")
    if args.cudagraphs and not args.compile:
        raise ValueError("--cudagraphs needs --compile (CUDA graphs come from torch.compile's reduce-overhead mode)")
    specs = [parse_spec(s) for s in args.model]
    for spec, text in zip(specs, args.model, strict=True):
        require(spec.source, text)
    return specs


def run(args: argparse.Namespace) -> int:
    payload = run_model(args)
    return 130 if payload.get("interrupted") else 0

