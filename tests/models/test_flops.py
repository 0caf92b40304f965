"""Model FLOPs (lowbit.models.flops) and MFU (lowbit.hardware)."""

import pytest
import torch

from lowbit.hardware import IMPLAUSIBLE_MFU, dense_bf16_peak_tflops, format_mfu, mfu, mfu_warning
from lowbit.models import CLIP, get_config
from lowbit.models.flops import clip_train_flops, count_train_flops


def test_vit_h_train_flops_match_the_hand_count():
    # ViT-H/14: 32 blocks of width 1280 over 257 tokens, 24 causal text blocks of width 1024 over 77 tokens
    cfg = get_config("vit-h-14")
    per_block = 2 * 257 * (4 * 1280**2 + 2 * 1280 * 5120) + 4 * 257**2 * 1280
    text_block = 2 * 77 * (4 * 1024**2 + 2 * 1024 * 4096) + 2 * 77**2 * 1024
    forward = 32 * per_block + 24 * text_block + 2 * 256 * 588 * 1280 + 2 * 1280 * 1024 + 2 * 1024 * 1024
    assert clip_train_flops(cfg) == pytest.approx(3 * (forward + 2 * 1024))
    assert 1.1e12 < clip_train_flops(cfg) < 1.2e12


def test_analytic_count_agrees_with_pytorchs_flop_counter():
    # the counter sees every matmul PyTorch runs (attention only where SDPA dispatches to a counted kernel:
    # not the CPU's math path), so it lands between the analytic count without attention and with it
    cfg = get_config("tiny")
    model = CLIP(cfg)
    images = torch.randn(3, 3, cfg.vision.image_size, cfg.vision.image_size)
    tokens = torch.randint(0, 200, (3, cfg.text.context_length))
    counted = count_train_flops(model, images, tokens, samples=3)
    assert counted is not None
    v, t = cfg.vision, cfg.text
    n = (v.image_size // v.patch_size) ** 2 + 1
    attention = 3 * (v.layers * 4 * n * n * v.width + t.layers * 2 * t.context_length**2 * t.width)
    full = clip_train_flops(cfg, batch=3)
    assert (full - attention) * 0.99 <= counted <= full * 1.01


def test_count_train_flops_returns_none_when_the_model_fails():
    def broken(x):
        raise RuntimeError("no")

    assert count_train_flops(broken, torch.zeros(1), samples=1) is None


def test_peaks_and_mfu():
    assert dense_bf16_peak_tflops("NVIDIA H100 80GB HBM3") == pytest.approx(989.4)
    assert dense_bf16_peak_tflops("NVIDIA H100 PCIe") == pytest.approx(756.0)
    assert dense_bf16_peak_tflops("NVIDIA H200") == pytest.approx(989.4)
    assert dense_bf16_peak_tflops("cpu") is None
    # the example: 710 ViT-H images/s on an H100 would be 82% of the peak
    value = mfu(clip_train_flops(get_config("vit-h-14")), 710, "NVIDIA H100 80GB HBM3")
    assert value == pytest.approx(0.82, abs=0.01)
    assert format_mfu(value).endswith("(implausible)")
    assert "82%" in mfu_warning(value, "throughput")
    honest = mfu(clip_train_flops(get_config("vit-h-14")), 344, "NVIDIA H100 80GB HBM3")
    assert honest < IMPLAUSIBLE_MFU and mfu_warning(honest, "throughput") is None
    assert format_mfu(honest) == f"{100 * honest:.1f}%"
    assert mfu(1e9, 10, "cpu") is None and format_mfu(None) == "unknown"
