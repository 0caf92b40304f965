#!/usr/bin/env python3
"""GPU micro-benchmark: the tensor-wise absmax kernel's launch grid at weight and activation shapes.

``quantize_scaled`` launched ``_absmax_kernel`` with 8 serial 32 × 128 tiles per program: a 1280 × 5120 weight got
200 programs for the H100's 132 SMs (13 µs a call in the ViT-H step's profile, where one read takes ≈ 4.4 µs). This
times ROW_BLOCKS 1, 2, 4, 8 per shape (``triton.testing.do_bench``: CUDA events, median; each call includes the
int32 accumulator's allocation and zeroing, as ``quantize_scaled`` does), checks each grid's absmax against
``x.abs().amax()``, and prints a Markdown table with the ideal time of one read at COPY_TBPS.

    PYTHONPATH=src python bench/probes/absmax_grid.py [--copy-tbps 2.95]
"""

from __future__ import annotations

import argparse

import torch
import triton
from triton.testing import do_bench

from lowbit.kernels._triton_quant import _absmax_kernel

SHAPES = [(1280, 5120), (5120, 1280), (3840, 1280), (1280, 1280), (1664, 8192), (32896, 1280), (32896, 5120)]


BM, BK = 32, 128  # quantize_scaled's tile


def grid(M: int, K: int, row_blocks: int) -> tuple[int, int]:
    return triton.cdiv(M, BM * row_blocks), triton.cdiv(K, BK)


def absmax(x: torch.Tensor, row_blocks: int) -> torch.Tensor:
    M, K = x.shape
    amax = torch.zeros(1, dtype=torch.int32, device=x.device)
    _absmax_kernel[grid(M, K, row_blocks)](
        x, amax, M, K, x.stride(0), x.stride(1), PER_COLUMN=False, BLOCK_M=BM, BLOCK_K=BK, ROW_BLOCKS=row_blocks,
        num_warps=4)
    return amax.view(torch.float32)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--copy-tbps", type=float, default=2.95, help="copy bandwidth for the ideal column (TB/s)")
    args = p.parse_args()
    sms = torch.cuda.get_device_properties(0).multi_processor_count
    print(f"{torch.cuda.get_device_name()}, {sms} SMs, torch {torch.__version__}, triton {triton.__version__}\n")
    print("| shape (bf16) | ROW_BLOCKS | programs | µs | one read at copy bandwidth (µs) | exact |")
    print("|---|---:|---:|---:|---:|---|")
    for M, K in SHAPES:
        x = torch.randn(M, K, device="cuda", dtype=torch.bfloat16)
        ref = x.float().abs().amax()
        ideal = x.numel() * 2 / (args.copy_tbps * 1e12) * 1e6
        for rb in (1, 2, 4, 8):
            ok = bool(absmax(x, rb).item() == ref.item())
            us = do_bench(lambda: absmax(x, rb), warmup=25, rep=100) * 1e3
            programs = grid(M, K, rb)[0] * grid(M, K, rb)[1]
            print(f"| {M} × {K} | {rb} | {programs} | {us:.1f} | {ideal:.1f} | {ok} |", flush=True)


if __name__ == "__main__":
    main()
