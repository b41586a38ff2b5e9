"""Interaction block: the equivariant convolution that builds the atomic basis A (MACE Eq. 8–9).

    A_{i,c,l3 m3} = 1/avg_num_neighbors · Linear( Σ_{j∈N(i)} Σ_paths R_{ij,c,path}
                      · sqrt(2 l3 + 1) Σ_{m1 m2} C^{l3 m3}_{l1 m1, l2 m2} h̃_{j,c,l1 m1} Y_{l2 m2}(r̂_ij) )

with h̃ = linear_up(h), R the radial MLP of the edge length, C the real Clebsch–Gordan table and the
sum over paths (l1, l2, l3) with natural parity ('uvu' tensor product: channel-wise, one weight per
edge, channel and path). Paths are ordered as mace-torch orders them (by l3, then l1, l2), so radial
MLP columns map one to one.

The "reference" backend forms per-edge products ([E, C, Q]) in PyTorch; the "triton" backend
computes the neighbour sum with `lpmace.kernels.convolution` (one kernel per node, nothing
[E, C, Q] in memory, derivatives by the same kernels).

Two flavours, as in mace-torch:
- residual (RealAgnosticResidualInteractionBlock): also returns the element-dependent skip
  connection sc = ElementLinear(h), added after the product block;
- plain (RealAgnosticInteractionBlock): no skip; the element-dependent linear acts on the message.
"""

from __future__ import annotations

import math
from typing import List, Optional, Sequence, Tuple  # noqa: F401

import torch

from lpmace.kernels.convolution import EdgeSegments, conv_tensor_product, edge_segments
from lpmace.nn.linear import ElementLinear, EquivariantLinear
from lpmace.nn.radial import RadialMLP
from lpmace.o3.clebsch_gordan import coupling_allowed, wigner_3j
from lpmace.o3.irreps import l_slice, num_components
from lpmace.precision import PrecisionPolicy, widest


def conv_paths(lmax_in: int, max_ell: int, lmax_out: int) -> List[Tuple[int, int, int]]:
    """(l1, l2, l3) of the conv tensor product in mace-torch's order (stable sort by l3)."""
    paths = [
        (l1, l2, l3)
        for l1 in range(lmax_in + 1)
        for l2 in range(max_ell + 1)
        for l3 in range(abs(l1 - l2), l1 + l2 + 1)
        if l3 <= lmax_out and coupling_allowed(l1, l2, l3)
    ]
    return sorted(paths, key=lambda p: p[2])


def conv_coupling_table(paths: Sequence[Tuple[int, int, int]], lmax_in: int, max_ell: int) -> torch.Tensor:
    """[(lmax_in+1)², (max_ell+1)², Q] float64: sqrt(2l3+1)·CG of every path, Q = Σ_p (2 l3_p + 1)."""
    q = sum(2 * l3 + 1 for _, _, l3 in paths)
    table = torch.zeros(num_components(lmax_in), num_components(max_ell), q, dtype=torch.float64)
    start = 0
    for l1, l2, l3 in paths:
        width = 2 * l3 + 1
        table[l_slice(l1), l_slice(l2), start : start + width] = math.sqrt(width) * wigner_3j(l1, l2, l3)
        start += width
    return table


class Interaction(torch.nn.Module):
    """One MACE interaction.

    forward(node_feats [n, C, (lmax_in+1)²], one_hot [n, n_elements], edge_sh [E, (max_ell+1)²],
    edge_radial [E, num_bessel], edge_index [2, E]) -> (A [n, C, (max_ell+1)²], sc [n, C, (lmax_sc+1)²]
    or None). All in node_feats' dtype.
    """

    def __init__(
        self,
        *,
        channels: int,
        lmax_in: int,
        max_ell: int,
        lmax_sc: int,
        num_elements: int,
        num_bessel: int,
        radial_mlp: Sequence[int],
        avg_num_neighbors: float,
        residual: bool,
    ):
        super().__init__()
        self.channels = channels
        self.lmax_in = lmax_in
        self.max_ell = max_ell
        self.residual = residual
        self.avg_num_neighbors = float(avg_num_neighbors)
        self.paths = conv_paths(lmax_in, max_ell, max_ell)
        self.register_buffer("coupling", conv_coupling_table(self.paths, lmax_in, max_ell), persistent=False)
        path_of_column = [p for p, (_, _, l3) in enumerate(self.paths) for _ in range(2 * l3 + 1)]
        self.register_buffer("path_of_column", torch.tensor(path_of_column), persistent=False)
        paths_per_l = [sum(1 for *_, l3 in self.paths if l3 == l) for l in range(max_ell + 1)]

        self.linear_up = EquivariantLinear([channels] * (lmax_in + 1), channels, lmax_in)
        self.radial_mlp = RadialMLP([num_bessel, *radial_mlp, len(self.paths) * channels])
        self.linear = EquivariantLinear([p * channels for p in paths_per_l], channels, max_ell)
        if residual:
            self.skip = ElementLinear(channels, channels, lmax_in, lmax_sc, num_elements)
        else:
            self.skip = ElementLinear(channels, channels, max_ell, max_ell, num_elements)

    def message(self, h, edge_sh, edge_radial, edge_index, policy: Optional[PrecisionPolicy] = None,
                backend: str = "reference", segments: Optional[EdgeSegments] = None):
        """Σ_j of per-edge tensor products: [n, C, Q] (one block of 2 l3 + 1 columns per path).

        Operands (h, radial weights) are rounded to the policy's tensor_product dtype; the products
        with Y and the CG table and the neighbour sum run in at least the accumulate dtype (what a
        fused kernel does in registers). Output in that math dtype.

        backend "triton" uses the fused kernel; `segments` (`edge_segments(edge_index, n)`) is made
        here when not given (the model makes it once per graph).
        """
        if backend != "reference":
            return self._fused_message(h, edge_sh, edge_radial, edge_index, policy, backend, segments)
        operand = policy.tensor_product if policy else h.dtype
        math_dtype = widest(operand, policy.accumulate) if policy else h.dtype
        table_dtype = policy.cg if policy else h.dtype
        sender, receiver = edge_index[0], edge_index[1]
        n, c = h.shape[0], h.shape[1]
        radial = self.radial_mlp(edge_radial, policy.radial_mlp if policy else None)
        weights = radial.to(operand).to(math_dtype).view(-1, len(self.paths), c)  # [E, P, C]
        # index_select, not h[sender]: its backward is an index_add, where advanced indexing's is a
        # sort-based index_put that took half the GPU time of a training step (profile, H100).
        h_send = torch.index_select(h.to(operand).to(math_dtype), 0, sender)  # [E, C, D_in]
        table = self.coupling.to(table_dtype).to(math_dtype)
        # Contract Y with the CG table first ([E, D_in, Q], channel-free), then one small matmul per
        # edge: never forms the [E, C, D_in, D_sh] outer product (16x fewer FLOPs, far less memory).
        y_table = torch.einsum("ej,ijq->eiq", edge_sh.to(math_dtype), table)
        tp = torch.bmm(h_send, y_table)  # [E, C, Q]
        tp = tp * torch.index_select(weights, 1, self.path_of_column).transpose(1, 2)
        out = torch.zeros(n, c, tp.shape[-1], dtype=tp.dtype, device=tp.device)
        return out.index_add_(0, receiver, tp)

    def _fused_message(self, h, edge_sh, edge_radial, edge_index, policy, backend, segments):
        operand = policy.tensor_product if policy else h.dtype
        math_dtype = widest(operand, policy.accumulate) if policy else h.dtype
        table_dtype = policy.cg if policy else h.dtype
        if segments is None:
            segments = edge_segments(edge_index, h.shape[0])
        radial = self.radial_mlp(edge_radial, policy.radial_mlp if policy else None)
        # Operands rounded to the operand dtype but not widened: the kernel widens each load.
        weights = radial.to(operand).view(-1, len(self.paths), h.shape[1])  # [E, P, C]
        y_table = torch.einsum("ej,ijq->eiq", edge_sh.to(math_dtype), self.coupling.to(table_dtype).to(math_dtype))
        return conv_tensor_product(h.to(operand), y_table, weights, self.path_of_column, segments,
                                   backend).to(math_dtype)

    def forward(self, node_feats, one_hot, edge_sh, edge_radial, edge_index, policy: Optional[PrecisionPolicy] = None,
                backend: str = "reference", segments: Optional[EdgeSegments] = None):
        """See the class docstring; `policy` None computes everything in node_feats' dtype."""
        linear_dtype = policy.linear if policy else None
        sc = self.skip(node_feats, one_hot, linear_dtype) if self.residual else None
        h = self.linear_up(node_feats, linear_dtype)
        summed = self.message(h, edge_sh, edge_radial, edge_index, policy, backend, segments)
        per_degree, start = [[] for _ in range(self.max_ell + 1)], 0
        for _, _, l3 in self.paths:
            per_degree[l3].append(summed[:, :, start : start + 2 * l3 + 1])
            start += 2 * l3 + 1
        a = self.linear([torch.cat(b, dim=1) for b in per_degree], linear_dtype) / self.avg_num_neighbors
        if not self.residual:
            a = self.skip(a, one_hot, linear_dtype)
        return a, sc
