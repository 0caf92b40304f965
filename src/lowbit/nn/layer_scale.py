"""LayerScale: a learned per-channel gain on a residual branch (``x + γ ⊙ f(x)``).

Initialised to zero (``init_value=0.0``) every residual branch starts switched off, so each block begins as the
identity; the paper (Wortsman et al. 2023, §3) uses this to keep feature magnitudes small, which is what lets
tensor-wise fp8 training of large CLIP models converge.
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["LayerScale"]


class LayerScale(nn.Module):
    """Multiply the last dimension of the input by a learned vector ``gamma`` of shape ``[dim]``.

    Args:
        dim: number of channels (size of the input's last dimension).
        init_value: initial value of every entry of ``gamma``; ``0.0`` is the zero init of the paper.
    """

    def __init__(self, dim: int, init_value: float = 1e-5) -> None:
        super().__init__()
        if isinstance(dim, bool) or not isinstance(dim, int) or dim <= 0:
            raise ValueError(f"LayerScale: dim must be a positive int, got {dim!r}")
        init_value = float(init_value)
        if init_value != init_value or init_value in (float("inf"), float("-inf")):
            raise ValueError(f"LayerScale: init_value must be finite, got {init_value!r}")
        self.dim = dim
        self.init_value = init_value
        self.gamma = nn.Parameter(torch.full((dim,), init_value))

    def reset_parameters(self) -> None:
        """Refill ``gamma`` with ``init_value``."""
        with torch.no_grad():
            self.gamma.fill_(self.init_value)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-1:] != (self.dim,):
            raise ValueError(f"LayerScale: expected last dimension {self.dim}, got input of shape {tuple(x.shape)}")
        return x * self.gamma.to(x.dtype)

    def extra_repr(self) -> str:
        return f"{self.dim}, init_value={self.init_value}"
