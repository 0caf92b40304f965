"""``compile_blocks``: a converted model compiled the way it gains — each transformer block with CUDA graphs.

Each 8-bit linear issues about seven kernel launches per training step; compiled without CUDA graphs, a model with
a hundred converted linears can wait on the CPU (open_clip ViT-H-14 on an H100: 0.86-1.12x bf16 depending on the
host, ``docs/your-own-model.md``). ``torch.compile(mode="reduce-overhead")`` records each compiled graph's launches
once and replays them from the GPU: the same model ran 1.12x (fp8-switchback) and 1.09x (switchback). Compiling
block by block (regional compilation) shares one compiled graph among a tower's identical blocks, so a ViT-H
compiles in seconds, and leaves the model's module tree, parameter names and ``state_dict`` keys as they were.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from torch import nn

__all__ = ["compile_blocks", "repeated_blocks"]


def repeated_blocks(model: nn.Module) -> list[nn.Module]:
    """The children of every outermost ``nn.ModuleList`` / ``nn.Sequential`` holding two or more modules of one
    class: the transformer blocks of open_clip (``resblocks``), timm (``blocks``), Hugging Face (``layers``) and
    lowbit's CLIP towers."""
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


def compile_blocks(model: nn.Module, mode: str | None = "reduce-overhead",
                   backend: str | Callable[..., Any] = "inductor", blocks: Iterable[nn.Module] | None = None) -> int:
    """``block.compile(mode=mode, backend=backend)`` for every block :func:`repeated_blocks` finds (or of ``blocks``,
    where the caller knows them: a tower of one block repeats nothing), in place; returns how many (0: none found,
    nothing compiled — compile the whole model instead).

    With the default ``mode="reduce-overhead"`` (CUDA graphs), call ``torch.compiler.cudagraph_mark_step_begin()`` at
    the start of each training step and keep the batch shape constant (drop the last incomplete batch): a graph is
    recorded per shape, and the next step's replay reuses its output memory.
    """
    blocks = repeated_blocks(model) if blocks is None else list(blocks)
    for block in blocks:
        block.compile(mode=mode, backend=backend)
    return len(blocks)
