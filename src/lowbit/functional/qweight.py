"""``QuantizedWeight``: a weight that arrives already quantized (codes + one tensor-wise scale).

FSDP2's 8-bit all-gather (``lowbit.train.fsdp8``) gathers each sharded weight as the int8 / e4m3 codes its
forward matmul uses instead of the 16-bit values, and hands the module this tensor as its weight. It looks like
the 16-bit weight (shape, dtype, device), and :func:`lowbit.functional.linear` takes its codes as they are where
it would have quantized the weight tensor-wise itself (torchao's ``tensor_already_casted_to_fp8`` idea): the
forward and, for tensor-wise dgrad recipes, the dgrad (``Wᵀ``'s codes are the transpose of ``W``'s, one scale).

The codes and scale are exactly what ``ops.quantize(W, fmt, "tensor")`` gives for the whole ``W`` in
``source_dtype`` (the dtype the linear would have quantized), so the numerics are those of quantizing after a
16-bit gather, bit for bit. Any other use of the tensor (an op the linear does not run) sees the dequantized
values, so it still behaves like a weight, only never as the exact 16-bit one.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.utils._pytree as pytree

from lowbit.functional.recipe import Quant
from lowbit.kernels import _reference as reference

__all__ = ["QuantizedWeight", "quantize_with_amax"]

_aten = torch.ops.aten
# Ops that only re-view the codes (FSDP2 crops the padded all-gather output with as_strided, and nn.Parameter
# detaches); the scale is tensor-wise, so it holds for any view.
_VIEWS = {
    _aten.detach.default, _aten.alias.default, _aten.view.default, _aten._unsafe_view.default,
    _aten.as_strided.default, _aten.slice.Tensor,
}


def quantize_with_amax(x: torch.Tensor, amax: torch.Tensor, fmt: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Tensor-wise codes of ``x`` (a piece of a larger tensor) given the absmax of the *whole* tensor.

    The reference quantizer's arithmetic (``lowbit.kernels._reference``: scale from the absmax, then every
    element ``x · multiplier`` rounded), which the Triton kernels reproduce bit for bit; elementwise, so a shard
    quantized with the global absmax gives exactly the codes of that shard in the whole tensor's codes.
    """
    scale = reference.scale_from_absmax(amax.reshape(()), fmt)  # type: ignore[arg-type]
    return reference.quantize_with_scale(x, scale, fmt), scale  # type: ignore[arg-type]


def _dtype_only(w: torch.Tensor, kwargs: dict[str, Any]) -> bool:
    """``_to_copy`` kwargs that change at most the dtype (what ``weight.to(dtype)`` passes)."""
    same = {"device": (None, w.device), "layout": (None, torch.strided), "pin_memory": (None, False),
            "memory_format": (None, torch.preserve_format), "non_blocking": (None, False, True)}
    return all(k == "dtype" or (k in same and v in same[k]) for k, v in kwargs.items())


class QuantizedWeight(torch.Tensor):
    """A 2-D weight held as tensor-wise ``codes`` (int8 or float8_e4m3fn) and a 0-dim float32 ``scale``.

    ``dtype`` is what the module sees (the parameter's dtype); ``source_dtype`` is the dtype of the values the
    codes were made from (a cast to it is free: ``linear`` under autocast calls ``weight.to(dtype)``).
    """

    codes: torch.Tensor
    scale: torch.Tensor
    fmt: str
    source_dtype: torch.dtype

    @staticmethod
    def __new__(cls, codes: torch.Tensor, scale: torch.Tensor, fmt: str, dtype: torch.dtype,
                source_dtype: torch.dtype | None = None, requires_grad: bool = False) -> QuantizedWeight:
        return torch.Tensor._make_wrapper_subclass(  # type: ignore[attr-defined]
            cls, codes.size(), strides=codes.stride(), storage_offset=codes.storage_offset(), dtype=dtype,
            device=codes.device, requires_grad=requires_grad,
        )

    def __init__(self, codes: torch.Tensor, scale: torch.Tensor, fmt: str, dtype: torch.dtype,
                 source_dtype: torch.dtype | None = None, requires_grad: bool = False) -> None:
        self.codes, self.scale, self.fmt = codes, scale, fmt
        self.source_dtype = source_dtype or dtype

    __torch_function__ = torch._C._disabled_torch_function_impl

    def __repr__(self) -> str:  # type: ignore[override]
        return (f"QuantizedWeight({self.fmt} tensor-wise codes {tuple(self.shape)}, scale={float(self.scale):g}, "
                f"dtype={self.dtype}, from {self.source_dtype})")

    def codes_for(self, q: Quant, transpose: bool) -> tuple[torch.Tensor, torch.Tensor]:
        """``(codes, scale)`` as ``ops.quantize(W, q.format, "tensor", transpose)`` would give them."""
        if q.scaling != "tensor" or q.format != self.fmt:
            raise ValueError(f"QuantizedWeight holds {self.fmt} tensor-wise codes; the recipe asks for {q} "
                             "(only tensor-wise weights of the same format can use 8-bit all-gather)")
        return (self.codes.t().contiguous() if transpose else self.codes), self.scale

    def dequantize(self, dtype: torch.dtype | None = None) -> torch.Tensor:
        """The values the codes stand for, in ``dtype`` (default: this tensor's dtype)."""
        from lowbit.kernels import ops

        return ops.dequantize(self.codes, self.scale, self.fmt, "tensor", dtype or self.dtype)

    def __tensor_flatten__(self) -> tuple[list[str], dict[str, Any]]:
        return ["codes", "scale"], {"fmt": self.fmt, "dtype": self.dtype, "source_dtype": self.source_dtype}

    @staticmethod
    def __tensor_unflatten__(inner: dict[str, torch.Tensor], meta: dict[str, Any], outer_size: Any,
                             outer_stride: Any) -> QuantizedWeight:
        return QuantizedWeight(inner["codes"], inner["scale"], meta["fmt"], meta["dtype"], meta["source_dtype"])

    @classmethod
    def __torch_dispatch__(cls, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        kwargs = kwargs or {}
        if func in _VIEWS:
            w = args[0]
            return QuantizedWeight(func(w.codes, *args[1:], **kwargs), w.scale, w.fmt, w.dtype, w.source_dtype)
        if func is _aten._to_copy.default and isinstance(args[0], QuantizedWeight) and _dtype_only(args[0], kwargs):
            w, dtype = args[0], kwargs.get("dtype") or args[0].dtype
            if dtype == w.source_dtype:  # the cast `linear` makes under autocast: the codes are of these values
                return QuantizedWeight(w.codes, w.scale, w.fmt, dtype, w.source_dtype)
            raise TypeError(f"QuantizedWeight: codes made from {w.source_dtype} values cannot stand for the weight "
                            f"cast to {dtype}; quantize the all-gathered weight from {dtype} (compute_dtype)")
        args, kwargs = pytree.tree_map_only(QuantizedWeight, lambda t: t.dequantize(), (args, kwargs))
        return func(*args, **kwargs)
