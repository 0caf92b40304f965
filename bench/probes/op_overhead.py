"""Host cost of one call through the ``lowbit::`` ops vs the Python function they wrap, and vs the same function
registered with ``torch.library.custom_op`` (how lowbit registered them before), side by side in one run. Tiny
CPU tensors, so the kernel work is small and the differences are dispatch. torch.compile'd models call the ops so.

    python bench/probes/op_overhead.py
"""
import platform
import time

import torch

import lowbit.kernels.ops  # noqa: F401  (registers torch.ops.lowbit.*)
from lowbit.kernels import quantizers

x = torch.randn(4, 16)
q, s = quantizers.quantize(x, "int8", "row")


@torch.library.custom_op("lowbit_bench::quantize", mutates_args=())
def _quantize_custom_op(x: torch.Tensor, fmt: str, granularity: str, transpose: bool) -> tuple[torch.Tensor, torch.Tensor]:
    return quantizers.quantize(x, fmt, granularity, transpose=transpose)


@torch.library.custom_op("lowbit_bench::dequantize", mutates_args=())
def _dequantize_custom_op(q: torch.Tensor, scale: torch.Tensor, fmt: str, granularity: str,
                          dtype: torch.dtype) -> torch.Tensor:
    return quantizers.dequantize(q, scale, fmt, granularity, dtype)


def us_per_call(fn, n: int = 5000) -> float:
    fn()
    best = float("inf")
    for _ in range(5):  # best of 5 batches: the least disturbed by other work on the machine
        t = time.perf_counter()
        for _ in range(n):
            fn()
        best = min(best, (time.perf_counter() - t) / n * 1e6)
    return best


print(f"torch {torch.__version__}, {platform.processor() or platform.machine()}, {torch.get_num_threads()} threads")
rows = [
    ("quantize row, direct", lambda: quantizers.quantize(x, "int8", "row")),
    ("quantize row, torch.ops.lowbit", lambda: torch.ops.lowbit.quantize.default(x, "int8", "row", False)),
    ("quantize row, custom_op", lambda: torch.ops.lowbit_bench.quantize.default(x, "int8", "row", False)),
    ("dequantize, direct", lambda: quantizers.dequantize(q, s, "int8", "row", torch.float32)),
    ("dequantize, torch.ops.lowbit", lambda: torch.ops.lowbit.dequantize.default(q, s, "int8", "row", torch.float32)),
    ("dequantize, custom_op", lambda: torch.ops.lowbit_bench.dequantize.default(q, s, "int8", "row", torch.float32)),
]
for name, fn in rows:
    print(f"{name:34s} {us_per_call(fn):7.1f} us")
