#!/usr/bin/env python3
"""GPU micro-benchmark: which ``scaled_dot_product_attention`` backend is fastest at CLIP's attention shapes.

The compiled ViT-H/14 step's profile spends ≈ 30 ms in cuDNN's flash kernels, whose tile names end in ``x128``: the
head dimension 80 (1280 / 16) seems padded to 128. This times the attention core of ``lowbit.models.clip.Attention``
as the model runs it — packed ``qkv`` viewed and permuted into q, k, v, SDPA, the output transposed back to
``[B, N, C]`` — forward + backward into the packed ``qkv`` gradient, for each backend PyTorch offers, and checks
each backend's output and ``qkv`` gradient against the math backend in float32 (relative max error).

    PYTHONPATH=src python bench/probes/sdpa_backends.py [--batch-size 96] [--fa4]

``--fa4`` adds FlashAttention-4 (the ``flash-attn-4`` package, its CuTe kernels routed into the flash backend by
``torch.nn.attention.activate_flash_attention_impl("FA4")``), timed after the others since the switch is
process-wide.
"""

from __future__ import annotations

import argparse

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel
from triton.testing import do_bench

# name, tokens, heads, head dim, causal (ViT-H/14 vision and text towers, ViT-L/14 vision, ViT-B/32 vision)
SHAPES = [("vit-h-14 vision", 257, 16, 80, False), ("vit-h-14 text", 77, 16, 64, True),
          ("vit-l-14 vision", 257, 16, 64, False), ("vit-b-32 vision", 50, 12, 64, False)]
BACKENDS = {"cudnn": SDPBackend.CUDNN_ATTENTION, "flash": SDPBackend.FLASH_ATTENTION,
            "efficient": SDPBackend.EFFICIENT_ATTENTION}


def attention(qkv: torch.Tensor, heads: int, causal: bool) -> torch.Tensor:
    b, n, c3 = qkv.shape
    c = c3 // 3
    q, k, v = qkv.view(b, n, 3, heads, c // heads).permute(2, 0, 3, 1, 4).unbind(0)
    return F.scaled_dot_product_attention(q, k, v, is_causal=causal).transpose(1, 2).reshape(b, n, c)


def run(qkv: torch.Tensor, dy: torch.Tensor, heads: int, causal: bool) -> tuple[torch.Tensor, torch.Tensor]:
    qkv.grad = None
    y = attention(qkv, heads, causal)
    y.backward(dy)
    return y, qkv.grad


def bench(name: str, n: int, h: int, d: int, causal: bool, batch: int, backends: dict[str, SDPBackend]) -> None:
    """One shape: each backend's forward and forward+backward times and errors, as Markdown rows."""
    c = h * d
    qkv = torch.randn(batch, n, 3 * c, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    dy = torch.randn(batch, n, c, device="cuda", dtype=torch.bfloat16)
    ref32 = qkv.detach().float().requires_grad_()
    with sdpa_kernel([SDPBackend.MATH]):
        y_ref, g_ref = run(ref32, dy.float(), h, causal)
    flops = 4 * batch * h * n * n * d * (0.5 if causal else 1.0) * 3.5  # fwd 2 GEMMs, bwd 5 (2.5× fwd)
    for bname, backend in backends.items():
        try:
            with sdpa_kernel([backend]):
                y, g = run(qkv, dy, h, causal)
                fwd = do_bench(lambda: attention(qkv.detach(), h, causal), warmup=25, rep=200)
                both = do_bench(lambda: run(qkv, dy, h, causal), warmup=25, rep=200)
        except RuntimeError as e:  # the backend refuses the shape
            print(f"| {name} | {bname} | - | - | - | {str(e).splitlines()[0][:60]} | |")
            continue
        err_y = ((y.float() - y_ref).abs().max() / y_ref.abs().max()).item()
        err_g = ((g.float() - g_ref).abs().max() / g_ref.abs().max()).item()
        print(f"| {name} | {bname} | {fwd:.3f} | {both:.3f} | {flops / both / 1e9:.0f} | {err_y:.1e} | {err_g:.1e} |")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--batch-size", type=int, default=96)
    p.add_argument("--fa4", action="store_true",
                   help="then route the flash backend through FlashAttention-4 (flash-attn-4) and time it as 'fa4'")
    args = p.parse_args()
    torch.manual_seed(0)
    print(f"torch {torch.__version__}, {torch.cuda.get_device_name()}, batch {args.batch_size}\n")
    print("| shape | backend | fwd ms | fwd+bwd ms | TFLOP/s fwd+bwd | out err | dqkv err |")
    print("|---|---|---:|---:|---:|---:|---:|")
    for shape in SHAPES:
        bench(*shape, args.batch_size, BACKENDS)
    if args.fa4:
        from torch.nn.attention import activate_flash_attention_impl

        activate_flash_attention_impl("FA4")  # process-wide: every flash call from here on
        for shape in SHAPES:
            bench(*shape, args.batch_size, {"fa4": SDPBackend.FLASH_ATTENTION})


if __name__ == "__main__":
    main()
