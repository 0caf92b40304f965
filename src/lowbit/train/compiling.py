"""Whether and how ``lowbit train`` compiles the model: the ``compile`` option resolved for this run.

``compile: auto`` (the default) takes the fast path where it is measured and safe: on one GPU (one process,
``accum_steps`` 1) each transformer block is compiled in place with mode ``reduce-overhead`` (regional
compilation with CUDA graphs). On an H100 at ViT-H/14 batch 96 (``lowbit bench step``, the trainer's step)
that trains bf16 at 349 images/s against 293 eager, and the 8-bit recipes at 0.97-1.02x bf16 against 0.73-0.84x
eager, where they are bound by the CPU cost of their kernel launches
(``bench/results/h100/step-vit-h-14-gemm-cudagraphs.md`` against ``step-vit-h-14-gemm-eager.md``).
Everywhere else auto is eager: on the CPU there are no CUDA graphs (where that gain comes from); with several
processes ``build_trainer`` refuses CUDA graphs under FSDP, and under DDP they ran (whole model, ``compile: true``
with ``reduce-overhead``, replicas checked) but the block-wise graphs are not verified; with ``accum_steps`` > 1 a
replay would overwrite the cached micro-batch features; ``activations`` hooks inside the compiled blocks are not
verified under CUDA graphs. ``compile: true`` compiles the whole model with ``compile_mode`` (all of
``build_trainer``'s checks); ``compile: false`` is eager.

``fuse: auto`` (the default, :func:`resolve_fuse`) follows the compile choice: a compiled run of a recipe in SPEC
§10's row-wise flow (fp8-switchback, switchback and their variants) converts fused — each block's LayerNorm → q/k/v
and LayerNorm → MLP in the producers that write the 8-bit codes — since compiled with CUDA graphs that measured at
least as fast as per linear at every CLIP width on an H100 (``--layers auto``, session 15: ViT-H/14 1.119x bf16
fused, ViT-L/14 1.091x against 1.085x per linear, ViT-B/32 0.988x against 0.999x, within the 1% that two bf16-equal
rows differ by: ``bench/results/h100/step-*-layers-auto.md``, ``step-vit-h-14-qkv-grad.md``). Eager runs convert
per linear: there the fused blocks lost at ViT-L and ViT-B widths (``step-*-fused.md``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, NamedTuple

import torch

from lowbit.nn.compile import compile_blocks as nn_compile_blocks

if TYPE_CHECKING:
    from lowbit.train.config import TrainConfig
    from lowbit.train.env import Env

__all__ = ["AUTO_MODE", "CompileChoice", "compile_blocks", "resolve_compile", "resolve_fuse"]

AUTO_MODE = "reduce-overhead"  # compile auto's torch.compile mode: CUDA graphs


class CompileChoice(NamedTuple):
    """What ``resolve_compile`` chose: compile at all, torch.compile's mode (None: eager), the scope
    (``"blocks"``: each transformer block in place; ``"model"``: the whole model; ``"none"``: eager) and why."""

    compile: bool
    mode: str | None
    scope: str
    reason: str


def resolve_compile(cfg: TrainConfig, env: Env) -> CompileChoice:
    """``cfg.compile`` (True, False or "auto") for this run's device, processes and ``accum_steps``."""
    if cfg.compile is True:
        return CompileChoice(True, cfg.compile_mode, "model", "compile true")
    if cfg.compile is False:
        return CompileChoice(False, None, "none", "compile false")
    if env.device.type != "cuda":
        return CompileChoice(False, None, "none", f"auto: {env.device.type.upper()}")
    if env.world_size > 1:
        return CompileChoice(False, None, "none", f"auto: {env.world_size} processes; block-wise CUDA "
                             "graphs are not verified under DDP/FSDP (DDP: --compile --compile-mode reduce-overhead "
                             "for whole-model graphs)")
    if cfg.accum_steps > 1:
        return CompileChoice(False, None, "none", f"auto: accum_steps {cfg.accum_steps}; CUDA graphs would overwrite "
                             "the cached micro-batch features")
    if cfg.activations:  # forward hooks inside each compiled block: not verified under CUDA graphs yet
        return CompileChoice(False, None, "none", "auto: --activations hooks sit inside the blocks (not verified "
                             "under CUDA graphs; --compile --compile-mode reduce-overhead compiles the whole model, "
                             "which ran with them)")
    if not hasattr(torch.compiler, "set_stance"):  # torch < 2.6: evaluation could not run the compiled blocks eager
        return CompileChoice(False, None, "none", f"auto: torch {torch.__version__} (the compiled path needs >= 2.6)")
    return CompileChoice(True, AUTO_MODE, "blocks", "auto: one GPU")


def resolve_fuse(cfg: TrainConfig, choice: CompileChoice) -> tuple[bool, str]:
    """``cfg.fuse`` (True, False or "auto") for this run's compile ``choice`` and recipe: (fuse, why)."""
    if cfg.fuse is True or cfg.fuse is False:
        return cfg.fuse, f"fuse {str(cfg.fuse).lower()}"
    if not choice.compile:
        return False, "auto: eager"
    from lowbit.functional import RECIPES, row_flow

    recipe = RECIPES.get(cfg.recipe)
    if recipe is None or not recipe.quantized:
        return False, f"auto: {cfg.recipe} is 16-bit"
    if not row_flow(recipe):
        return False, f"auto: {cfg.recipe} is outside the row-wise flow"
    return True, "auto: compiled"


def compile_blocks(model: torch.nn.Module, mode: str | None, backend: str | Callable[..., Any] = "inductor") -> None:
    """Regional compilation: :func:`lowbit.nn.compile_blocks` (what users call on their own models) over every block
    of ``model.visual.blocks`` and ``model.text.blocks``, named here since a tower may be one block deep, with the
    trainer's mode names (``"default"``: torch.compile's default). In place: the module tree, parameter names and
    state dict stay as they were; the blocks of a tower share one compiled graph, so even ViT-H compiles in seconds.
    ``backend`` is torch.compile's (tests: a cheap one such as ``aot_eager``)."""
    nn_compile_blocks(model, None if mode == "default" else mode, backend,
                      blocks=[*model.visual.blocks, *model.text.blocks])
