"""Quantizers and scaled matmuls: PyTorch reference numerics (any device) and Triton kernels (CUDA)."""

from lowbit.kernels._common import FP8_MAX, GRANULARITIES, Backend, Format, Granularity
from lowbit.kernels.quantizers import (
    dequantize,
    dequantize_fp8,
    dequantize_int8,
    quantize,
    quantize_dual,
    quantize_fp8,
    quantize_fp8_transpose,
    quantize_int8,
    quantize_int8_transpose,
)

__all__ = [
    "FP8_MAX",
    "GRANULARITIES",
    "Backend",
    "Format",
    "Granularity",
    "dequantize",
    "dequantize_fp8",
    "dequantize_int8",
    "quantize",
    "quantize_dual",
    "quantize_fp8",
    "quantize_fp8_transpose",
    "quantize_int8",
    "quantize_int8_transpose",
]
