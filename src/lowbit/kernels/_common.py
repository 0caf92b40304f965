"""Shared definitions of the quantizers: formats, granularities, input checks, backend choice."""

from __future__ import annotations

import functools
import os
from typing import Literal

import torch

# The shared type aliases of every layer (one name per concept): a code format, the granularity of one scale per
# row / column / tensor, and a recipe operand's scaling (those, or 1×128 / 128×128 blocks: lowbit.kernels.blockwise).
Granularity = Literal["row", "column", "tensor"]
Scaling = Literal["row", "column", "tensor", "block"]
Format = Literal["int8", "e4m3", "e5m2"]
# Activations the fused epilogues and modules know: GELU (erf), GELU (tanh form), QuickGELU x·σ(1.702x).
Activation = Literal["gelu", "gelu_tanh", "quick_gelu"]
ACTIVATIONS: tuple[str, ...] = ("gelu", "gelu_tanh", "quick_gelu")
Backend = Literal["auto", "torch", "triton"]

GRANULARITIES: tuple[str, ...] = ("row", "column", "tensor")
FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16)

INT8_MAX = 127.0
FP8_DTYPES: dict[Format, torch.dtype] = {"e4m3": torch.float8_e4m3fn, "e5m2": torch.float8_e5m2}
FP8_FORMATS: dict[torch.dtype, Format] = {v: k for k, v in FP8_DTYPES.items()}
FP8_MAX: dict[Format, float] = {"e4m3": 448.0, "e5m2": 57344.0}
# Mantissa bits and smallest normal exponent, used to round to the fp8 grid in float32 arithmetic.
FP8_MANTISSA_BITS: dict[Format, int] = {"e4m3": 3, "e5m2": 2}
FP8_MIN_NORMAL_EXP: dict[Format, int] = {"e4m3": -6, "e5m2": -14}
# absmax is floored at fmax / 2**127 so that scale = fmax / absmax stays finite (≤ 2**127) even for an
# all-zero or denormal group: zeros quantize to zeros with a finite scale, never NaN.
FP8_AMAX_FLOOR: dict[Format, float] = {f: m / 2.0**127 for f, m in FP8_MAX.items()}


# How a GEMM operand is scaled (the Triton GEMM's constexpr A_SCALE / B_SCALE): no scale (16-bit), one per
# tensor, one per row, 1×128 / 128×128 blocks. Here, not in gemm.py, so that the kernel module needs no import of
# the module that launches it.
SCALE_NONE, SCALE_TENSOR, SCALE_VECTOR, SCALE_BLOCK = 0, 1, 2, 3


def code_format(t: torch.Tensor, op: str) -> Format:
    """The format of int8 / fp8 codes ``t``; ``TypeError`` naming ``op`` for any other dtype."""
    if t.dtype == torch.int8:
        return "int8"
    if t.dtype in FP8_FORMATS:
        return FP8_FORMATS[t.dtype]
    raise TypeError(f"{op}: codes must be int8, float8_e4m3fn or float8_e5m2, got {t.dtype}")


def qmax(fmt: Format) -> float:
    """Largest representable magnitude of a format (127 for int8)."""
    return INT8_MAX if fmt == "int8" else FP8_MAX[fmt]


def storage_dtype(fmt: Format) -> torch.dtype:
    return torch.int8 if fmt == "int8" else FP8_DTYPES[fmt]


def fp8_format(dtype: torch.dtype) -> Format:
    """Map a torch float8 dtype to its format name, with a clear error for anything else."""
    try:
        return FP8_FORMATS[dtype]
    except KeyError:
        raise TypeError(
            f"fp8 dtype must be torch.float8_e4m3fn or torch.float8_e5m2, got {dtype}"
        ) from None


def check_granularity(granularity: str, ndim: int, op: str) -> None:
    if granularity not in GRANULARITIES:
        raise ValueError(f"{op}: granularity must be one of {GRANULARITIES}, got {granularity!r}")
    if granularity == "column" and ndim < 2:
        raise ValueError(f"{op}: column-wise scaling needs a tensor with at least 2 dims, got {ndim}-D")


def check_input(x: torch.Tensor, op: str) -> None:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{op}: expected a torch.Tensor, got {type(x).__name__}")
    if x.dtype not in FLOAT_DTYPES:
        raise TypeError(f"{op}: expected a float32, float16 or bfloat16 tensor, got {x.dtype}")
    if x.ndim == 0:
        raise ValueError(f"{op}: expected a tensor with at least 1 dim, got a 0-dim tensor")


def checks_enabled(check: bool | None) -> bool:
    """Checked mode: the explicit argument, else the ``LOWBIT_CHECK_FINITE`` environment variable."""
    if check is not None:
        return bool(check)
    return os.environ.get("LOWBIT_CHECK_FINITE", "0").lower() in ("1", "true", "yes", "on")


def raise_if_nonfinite(x: torch.Tensor, op: str) -> None:
    """Checked mode: raise ``ValueError`` if ``x`` holds NaN or Inf (costs a device-to-host sync)."""
    bad = (~torch.isfinite(x)).sum().item() if x.numel() else 0
    if bad:
        n_nan = torch.isnan(x).sum().item()
        raise ValueError(
            f"{op}: input holds {bad} non-finite value(s) ({n_nan} NaN, {bad - n_nan} Inf) "
            f"of {x.numel()}; quantizing it would give meaningless codes"
        )


def device_capability(device: torch.device) -> tuple[int, int]:
    """A CUDA device's compute capability, asked once per device (hot paths check it on every call)."""
    return _capability(device.index if device.index is not None else torch.cuda.current_device())


@functools.lru_cache(maxsize=16)
def _capability(device_index: int) -> tuple[int, int]:
    return torch.cuda.get_device_capability(device_index)


@functools.lru_cache(maxsize=1)
def triton_available() -> bool:
    try:
        import triton  # noqa: F401
    except Exception:  # pragma: no cover - triton missing or broken
        return False
    return True


_INTERPRET = os.environ.get("TRITON_INTERPRET", "0") == "1"


def interpreting() -> bool:
    """True when Triton kernels run in Triton's CPU interpreter (``TRITON_INTERPRET=1``; read once, at import, as
    Triton reads it when its kernels are defined)."""
    return _INTERPRET


def use_triton(x: torch.Tensor, backend: Backend, op: str) -> bool:
    """Pick the implementation: Triton for CUDA tensors (or CPU tensors under the interpreter), else PyTorch."""
    if backend not in ("auto", "torch", "triton"):
        raise ValueError(f"{op}: backend must be 'auto', 'torch' or 'triton', got {backend!r}")
    if backend == "torch":
        return False
    runnable = triton_available() and (x.is_cuda or (interpreting() and x.device.type == "cpu"))
    if backend == "triton" and not runnable:
        raise RuntimeError(
            f"{op}: the Triton backend needs a CUDA tensor (or TRITON_INTERPRET=1 for CPU tensors) and an "
            f"installed triton; got a tensor on {x.device}"
        )
    return runnable and (backend == "triton" or x.is_cuda)


SMALLEST_PIECE = 1 if interpreting() else 16  # lanes; the interpreter tests use tiny rows


def row_pieces(n: int, *, smallest: int = 16, most: int = 4) -> tuple[int, ...] | None:
    """``n`` as descending powers of two (its binary digits), each ≥ ``smallest``, at most ``most`` of them: the
    pieces a ``PIECES`` program holds a row in (5120 → (4096, 1024); 1664 → (1024, 512, 128)); None if it has none."""
    parts = tuple(1 << b for b in range(n.bit_length() - 1, -1, -1) if n >> b & 1)
    return parts if n > 0 and len(parts) <= most and parts[-1] >= smallest else None
