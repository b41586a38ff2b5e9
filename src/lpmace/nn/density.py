"""Density normalisation of the message: divide each atom's neighbour sum by a learned, smooth count
of its neighbours instead of by one dataset-wide constant.

MACE divides the neighbour sum of Eq. 8 by avg_num_neighbors, the mean coordination of the training
set. A foundation model sees coordinations from 0 (a gas) to 20+ (a dense metal), so one constant
leaves messages of very different size in different materials. mace-torch's density blocks
(RealAgnosticDensityInteractionBlock and its residual variant, used by MP-0b2/b3, MPA-0, OMAT-0,
MATPES) learn the count instead:

    ρ_i = Σ_{j∈N(i)} tanh( f(e_ij)² ) [· u(r_ij)]          A_i = Linear(M_i) / (1 + ρ_i)

with f a learned scalar function of the edge features e_ij (for those blocks one linear layer of
the radial basis, no bias, so f = 0 where the enveloped basis vanishes at r_max: ρ is smooth as
atoms cross the cutoff), tanh(f²) ∈ [0, 1) each edge's weight in the count, and u the cutoff
envelope when the model applies it to the weights rather than to the basis. The non-linear block
(lpmace.nn.nonlinear_interaction) uses the same ρ with an MLP for f and the affine denominator
β ρ_i + α (α, β learned, mace-torch initialises α = 20, β = 0).

Precision: ρ is a sum of up to a few hundred terms in [0, 1) that divides every message; it is
computed, summed and added in the policy's `density` dtype, which is never below float32
(lpmace.precision), whatever the message's dtype.
"""

from __future__ import annotations

from typing import Optional

import torch

from lpmace.precision import widest


def edge_density(f: torch.Tensor, cutoff: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Each edge's weight tanh(f²) [E, 1] (times the envelope `cutoff` [E, 1] when given)."""
    weight = torch.tanh(f * f)
    return weight if cutoff is None else weight * cutoff.to(weight.dtype)


def node_density(weights: torch.Tensor, receiver: torch.Tensor, num_nodes: int) -> torch.Tensor:
    """ρ_i = Σ_{j→i} weights[ij]: [E, 1] summed onto receivers -> [num_nodes, 1] in the weights' dtype."""
    out = torch.zeros(num_nodes, 1, dtype=weights.dtype, device=weights.device)
    return out.index_add_(0, receiver, weights)


def normalised(message: torch.Tensor, denominator: torch.Tensor) -> torch.Tensor:
    """message [n, C, D] / denominator [n, 1], divided in the wider of their dtypes and returned in the
    message's dtype (the denominator is never rounded to a 16-bit message dtype)."""
    wide = widest(message.dtype, denominator.dtype)
    return (message.to(wide) / denominator.to(wide)[:, :, None]).to(message.dtype)
