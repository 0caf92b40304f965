"""Which ``scaled_dot_product_attention`` backend runs lowbit's attention (CLIP's ``Attention``, the drop-in
``LowbitMultiheadAttention``).

PyTorch picks the first backend, in its own priority order, that accepts the inputs. That order is not the fastest
at every shape: on an H100 its first choice, cuDNN, runs ViT-H/14's head dimension 80 in tiles padded to 128. A
preference is a list of backend names tried first, in that order, the others after them
(``torch.nn.attention.sdpa_kernel(..., set_priority=True)``, which ``torch.compile`` traces without a graph break):
a preference never makes a call fail, a backend that refuses the inputs passes it on. ``None`` (the default) leaves
PyTorch's choice alone.

Set it with :func:`set_sdpa_backends` / :func:`sdpa_backends_mode` or ``LOWBIT_SDPA=flash,cudnn``; compiled code
reads it when it traces, as :mod:`lowbit.kernels.ops` reads the compiled-quantize mode.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, nullcontext

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

__all__ = ["SDPA_BACKENDS", "attention", "sdpa_backends", "sdpa_backends_mode", "set_sdpa_backends"]

SDPA_BACKENDS: dict[str, SDPBackend] = {
    "flash": SDPBackend.FLASH_ATTENTION,
    "cudnn": SDPBackend.CUDNN_ATTENTION,
    "efficient": SDPBackend.EFFICIENT_ATTENTION,
    "math": SDPBackend.MATH,
}


def _parse(order: Sequence[str] | str | None, where: str) -> tuple[str, ...] | None:
    if order is None or order in ("", "auto"):
        return None
    names = tuple(n.strip() for n in (order.split(",") if isinstance(order, str) else order) if n.strip())
    bad = [n for n in names if n not in SDPA_BACKENDS]
    if bad or not names or len(set(names)) != len(names):
        raise ValueError(f"{where}: SDPA backends must be distinct names from {', '.join(SDPA_BACKENDS)} "
                         f"(or 'auto'), got {order!r}")
    return names


_order = _parse(os.environ.get("LOWBIT_SDPA"), "LOWBIT_SDPA")


def sdpa_backends() -> tuple[str, ...] | None:
    """The preferred backends in order, or ``None`` for PyTorch's own choice."""
    return _order


def set_sdpa_backends(order: Sequence[str] | str | None) -> tuple[str, ...] | None:
    """Prefer ``order`` (names or ``"flash,cudnn"``; ``None`` / ``"auto"``: PyTorch's choice) from now on; returns
    the previous preference."""
    global _order
    previous, _order = _order, _parse(order, "set_sdpa_backends")
    return previous


@contextmanager
def sdpa_backends_mode(order: Sequence[str] | str | None) -> Iterator[None]:
    """``with sdpa_backends_mode("flash"): model(x)``: the preference for the calls (and compilations) inside."""
    previous = set_sdpa_backends(order)
    try:
        yield
    finally:
        set_sdpa_backends(previous)


def _context():
    if _order is None:
        return nullcontext()
    names = (*_order, *(n for n in SDPA_BACKENDS if n not in _order))
    return sdpa_kernel([SDPA_BACKENDS[n] for n in names], set_priority=True)


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, attn_mask: torch.Tensor | None = None,
              dropout_p: float = 0.0, is_causal: bool = False) -> torch.Tensor:
    """``F.scaled_dot_product_attention`` under the preferred backends (same arguments, same result)."""
    with _context():
        return F.scaled_dot_product_attention(q, k, v, attn_mask, dropout_p, is_causal)
