"""Interaction block: the equivariant convolution that builds the atomic basis A (MACE Eq. 8–9).

    A_{i,c,l3 m3} = 1/avg_num_neighbors · Linear( Σ_{j∈N(i)} Σ_paths R_{ij,c,path}
                      · sqrt(2 l3 + 1) Σ_{m1 m2} C^{l3 m3}_{l1 m1, l2 m2} h̃_{j,c,l1 m1} Y_{l2 m2}(r̂_ij) )

with h̃ = linear_up(h), R the radial MLP of the edge length, C the real Clebsch–Gordan table and the
sum over paths (l1, l2, l3) with natural parity ('uvu' tensor product: channel-wise, one weight per
edge, channel and path). Paths are ordered as mace-torch orders them (by l3, then l1, l2), so radial
MLP columns map one to one.

The neighbour sum is the `ConvTensorProduct` block, which owns its implementation: "reference"
forms per-edge products ([E, C, Q]) in PyTorch; "triton" computes the sum with
`lpmace.kernels.convolution` (one lane per channel, CG non-zeros unrolled, nothing [E, C, Q] in
memory, derivatives by the same kernels). One walk over the built model chooses it for every block at once.

Two flavours, as in mace-torch:
- residual (RealAgnosticResidualInteractionBlock): also returns the element-dependent skip
  connection sc = ElementLinear(h), added after the product block;
- plain (RealAgnosticInteractionBlock): no skip; the element-dependent linear acts on the message.
Each with either normalisation of the neighbour sum: 1/avg_num_neighbors, or 1/(1 + ρ_i) with ρ_i a
learned count of neighbours (`density=True`: mace-torch's RealAgnosticDensity[Residual]InteractionBlock,
lpmace.nn.density).

Edge irreps: the convolution may run on other features than the hidden ones (mace-torch's
`edge_irreps`, as MH-0/MH-1 use them): linear_up maps h (C × 0..lmax_in) to C_e × 0..lmax_edge
(degrees above lmax_in get no weights, so they are zero, as in e3nn), the tensor product runs on
those, and the linear after it maps the C_e-channel paths back to C channels.
"""

from __future__ import annotations

from typing import Optional, Sequence

import torch

from lpmace.kernels.convolution import conv_tensor_product
from lpmace.nn.constants import ExactConstants
from lpmace.nn.density import edge_density, node_density, normalised
from lpmace.nn.edges import Edges
from lpmace.nn.linear import ElementLinear, EquivariantLinear
from lpmace.nn.radial import RadialMLP
from lpmace.o3.clebsch_gordan import conv_coupling_table, conv_paths, path_of_column
from lpmace.precision import BlockDtypes, PrecisionPolicy


class ConvTensorProduct(ExactConstants):
    """The neighbour sum of per-edge tensor products (the 'uvu' convolution of MACE Eq. 8):

        M[i, c, q] = Σ_{j∈N(i)} W[ij, p(q), c] Σ_{a, b} h[j, c, a] Y_b(r̂_ij) C[a, b, q]

    forward(h [n, C, (lmax_in+1)²], weights [E, P·C] from the radial MLP, edges, dtypes) -> M [n, C, Q]
    in dtypes.math (one block of 2 l3 + 1 columns per path). Operands (h, weights) are rounded to
    dtypes.operand; the products with Y and the CG table (held in dtypes.table) and the neighbour sum
    run in dtypes.math (what a fused kernel does in registers).

    `implementation` ("reference" or "triton") is a run-time choice with no parameters behind it.
    """

    IMPLEMENTATIONS = ("reference", "triton")

    def __init__(self, lmax_in: int, max_ell: int):
        super().__init__()
        self.implementation = "reference"
        self.lmax_in, self.max_ell = lmax_in, max_ell
        self.paths = conv_paths(lmax_in, max_ell, max_ell)
        self.register_constant("coupling", conv_coupling_table(self.paths, lmax_in, max_ell))
        self.register_buffer("path_of_column", torch.tensor(path_of_column(self.paths)), persistent=False)

    def forward(self, h: torch.Tensor, weights: torch.Tensor, edges: Edges, dtypes: BlockDtypes,
                out: Optional[torch.dtype] = None) -> torch.Tensor:
        """The message [n, C, Q], summed in dtypes.math and returned in `out` (default: dtypes.math): a
        caller that rounds it next (to its linear's dtype) passes that dtype, the same numbers in fewer bytes."""
        math_dtype = dtypes.math
        out = math_dtype if out is None else out
        weights = weights.to(dtypes.operand).view(-1, len(self.paths), h.shape[1])  # [E, P, C]
        if self.implementation == "triton":  # rounded operands, widened by the kernel at each load; CG inside
            return conv_tensor_product(h.to(dtypes.operand), edges.sh.to(math_dtype), weights, edges.segments,
                                       self.lmax_in, self.max_ell, "triton", acc=math_dtype, out=out)
        # Contract Y with the CG table first ([E, D_in, Q], channel-free): never forms the
        # [E, C, D_in, D_sh] outer product (16x fewer FLOPs, far less memory).
        table = self.coupling.to(dtypes.table).to(math_dtype)
        y_table = torch.einsum("ej,ijq->eiq", edges.sh.to(math_dtype), table)
        sender, receiver = edges.index[0], edges.index[1]
        # index_select, not h[sender]: its backward is an index_add, where advanced indexing's is a
        # sort-based index_put that took half the GPU time of a training step (profile, H100).
        h_send = torch.index_select(h.to(dtypes.operand).to(math_dtype), 0, sender)  # [E, C, D_in]
        tp = torch.bmm(h_send, y_table)  # [E, C, Q]
        tp = tp * torch.index_select(weights.to(math_dtype), 1, self.path_of_column).transpose(1, 2)
        summed = torch.zeros(h.shape[0], h.shape[1], tp.shape[-1], dtype=tp.dtype, device=tp.device)
        return summed.index_add_(0, receiver, tp).to(out)


def by_degree(summed: torch.Tensor, paths, max_ell: int) -> list:
    """The conv's output [n, C, Q] as one [n, paths_l · C, 2 l + 1] block per output degree l (the
    paths of degree l stacked on the channel axis), what the following equivariant linear takes."""
    blocks, start = [[] for _ in range(max_ell + 1)], 0
    for _, _, l3 in paths:
        blocks[l3].append(summed[:, :, start : start + 2 * l3 + 1])
        start += 2 * l3 + 1
    return [torch.cat(b, dim=1) for b in blocks]


class Interaction(torch.nn.Module):
    """One MACE interaction.

    forward(node_feats [n, C, (lmax_in+1)²], one_hot [n, n_elements], edges (`Edges`), policy) ->
    (A [n, C, (max_ell+1)²] in the policy's linear dtype, sc [n, C, (lmax_sc+1)²] or None).
    edge_channels, lmax_edge: the irreps of the convolution's input (default: C, lmax_in);
    density: normalise by 1 + ρ_i (lpmace.nn.density) instead of avg_num_neighbors.
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
        edge_channels: Optional[int] = None,
        lmax_edge: Optional[int] = None,
        density: bool = False,
    ):
        super().__init__()
        self.channels = channels
        self.lmax_in = lmax_in
        self.max_ell = max_ell
        self.residual = residual
        self.avg_num_neighbors = float(avg_num_neighbors)
        self.edge_channels = channels if edge_channels is None else int(edge_channels)
        self.lmax_edge = lmax_in if lmax_edge is None else int(lmax_edge)
        self.conv = ConvTensorProduct(self.lmax_edge, max_ell)
        self.paths = self.conv.paths
        paths_per_l = [sum(1 for *_, l3 in self.paths if l3 == l) for l in range(max_ell + 1)]

        self.linear_up = EquivariantLinear([channels] * (lmax_in + 1), self.edge_channels,
                                           min(lmax_in, self.lmax_edge))
        self.radial_mlp = RadialMLP([num_bessel, *radial_mlp, len(self.paths) * self.edge_channels])
        self.linear = EquivariantLinear([p * self.edge_channels for p in paths_per_l], channels, max_ell)
        self.density_mlp = RadialMLP([num_bessel, 1]) if density else None
        if residual:
            self.skip = ElementLinear(channels, channels, lmax_in, lmax_sc, num_elements)
        else:
            self.skip = ElementLinear(channels, channels, max_ell, max_ell, num_elements)

    def forward(self, node_feats: torch.Tensor, one_hot: torch.Tensor, edges: Edges, policy: PrecisionPolicy):
        linear_dtype = policy.linear
        sc = self.skip(node_feats, one_hot, linear_dtype) if self.residual else None
        h = self.linear_up(node_feats, linear_dtype)
        if self.lmax_edge > self.lmax_in:  # edge degrees the hidden features lack: zero, as in e3nn
            h = torch.nn.functional.pad(h, (0, (self.lmax_edge + 1) ** 2 - h.shape[-1]))
        weights = self.radial_mlp(edges.radial, policy.radial_mlp)
        if edges.cutoff is not None:
            weights = weights * edges.cutoff.to(weights.dtype)
        summed = self.conv(h, weights, edges, policy.block("tensor_product"), out=linear_dtype)
        a = self.linear(by_degree(summed, self.paths, self.max_ell), linear_dtype)
        if self.density_mlp is None:
            a = a / self.avg_num_neighbors
        else:
            f = self.density_mlp(edges.radial, policy.density)
            rho = node_density(edge_density(f, edges.cutoff), edges.index[1], a.shape[0])
            a = normalised(a, 1.0 + rho)
        if not self.residual:
            a = self.skip(a, one_hot, linear_dtype)
        return a, sc
