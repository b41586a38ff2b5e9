"""The non-linear residual interaction (mace-torch's RealAgnosticResidualNonLinearInteractionBlock,
used by MH-0/MH-1): element-aware edge weights, a density-normalised message, a residual and a gate.

    e_ij  = [ R(r_ij) , s(z_j) , t(z_i) ]                       radial basis + sender/receiver embeddings
    W_ij  = MLP_w(e_ij)         ρ_i = Σ_j tanh(MLP_ρ(e_ij)²)    (MLPs: Linear → LayerNorm → SiLU, biases)
    h̃     = linear_up(h)                                        (the edge irreps C_e × 0..lmax_edge)
    M_i   = linear_1( Σ_j W_ij ⊗ h̃_j ⊗ Y(r̂_ij) ) / (β ρ_i + α) + linear_res(h̃_i)
    A_i   = linear_2( Gate(M_i) )                               sc_i = Linear(h_i) (shared over elements)

linear_1 and linear_res map onto the gate's input: (1 + G)·C scalars (C activated by the normalised
SiLU, then one block of C sigmoid gates per gated degree l = 1..G, in that order) and C channels of
each degree l ≥ 1, each multiplied by its gate. Unlike MACE's other blocks, the edge weights depend
on the elements of both atoms, and the edge MLPs are plain torch layers (biases, LayerNorm, unscaled
SiLU). ρ and the denominator β ρ + α run in the policy's `density` dtype (lpmace.nn.density).
"""

from __future__ import annotations

from typing import Optional, Sequence

import torch

from lpmace.nn.activation import SIGMOID_NORMALIZATION, SILU_NORMALIZATION
from lpmace.nn.density import edge_density, node_density, normalised
from lpmace.nn.edges import Edges
from lpmace.nn.interaction import ConvTensorProduct, by_degree
from lpmace.nn.linear import DegreeLinear, EquivariantLinear
from lpmace.precision import PrecisionPolicy, scaled_weight


class LayerNormMLP(torch.nn.Module):
    """x [E, sizes[0]] -> [E, sizes[-1]]: (x W + b → LayerNorm (learned scale, offset) → SiLU) per
    hidden layer, then x W + b. Weights [in, out]; computes in `dtype` (default: the input's)."""

    EPS = 1e-5  # torch.nn.LayerNorm's default, which mace-torch uses

    def __init__(self, sizes: Sequence[int]):
        super().__init__()
        pairs = list(zip(sizes[:-1], sizes[1:]))
        self.weights = torch.nn.ParameterList([torch.nn.Parameter(torch.randn(a, b) / a**0.5) for a, b in pairs])
        self.biases = torch.nn.ParameterList([torch.nn.Parameter(torch.zeros(b)) for _, b in pairs])
        self.norm_scales = torch.nn.ParameterList([torch.nn.Parameter(torch.ones(b)) for _, b in pairs[:-1]])
        self.norm_offsets = torch.nn.ParameterList([torch.nn.Parameter(torch.zeros(b)) for _, b in pairs[:-1]])

    def forward(self, x: torch.Tensor, dtype: Optional[torch.dtype] = None) -> torch.Tensor:
        dtype = dtype or x.dtype
        x = x.to(dtype)
        for i, (w, b) in enumerate(zip(self.weights, self.biases)):
            x = x @ w.to(dtype) + b.to(dtype)
            if i < len(self.norm_scales):
                x = torch.nn.functional.layer_norm(x, x.shape[-1:], self.norm_scales[i].to(dtype),
                                                   self.norm_offsets[i].to(dtype), self.EPS)
                x = torch.nn.functional.silu(x)
        return x


def gate(scalars: torch.Tensor, gated: Sequence[torch.Tensor]) -> torch.Tensor:
    """scalars [n, (1 + G)·C, 1], gated [[n, C, 2l+1] for l = 1..G] -> [n, C, (G+1)²]: the first C
    scalars through the normalised SiLU, each degree l times the normalised sigmoid of gate block l."""
    c = scalars.shape[1] // (1 + len(gated))
    out = [torch.nn.functional.silu(scalars[:, :c]) * SILU_NORMALIZATION]
    for l, x in enumerate(gated, start=1):
        out.append(x * (torch.sigmoid(scalars[:, l * c : (l + 1) * c]) * SIGMOID_NORMALIZATION))
    return torch.cat(out, dim=-1)


class NonLinearInteraction(torch.nn.Module):
    """forward(node_feats [n, C, (lmax_in+1)²], one_hot [n, S], edges, policy) ->
    (A [n, C, (max_ell+1)²] in the policy's linear dtype, sc [n, C, (lmax_sc+1)²])."""

    residual = True

    def __init__(self, *, channels: int, lmax_in: int, max_ell: int, lmax_sc: int, num_elements: int,
                 num_bessel: int, radial_mlp: Sequence[int], edge_channels: Optional[int] = None,
                 lmax_edge: Optional[int] = None, density_hidden: int = 64):
        super().__init__()
        self.channels, self.lmax_in, self.max_ell, self.lmax_sc = channels, lmax_in, max_ell, lmax_sc
        self.edge_channels = channels if edge_channels is None else int(edge_channels)
        self.lmax_edge = lmax_in if lmax_edge is None else int(lmax_edge)
        self.conv = ConvTensorProduct(self.lmax_edge, max_ell)
        self.paths = self.conv.paths
        paths_per_l = [sum(1 for *_, l3 in self.paths if l3 == l) for l in range(max_ell + 1)]
        ce, gates = self.edge_channels, max_ell

        self.source_embedding = torch.nn.Parameter(torch.randn(num_elements, channels))
        self.target_embedding = torch.nn.Parameter(torch.randn(num_elements, channels))
        self.linear_up = DegreeLinear([channels] * (lmax_in + 1), [ce] * (self.lmax_edge + 1))
        edge_features = num_bessel + 2 * channels
        self.radial_mlp = LayerNormMLP([edge_features, *radial_mlp, len(self.paths) * ce])
        self.density_mlp = LayerNormMLP([edge_features, density_hidden, 1])
        self.alpha = torch.nn.Parameter(torch.tensor(20.0))
        self.beta = torch.nn.Parameter(torch.tensor(0.0))
        gate_in = [(1 + gates) * channels] + [channels] * max_ell
        self.linear_1 = DegreeLinear([p * ce for p in paths_per_l], gate_in)
        self.linear_res = DegreeLinear([ce] * (self.lmax_edge + 1), gate_in)
        self.linear_2 = EquivariantLinear([channels] * (max_ell + 1), channels, max_ell)
        self.skip = DegreeLinear([channels] * (lmax_in + 1), [channels] * (lmax_sc + 1))

    def forward(self, node_feats: torch.Tensor, one_hot: torch.Tensor, edges: Edges, policy: PrecisionPolicy):
        linear_dtype, n_el = policy.linear, one_hot.shape[1]
        sc = torch.cat(self.skip(node_feats, linear_dtype), dim=-1)
        h = torch.cat(self.linear_up(node_feats, linear_dtype), dim=-1)
        sender, receiver = edges.index[0], edges.index[1]
        one_hot = one_hot.to(linear_dtype)
        source = one_hot @ scaled_weight(self.source_embedding, n_el, linear_dtype)
        target = one_hot @ scaled_weight(self.target_embedding, n_el, linear_dtype)
        features = [edges.radial, torch.index_select(source, 0, sender), torch.index_select(target, 0, receiver)]
        weights = self.radial_mlp(torch.cat([f.to(policy.radial_mlp) for f in features], dim=-1))
        f = self.density_mlp(torch.cat([x.to(policy.density) for x in features], dim=-1))
        weight = edge_density(f, edges.cutoff)
        if edges.cutoff is not None:
            weights = weights * edges.cutoff.to(weights.dtype)
        rho = node_density(weight, receiver, h.shape[0])
        denominator = rho * self.beta.to(rho.dtype) + self.alpha.to(rho.dtype)

        summed = self.conv(h, weights, edges, policy.block("tensor_product"), out=linear_dtype)
        message = self.linear_1(by_degree(summed, self.paths, self.max_ell), linear_dtype)
        residual = self.linear_res(h, linear_dtype)
        message = [normalised(m, denominator) + r for m, r in zip(message, residual)]
        a = self.linear_2(gate(message[0], message[1:]), linear_dtype)
        return a, sc
