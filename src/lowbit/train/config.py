"""``TrainConfig``: every option of a training run, with validation, YAML loading and overrides.

Precedence (lowest first): dataclass defaults < checkpoint's config (when resuming) < YAML file < command line.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import yaml

from lowbit.kernels.ops import COMPILED_QUANTIZE
from lowbit.messages import did_you_mean
from lowbit.models.convert import LAYERS

__all__ = ["COMPILE_MODES", "LAYER_CHOICES", "OPTIMIZERS", "PARALLEL", "PRECISIONS", "TrainConfig", "load_yaml",
           "resolve_layers"]

OPTIMIZERS = ("adamw", "stableadamw")
PRECISIONS = ("auto", "bf16", "fp32")
PARALLEL = ("ddp", "fsdp")
LAYER_CHOICES = ("default", *LAYERS)  # default: auto on CUDA, clip elsewhere (resolve_layers)
# torch.compile's modes; the first two of CUDA_GRAPH_MODES replay CUDA graphs, which removes the per-launch CPU cost
# of the quantized layers (bench/results/h100/step-vit-h-14-cudagraphs.md).
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")
CUDA_GRAPH_MODES = ("reduce-overhead", "max-autotune")


def resolve_layers(layers: str, device: torch.device) -> str:
    """``layers`` for a run on ``device``: ``default`` is ``auto`` on CUDA (where a block linear converts only if its
    recipe measures faster than bf16 at its shape: never slower than bf16 by construction) and ``clip`` elsewhere."""
    if layers != "default":
        return layers
    return "auto" if device.type == "cuda" else "clip"


@dataclass
class TrainConfig:
    """A CLIP training run. Defaults are the main job: ``tiny`` on synthetic data, SwitchBack, StableAdamW."""

    # model
    preset: str = "tiny"
    model: dict[str, Any] = field(default_factory=dict)  # CLIPConfig overrides, e.g. {"layer_scale_init": 0.0}
    recipe: str = "switchback"  # a lowbit.nn recipe, or "none" for plain nn.Linear
    keep_last_blocks: int = 0  # transformer blocks per tower kept 16-bit by the recipe filter
    # clip: every block linear; auto: only those measured faster than bf16; wide: only those >= 1280 wide (as
    # lowbit.convert's default) (lowbit.models.LAYERS); default: auto on CUDA, clip elsewhere (the CPU has no speed to
    # measure; it runs the recipes for their numerics)
    layers: str = "default"
    # each block's MLP one LowbitMLP and its LayerNorms fused with their consumers (convert_clip); auto: fused where
    # the run is compiled and the recipe is in the row-wise flow, per linear elsewhere (compiling.resolve_fuse)
    fuse: bool | str = "auto"
    # optimisation
    optimizer: str = "stableadamw"
    lr: float = 1e-3
    beta1: float = 0.9
    beta2: float = 0.98
    eps: float = 1e-6
    weight_decay: float = 0.1
    warmup: int = 25
    min_lr_ratio: float = 0.0
    grad_clip: float = 0.0  # max global grad norm; 0 = off (StableAdamW clips updates itself)
    batch_size: int = 128  # samples per step *per process* (as open_clip); global batch = batch_size x world x accum_steps
    accum_steps: int = 1  # micro-batches per update (exact: the contrastive loss sees the whole global batch)
    steps: int = 250
    stop_at: int = 0  # end this invocation after this step (as if pre-empted); 0 = run to `steps`
    precision: str = "auto"  # auto: bf16 autocast on CUDA, fp32 on CPU
    # auto: on one GPU (one process, accum_steps 1) each transformer block compiled with CUDA graphs, else eager;
    # true: the whole model compiled with compile_mode; false: eager (lowbit.train.compiling.resolve_compile)
    compile: bool | str = "auto"
    compile_mode: str = "default"  # with compile true: torch.compile mode (COMPILE_MODES); reduce-overhead = CUDA graphs
    compiled_quantize: str = "kernel"  # compile true: lowbit's quantize kernels, or "inductor" (fused into producers)
    # multi-process (torchrun; ignored with one process)
    parallel: str = "ddp"  # ddp: DistributedDataParallel; fsdp: FSDP2 fully_shard per block + root (bf16 params on CUDA)
    local_loss: bool = False  # each rank: logits of its own features against all gathered ones (open_clip's local_loss)
    gather_with_grad: bool = True  # all-gather features with their gradient (open_clip's gather_with_grad)
    fsdp_8bit_allgather: bool = True  # fsdp: gather tensor-wise recipes' weights as their int8/e4m3 codes (exact)
    workers: int = 0  # DataLoader worker processes per rank for the training data; 0 = in the training process
    # seconds a collective may wait for the other ranks before the run stops naming the silent rank (torch's default:
    # 30 minutes of silence); long enough for a checkpoint save or an evaluation on rank 0 alone
    dist_timeout: float = 300.0
    # data
    data: str = "synthetic"
    zeroshot: str = "auto"  # zero-shot task spec; auto: a prepared --data folder's own tasks, else synthetic; "" or "none" = no evaluation
    zeroshot_limit: int = 0  # images per task, 0 = all
    max_bad_fraction: float = 0.1  # stop when more of the samples read were unusable (judged after 200 samples)
    # images with more pixels are skipped unread (one line says why); PIL's own bomb check only warns below 179 MP
    max_image_pixels: int = 1 << 25
    # bookkeeping
    out: str = ""  # run directory; "" = runs/<timestamp>
    resume: str = ""  # checkpoint file or run directory to continue
    overwrite: bool = False  # `out` holds another run: delete it and start over (else the run is refused)
    eval_every: int = 0  # steps between zero-shot evaluations; 0 = at the end only
    log_every: int = 1  # steps between rows of metrics.csv / TensorBoard
    save_every: int = 100  # steps between checkpoints (one is always written at the end); 0 = end only; -1 = none (benchmarks)
    seed: int = 0
    device: str = "auto"  # auto: cuda if available, else cpu
    threads: int = 0  # CPU threads for PyTorch; 0 = auto (free cores less one, >= 1; see loop.cpu_threads)
    monitor: bool = False  # log per-parameter RMS (lowbit.monitor.RMSMonitor) as rms/<param>
    activations: bool = False  # log max |output| of each transformer block (lowbit.monitor.ActivationMonitor) as act/<block>
    progress: bool = True  # tqdm progress bar

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Raise ``ValueError`` naming the first bad option and its value."""
        for name in ("steps", "batch_size", "accum_steps"):
            _check(name, getattr(self, name), _is_int(getattr(self, name)) and getattr(self, name) > 0, "a positive int")
        _check("save_every", self.save_every, _is_int(self.save_every) and self.save_every >= -1, "an int >= -1")
        for name in ("warmup", "stop_at", "eval_every", "log_every", "zeroshot_limit", "keep_last_blocks", "seed", "threads", "workers"):
            v = getattr(self, name)
            _check(name, v, _is_int(v) and v >= 0, "an int >= 0")
        _check("log_every", self.log_every, self.log_every > 0, "an int >= 1")
        _check("lr", self.lr, _is_num(self.lr) and self.lr > 0 and math.isfinite(self.lr), "a positive float")
        for name in ("beta1", "beta2"):
            v = getattr(self, name)
            _check(name, v, _is_num(v) and 0 <= v < 1, "a float in [0, 1)")
        _check("eps", self.eps, _is_num(self.eps) and self.eps > 0, "a positive float")
        for name in ("weight_decay", "grad_clip"):
            v = getattr(self, name)
            _check(name, v, _is_num(v) and v >= 0 and math.isfinite(v), "a float >= 0")
        _check("max_bad_fraction", self.max_bad_fraction,
               _is_num(self.max_bad_fraction) and 0 <= self.max_bad_fraction <= 1, "a float in [0, 1]")
        _check("dist_timeout", self.dist_timeout,
               _is_num(self.dist_timeout) and self.dist_timeout > 0 and math.isfinite(self.dist_timeout), "seconds > 0")
        _check("max_image_pixels", self.max_image_pixels, _is_int(self.max_image_pixels) and self.max_image_pixels > 0,
               "a positive int")
        _check("min_lr_ratio", self.min_lr_ratio, _is_num(self.min_lr_ratio) and 0 <= self.min_lr_ratio <= 1, "a float in [0, 1]")
        _check("optimizer", self.optimizer, self.optimizer in OPTIMIZERS, f"one of {', '.join(OPTIMIZERS)}")
        _check("precision", self.precision, self.precision in PRECISIONS, f"one of {', '.join(PRECISIONS)}")
        _check("model", self.model, isinstance(self.model, dict), "a mapping of CLIPConfig overrides")
        for name in ("preset", "recipe", "layers", "data", "zeroshot", "out", "resume", "device"):
            v = getattr(self, name)
            _check(name, v, isinstance(v, str), "a string")
        _check("recipe", self.recipe, bool(self.recipe), "a recipe name or 'none'")
        _check("layers", self.layers, self.layers in LAYER_CHOICES, ", ".join(LAYER_CHOICES))
        _check("parallel", self.parallel, self.parallel in PARALLEL, f"one of {', '.join(PARALLEL)}")
        _check("compile_mode", self.compile_mode, self.compile_mode in COMPILE_MODES, f"one of {', '.join(COMPILE_MODES)}")
        _check("compile", self.compile, self.compile is True or self.compile is False or self.compile == "auto",
               "true, false or auto")
        _check("compile_mode", self.compile_mode, self.compile_mode == "default" or self.compile is True,
               f"'default' unless compile is true (compile is {self.compile!r}: "
               + ("auto chooses its own mode; pass --compile to compile the whole model with this one)"
                  if self.compile == "auto" else "a mode has no effect without compiling)"))
        _check("compile_mode", self.compile_mode, self.compile_mode not in CUDA_GRAPH_MODES or self.accum_steps == 1,
               "a mode without CUDA graphs when accum_steps > 1 (the cached micro-batch features would be "
               "overwritten by the next graph replay)")
        _check("compiled_quantize", self.compiled_quantize, self.compiled_quantize in COMPILED_QUANTIZE,
               f"one of {', '.join(COMPILED_QUANTIZE)}")
        _check("compiled_quantize", self.compiled_quantize, self.compiled_quantize == "kernel" or self.compile is True,
               "'kernel' unless compile is true (it chooses how a compiled model quantizes; pass --compile)")
        for name in ("monitor", "activations", "progress", "local_loss", "gather_with_grad",
                     "fsdp_8bit_allgather", "overwrite"):
            _check(name, getattr(self, name), isinstance(getattr(self, name), bool), "true or false")
        _check("fuse", self.fuse, self.fuse is True or self.fuse is False or self.fuse == "auto", "true, false or auto")
        _check(
            "local_loss",
            self.local_loss,
            not self.local_loss or self.gather_with_grad,
            "false unless gather_with_grad is true (without the gradient through the gathered features the local "
            "loss misses the other ranks' terms of the gradient)",
        )
        _check("device", self.device, self.device == "auto" or self.device.split(":")[0] in ("cpu", "cuda"), "auto, cpu, cuda or cuda:N")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def replace(self, overrides: dict[str, Any]) -> TrainConfig:
        """A copy with ``overrides`` applied; unknown keys and bad values raise ``ValueError``."""
        names = {f.name for f in dataclasses.fields(self)}
        unknown = sorted(set(overrides) - names)
        if unknown:
            raise ValueError(f"unknown training option(s) {', '.join(map(repr, unknown))}{did_you_mean(unknown, names)}; "
                             f"known: {', '.join(sorted(names))}")
        values = {**self.to_dict(), **{k: _coerce(k, v) for k, v in overrides.items()}}
        return TrainConfig(**values)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrainConfig:
        return cls().replace(d)


_FLOATS = {f.name for f in dataclasses.fields(TrainConfig) if f.type == "float"}


def _coerce(name: str, value: Any) -> Any:
    # YAML reads 1e-3 as a string and 2 as an int; accept ints (and numeric strings) for float options.
    if name in _FLOATS and not isinstance(value, bool):
        if isinstance(value, int):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                return value
    return value


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_num(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _check(name: str, value: Any, ok: bool, expected: str) -> None:
    if not ok:
        raise ValueError(f"bad training option {name}={value!r}: expected {expected}")


def load_yaml(path: str | Path) -> dict[str, Any]:
    """Options from a YAML mapping; dashes in keys read as underscores (``grad-clip`` = ``grad_clip``)."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"config file {str(path)!r} does not exist")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise ValueError(f"config file {str(path)!r} is not valid YAML{where}: {problem}") from None
    except OSError as e:
        raise ValueError(f"config file {str(path)!r} cannot be read: {e.strerror or e}") from None
    if not isinstance(data, dict):
        raise ValueError(f"config file {str(path)!r} must hold a mapping of options, got {type(data).__name__}")
    return {str(k).replace("-", "_"): v for k, v in data.items()}
