"""Readouts: site energies from the scalar (l = 0) channels of the node features."""

from __future__ import annotations

from typing import Optional

import torch

from lpmace.nn.activation import scaled_silu
from lpmace.precision import scaled_weight


class LinearReadout(torch.nn.Module):
    """h [n, C, D] -> site energy [n] = h[:, :, 0] @ w / sqrt(C)."""

    def __init__(self, channels: int):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.randn(channels, 1))

    def forward(self, h: torch.Tensor, dtype: Optional[torch.dtype] = None) -> torch.Tensor:
        """Computes in `dtype` (default: the input's)."""
        dtype = dtype or h.dtype
        w = scaled_weight(self.weight, self.weight.shape[0], dtype)
        return (h[:, :, 0].to(dtype) @ w)[:, 0]


class MLPReadout(torch.nn.Module):
    """h [n, C, D] -> site energy [n] through one hidden layer of width `hidden` and scaled SiLU."""

    def __init__(self, channels: int, hidden: int):
        super().__init__()
        self.weight_1 = torch.nn.Parameter(torch.randn(channels, hidden))
        self.weight_2 = torch.nn.Parameter(torch.randn(hidden, 1))

    def forward(self, h: torch.Tensor, dtype: Optional[torch.dtype] = None) -> torch.Tensor:
        """Computes in `dtype` (default: the input's)."""
        dtype = dtype or h.dtype
        w1 = scaled_weight(self.weight_1, self.weight_1.shape[0], dtype)
        w2 = scaled_weight(self.weight_2, self.weight_2.shape[0], dtype)
        return (scaled_silu(h[:, :, 0].to(dtype) @ w1) @ w2)[:, 0]
