"""ActivationMonitor: max |activation| of each transformer block, kept on the device (feature magnitudes).

The paper ties fp8 tensor-wise training's failures to large feature magnitudes in the residual stream, which
zero-initialised layer-scale discourages. This records, per block, the largest absolute value of the block's
output (the residual stream after the block) and optionally of its two residual branches before they are added
(``branches=True``: the outputs of ``ls1``/``ls2`` when the block has them, i.e. after layer-scale, else of
``attn``/``mlp``).

Forward hooks write a running maximum into one float32 device vector: no device-to-host copy per step.
``summary()`` / ``metrics()`` read it with one copy, so a trainer that logs every N steps syncs once per N steps.
Only forwards in training mode are recorded (``train_only``), so a zero-shot evaluation does not mix in.

    monitor = ActivationMonitor(model)             # before torch.compile(model)
    for step ...:
        loss = model(batch) ...                    # hooks record, no sync
        if step % log_every == 0:
            logger.log(monitor.metrics(reset=True))  # {"act/visual.blocks.0": 12.3, ..., "act_max": 40.1}
    monitor.remove()
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

import torch
from torch import Tensor, nn

__all__ = ["ActivationMonitor", "find_blocks"]


def find_blocks(model: nn.Module, container: str = "blocks") -> list[tuple[str, nn.Module]]:
    """``(name, block)`` for every child of an ``nn.ModuleList`` attribute called ``container`` (CLIP:
    ``visual.blocks.<i>`` and ``text.blocks.<i>``), in model order."""
    out = []
    for name, module in model.named_modules():
        if isinstance(module, nn.ModuleList) and name.split(".")[-1] == container:
            out += [(f"{name}.{i}", block) for i, block in enumerate(module)]
    return out


def _first_tensor(out: Any) -> Tensor | None:
    if isinstance(out, Tensor):
        return out
    if isinstance(out, (tuple, list)) and out and isinstance(out[0], Tensor):
        return out[0]
    return None


class ActivationMonitor:
    """Running max |activation| per transformer block (and per residual branch with ``branches=True``).

    ``blocks``: ``(name, module)`` pairs to watch; default :func:`find_blocks` (every ``*.blocks.<i>``).
    Names: the block's qualified name; its branches add ``.attn_branch`` / ``.mlp_branch``.
    """

    def __init__(
        self,
        model: nn.Module,
        *,
        branches: bool = False,
        train_only: bool = True,
        blocks: Iterable[tuple[str, nn.Module]] | None = None,
    ) -> None:
        pairs = list(blocks) if blocks is not None else find_blocks(model)
        if not pairs:
            raise ValueError("ActivationMonitor found no transformer blocks (no nn.ModuleList named 'blocks')")
        watched: list[tuple[str, nn.Module, nn.Module]] = []  # (name, module hooked, block that owns it)
        for name, block in pairs:
            watched.append((name, block, block))
            if branches:
                for branch, ls, fallback in (("attn_branch", "ls1", "attn"), ("mlp_branch", "ls2", "mlp")):
                    sub = getattr(block, ls, None)
                    if not isinstance(sub, nn.Module):
                        sub = getattr(block, fallback, None)
                    if isinstance(sub, nn.Module):
                        watched.append((f"{name}.{branch}", sub, block))
        self.names = [n for n, _, _ in watched]
        self.train_only = train_only
        try:
            device = next(model.parameters()).device
        except StopIteration:
            device = torch.device("cpu")
        self._max = torch.full((len(self.names),), -math.inf, dtype=torch.float32, device=device)
        self._handles = [
            module.register_forward_hook(self._hook(i, owner)) for i, (_, module, owner) in enumerate(watched)
        ]

    def _hook(self, index: int, owner: nn.Module):
        def hook(module: nn.Module, inputs: Any, output: Any) -> None:
            if self.train_only and not owner.training:
                return
            out = _first_tensor(output)
            if out is None or out.numel() == 0:
                return
            if self._max.device != out.device:  # the model moved after the monitor was made
                self._max = self._max.to(out.device)
            value = out.detach().abs().amax().to(torch.float32)
            self._max[index] = torch.maximum(self._max[index], value)  # NaN propagates: a NaN block shows NaN

        return hook

    def reset(self) -> None:
        """Forget the maxima recorded so far."""
        self._max.fill_(-math.inf)

    def summary(self, reset: bool = False) -> dict[str, float]:
        """``name -> max |activation|`` since the last reset (one device-to-host copy); unrecorded blocks are
        left out. With ``reset=True`` the maxima are cleared afterwards."""
        host = self._max.cpu().tolist()
        if reset:
            self.reset()
        return {n: v for n, v in zip(self.names, host) if v != -math.inf}

    def metrics(self, reset: bool = True, prefix: str = "act/") -> dict[str, float]:
        """Flat dict for a trainer's logger: ``act/<name>`` per block plus ``act_max`` (block outputs only)."""
        s = self.summary(reset=reset)
        out = {f"{prefix}{n}": v for n, v in s.items()}
        outputs = [v for n, v in s.items() if not n.endswith("_branch")]
        if outputs:
            out["act_max"] = max(outputs) if all(v == v for v in outputs) else math.nan
        return out

    def remove(self) -> None:
        """Detach the hooks (the recorded maxima stay readable)."""
        for h in self._handles:
            h.remove()
        self._handles = []

    close = remove
