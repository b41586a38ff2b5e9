"""Radial embedding of edge lengths (MACE paper Eq. 7–8) and the radial MLP.

Bessel basis b_n(r) = sqrt(2/r_max) sin(nπ r / r_max) / r, n = 1..num_bessel, times the polynomial
envelope u(r) = 1 - (p+1)(p+2)/2 x^p + p(p+2) x^(p+1) - p(p+1)/2 x^(p+2), x = r / r_max, which
vanishes with its first and second derivatives at r_max (for every p), so energies and forces are
continuous as atoms leave the cutoff. Everything runs in the dtype of the input lengths.

With a distance transform (mace-torch's `distance_transform`), the Bessel functions take the
transformed length x(r) in place of r while the envelope keeps the raw r; with mace-torch's
`apply_cutoff=False` the envelope multiplies the radial MLP's output instead of its input
(lpmace.model assembles both).
"""

from __future__ import annotations

import math
from typing import Optional, Sequence

import torch

from lpmace.nn.activation import scaled_silu
from lpmace.nn.constants import ExactConstants
from lpmace.precision import scaled_weight


class RadialEmbedding(ExactConstants):
    """lengths [n_edges, 1] -> Bessel features times envelope [n_edges, num_bessel]."""

    def __init__(self, r_max: float, num_bessel: int, num_polynomial_cutoff: int):
        super().__init__()
        self.r_max = float(r_max)
        self.p = int(num_polynomial_cutoff)
        freqs = math.pi / self.r_max * torch.arange(1, num_bessel + 1, dtype=torch.float64)
        self.register_constant("frequencies", freqs)

    def envelope(self, lengths: torch.Tensor) -> torch.Tensor:
        """u(r) [n_edges, 1]; exactly zero at and beyond r_max."""
        return polynomial_envelope(lengths / self.r_max, self.p)

    def bessel(self, lengths: torch.Tensor) -> torch.Tensor:
        """b_n(r) [n_edges, num_bessel], without the envelope; r may be a transformed length
        (lpmace.nn.distance_transform), r_max stays the model's."""
        freqs = self.frequencies.to(lengths.dtype)
        return math.sqrt(2.0 / self.r_max) * torch.sin(freqs * lengths) / lengths

    def forward(self, lengths: torch.Tensor) -> torch.Tensor:
        return self.bessel(lengths) * self.envelope(lengths)


def polynomial_envelope(x: torch.Tensor, p: int) -> torch.Tensor:
    """u(x) of x = r / r_cut (any shape, its dtype): 1 at 0, exactly zero at and beyond 1."""
    u = (
        1.0
        - (p + 1.0) * (p + 2.0) / 2.0 * x**p
        + p * (p + 2.0) * x ** (p + 1)
        - p * (p + 1.0) / 2.0 * x ** (p + 2)
    )
    return u * (x < 1.0)


class RadialMLP(torch.nn.Module):
    """Per-edge tensor-product weights from radial features.

    Layers h <- act(h @ W / sqrt(fan_in)) with the scaled SiLU, no biases, no activation after the
    last layer. Input [n_edges, sizes[0]], output [n_edges, sizes[-1]], in the input's dtype.
    """

    def __init__(self, sizes: Sequence[int]):
        super().__init__()
        self.sizes = tuple(int(s) for s in sizes)
        self.weights = torch.nn.ParameterList(
            [torch.nn.Parameter(torch.randn(a, b)) for a, b in zip(self.sizes[:-1], self.sizes[1:])]
        )

    def forward(self, x: torch.Tensor, dtype: Optional[torch.dtype] = None) -> torch.Tensor:
        """Computes in `dtype` (default: the input's)."""
        x = x.to(dtype or x.dtype)
        last = len(self.weights) - 1
        for i, w in enumerate(self.weights):
            x = x @ scaled_weight(w, w.shape[0], x.dtype)
            if i < last:
                x = scaled_silu(x)
        return x
