"""Readouts: site energies from the scalar (l = 0) channels of the node features."""

from __future__ import annotations

import math

import torch

from lpmace.nn.activation import scaled_silu


class LinearReadout(torch.nn.Module):
    """h [n, C, D] -> site energy [n] = h[:, :, 0] @ w / sqrt(C)."""

    def __init__(self, channels: int):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.randn(channels, 1))

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        w = self.weight.to(h.dtype) / math.sqrt(self.weight.shape[0])
        return (h[:, :, 0] @ w)[:, 0]


class MLPReadout(torch.nn.Module):
    """h [n, C, D] -> site energy [n] through one hidden layer of width `hidden` and scaled SiLU."""

    def __init__(self, channels: int, hidden: int):
        super().__init__()
        self.weight_1 = torch.nn.Parameter(torch.randn(channels, hidden))
        self.weight_2 = torch.nn.Parameter(torch.randn(hidden, 1))

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        w1 = self.weight_1.to(h.dtype) / math.sqrt(self.weight_1.shape[0])
        w2 = self.weight_2.to(h.dtype) / math.sqrt(self.weight_2.shape[0])
        return (scaled_silu(h[:, :, 0] @ w1) @ w2)[:, 0]
