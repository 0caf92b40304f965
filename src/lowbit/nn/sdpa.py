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

``fa4`` is the flash backend with FlashAttention-4's kernels (the ``flash-attn-4`` package, CuTe DSL; Hopper and
Blackwell) routed in through PyTorch's ``torch.nn.attention.activate_flash_attention_impl("FA4")``: the switch is
process-wide (every flash call then runs FA4 where it supports the inputs, FA2 elsewhere) and stays on.
"""

from __future__ import annotations

import functools
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
    "fa4": SDPBackend.FLASH_ATTENTION,  # after activate_flash_attention_impl("FA4"): see the module docstring
}


def _parse(order: Sequence[str] | str | None, where: str) -> tuple[str, ...] | None:
    if order is None or order in ("", "auto"):
        return None
    names = tuple(n.strip() for n in (order.split(",") if isinstance(order, str) else order) if n.strip())
    bad = [n for n in names if n not in SDPA_BACKENDS]
    if bad or not names or len({SDPA_BACKENDS[n] for n in names}) != len(names):
        raise ValueError(f"{where}: SDPA backends must be distinct names from {', '.join(SDPA_BACKENDS)} "
                         f"(or 'auto'; fa4 and flash are one backend), got {order!r}")
    if "fa4" in names:
        _activate_fa4(where)
    return names


def _activate_fa4(where: str) -> None:
    """Route the flash backend through FlashAttention-4 (once per process); one clear error where it cannot be."""
    try:
        from torch.nn.attention import activate_flash_attention_impl, current_flash_attention_impl
    except ImportError:
        raise RuntimeError(f"{where}: fa4 needs a torch with torch.nn.attention.activate_flash_attention_impl "
                           f"(this is torch {torch.__version__})") from None
    if current_flash_attention_impl() == "FA4":
        return
    try:
        activate_flash_attention_impl("FA4")
    except Exception as e:  # the package missing, or its kernels not loadable here
        raise RuntimeError(f"{where}: fa4 needs the flash-attn-4 package (pip install flash-attn-4) on a Hopper or "
                           f"Blackwell GPU: {type(e).__name__}: {e}") from None


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


@functools.cache
def _priority(order: tuple[str, ...]) -> tuple[SDPBackend, ...]:
    """The preferred backends, then every other one (each preference is resolved once, not per attention call)."""
    first = [SDPA_BACKENDS[n] for n in order]
    return (*first, *(b for b in dict.fromkeys(SDPA_BACKENDS.values()) if b not in first))


def _context():
    return nullcontext() if _order is None else sdpa_kernel(list(_priority(_order)), set_priority=True)


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, attn_mask: torch.Tensor | None = None,
              dropout_p: float = 0.0, is_causal: bool = False) -> torch.Tensor:
    """``F.scaled_dot_product_attention`` under the preferred backends (same arguments, same result)."""
    with _context():
        return F.scaled_dot_product_attention(q, k, v, attn_mask, dropout_p, is_causal)
