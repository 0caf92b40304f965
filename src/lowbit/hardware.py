"""What a GPU can do at most, for model-FLOPs utilisation (MFU): the dense bf16 tensor-core peak per model.

A leaf module (imports nothing from lowbit), shared by the trainer and ``lowbit bench``. MFU is the model's
FLOPs per second over the device's dense bf16 peak, whatever precision the run used: 8-bit recipes are judged
against the same bf16 yardstick, so their MFU shows the speed-up. An MFU above ``IMPLAUSIBLE_MFU`` almost
surely means the clock stopped before the GPU work ended, not that the code is fast.
"""

from __future__ import annotations

__all__ = ["IMPLAUSIBLE_MFU", "dense_bf16_peak_tflops", "format_mfu", "mfu", "mfu_warning"]

IMPLAUSIBLE_MFU = 0.75  # above this share of the dense bf16 peak a throughput is a measurement error

# Datasheet dense (no sparsity) bf16 tensor-core TFLOP/s, matched on the CUDA device name (lower case); the
# first matching entry wins, so the more specific names come first.
_PEAKS: tuple[tuple[str, float], ...] = (
    ("h100 pcie", 756.0),
    ("h100 nvl", 835.0),
    ("h100", 989.4),  # SXM ("NVIDIA H100 80GB HBM3")
    ("h800", 989.4),
    ("gh200", 989.4),
    ("h200", 989.4),
    ("b200", 2250.0),
    ("a100", 312.0),
    ("a800", 312.0),
    ("l40s", 362.0),
    ("a10g", 70.0),
    ("rtx 4090", 165.2),
)


def dense_bf16_peak_tflops(device_name: str) -> float | None:
    """The dense bf16 peak in TFLOP/s of a CUDA device named ``device_name`` (``torch.cuda.get_device_name``),
    or ``None`` where it is not in the table (CPUs, unknown GPUs): then MFU is reported as unknown."""
    name = device_name.lower()
    for key, peak in _PEAKS:
        if key in name:
            return peak
    return None


def mfu(flops_per_sample: float | None, samples_per_s: float | None, device_name: str) -> float | None:
    """Model-FLOPs utilisation: ``flops_per_sample * samples_per_s`` over the device's dense bf16 peak, as a
    fraction (0.42 = 42%); ``None`` when any part is unknown."""
    peak = dense_bf16_peak_tflops(device_name)
    if peak is None or not flops_per_sample or not samples_per_s:
        return None
    return flops_per_sample * samples_per_s / (peak * 1e12)


def format_mfu(value: float | None) -> str:
    """``"41.8%"``, ``"unknown"`` without a peak, with ``" (implausible)"`` above ``IMPLAUSIBLE_MFU``."""
    if value is None:
        return "unknown"
    return f"{100 * value:.1f}%" + (" (implausible)" if value > IMPLAUSIBLE_MFU else "")


def mfu_warning(value: float | None, what: str) -> str | None:
    """One line to print when ``value`` is above ``IMPLAUSIBLE_MFU`` (``what`` names the figure), else None."""
    if value is None or value <= IMPLAUSIBLE_MFU:
        return None
    return (f"lowbit: warning: {what} is {100 * value:.0f}% of the device's dense bf16 peak (MFU); above "
            f"{100 * IMPLAUSIBLE_MFU:.0f}% the clock almost surely stopped before the GPU work ended")
