"""Element-dependent weights W[z], stored in full, as a low-rank product, or as an int8 table.

Three weights of MACE depend on the element z of a node: the embedding [S, C], the skip connection
(one [S, C_in, C_out] per degree) and the symmetric-contraction weights [S, K, C]. With S elements
they grow linearly in S; for S = 89 they are most of a medium model's parameters. Two compressions:

- low rank: every W[z], flattened to a vector w_z of length n, is Σ_r A[z, r] B[r, :] with rank r ≤ S,
  so storage is r (S + n) instead of S n. The elements share r basis weights B; A gives each element's
  coordinates in that basis. At r = S with A = I and B = W the product is W exactly (each entry is
  1 · W plus zeros), which is how `lpmace.compress` converts a model at full rank.
- int8 embedding: the embedding's per-element table (W [S, C], or its coordinates A [S, r] at low
  rank, B staying float) in int8, one scale per element (max |row| / 127), dequantised in the
  forward pass. The table is not trained (the next linear, linear_up, can map any S <= C independent
  rows wherever training wants them; at low rank B still trains).

`element_weight(w)` is the one place that turns any of these into the full [S, ...] tensor; every
block reads its element weights through it (the reference and the fused contraction alike).
"""

from __future__ import annotations

import math
from typing import Union

import torch

from lpmace.errors import InputError

ElementWeight = Union[torch.Tensor, "LowRankElementWeight", "Int8ElementTable"]


def element_weight(w: ElementWeight) -> torch.Tensor:
    """The full weight [S, ...] of a stored element weight (a tensor is returned as it is)."""
    return w if isinstance(w, torch.Tensor) else w()


class LowRankElementWeight(torch.nn.Module):
    """W[z] = Σ_r A[z, r] B[r]: A [S, r] (a parameter, or an `Int8ElementTable`) and parameter
    B [r, *shape]; forward() -> W [S, *shape].

    The product runs in B's dtype (master weights, >= float32); blocks round W to their compute
    dtype afterwards, as they would a full weight.
    """

    def __init__(self, coordinates: ElementWeight, basis: torch.Tensor):
        super().__init__()
        self.A = torch.nn.Parameter(coordinates) if isinstance(coordinates, torch.Tensor) else coordinates
        self.B = torch.nn.Parameter(basis)

    @property
    def rank(self) -> int:
        return self.B.shape[0]

    def forward(self) -> torch.Tensor:
        a = element_weight(self.A).to(self.B.dtype)
        return (a @ self.B.reshape(self.rank, -1)).reshape(a.shape[0], *self.B.shape[1:])


class Int8ElementTable(torch.nn.Module):
    """Rows W[z] = values[z] · scale[z]: buffers values int8 [S, *shape], scale [S, 1, ...] (float).

    Quantisation error per entry is at most scale[z] / 2 = max |W[z]| / 254.
    """

    def __init__(self, values: torch.Tensor, scale: torch.Tensor):
        super().__init__()
        self.register_buffer("values", values.to(torch.int8))
        self.register_buffer("scale", scale)

    @classmethod
    def quantize(cls, w: torch.Tensor) -> "Int8ElementTable":
        w = w.detach()
        peak = w.abs().reshape(w.shape[0], -1).amax(dim=1).reshape(-1, *[1] * (w.dim() - 1))
        scale = torch.where(peak > 0, peak / 127, torch.ones_like(peak)).to(torch.float32)
        values = torch.round(w / scale.to(w.dtype)).clamp(-127, 127)
        return cls(values, scale)

    def forward(self) -> torch.Tensor:
        return self.values.to(self.scale.dtype) * self.scale


def check_species_rank(rank, num_elements: int) -> None:
    """InputError unless rank is None or an integer 1..num_elements."""
    if rank is None:
        return
    if isinstance(rank, bool) or not isinstance(rank, int) or not 1 <= rank <= num_elements:
        raise InputError(f"species_rank must be an integer from 1 to the number of elements ({num_elements}) "
                         f"or null, got {rank!r}")


def factorise(w: torch.Tensor, rank: int, how: str = "svd") -> LowRankElementWeight:
    """A low-rank W[z] ≈ Σ_r A[z, r] B[r] of the full weight w [S, ...], in w's dtype and device.

    how="svd": rank == S gives A = I, B = w (exact); rank < S the truncated SVD A = U_r, B = Σ_r V_rᵀ
        (the best rank-r approximation in Frobenius norm, Eckart–Young; computed in float64).
    how="random": a fresh initialisation for training from scratch, A ~ N(0, 1/r) and B = the first r
        rows of w, so A·B has the same per-entry variance as w.
    """
    num_elements = w.shape[0]
    check_species_rank(rank, num_elements)
    w = w.detach()
    if how == "random":
        coordinates = torch.randn(num_elements, rank, dtype=w.dtype, device=w.device) / math.sqrt(rank)
        return LowRankElementWeight(coordinates, w[:rank].clone())
    if how != "svd":
        raise ValueError(f"factorise: how must be 'svd' or 'random', got {how!r}")
    if rank == num_elements:
        return LowRankElementWeight(torch.eye(num_elements, dtype=w.dtype, device=w.device), w.clone())
    flat = w.reshape(num_elements, -1).to(torch.float64)
    u, s, vh = torch.linalg.svd(flat, full_matrices=False)
    k = min(rank, s.shape[0])
    coordinates = torch.zeros(num_elements, rank, dtype=torch.float64, device=w.device)
    basis = torch.zeros(rank, flat.shape[1], dtype=torch.float64, device=w.device)
    coordinates[:, :k] = u[:, :k]
    basis[:k] = s[:k, None] * vh[:k]
    return LowRankElementWeight(coordinates.to(w.dtype), basis.reshape(rank, *w.shape[1:]).to(w.dtype))
