"""Linear maps between equivariant features: per-degree channel mixing, shared or per element.

Features are [n, channels, (L+1)**2] (see lpmace.o3.irreps). A linear equivariant map can only mix
channels within each degree l, so it is one [c_in, c_out] matrix per l. Normalisation follows
e3nn (which mace-torch uses): divide by sqrt(fan_in), weights initialised N(0, 1), no biases.
"""

from __future__ import annotations

from typing import List, Optional, Sequence

import torch

from lpmace.precision import scaled_weight

from lpmace.nn.element_weights import element_weight
from lpmace.o3.irreps import l_slice


def split_degrees(x: torch.Tensor, lmax: int) -> List[torch.Tensor]:
    """[n, C, (lmax+1)**2] -> [[n, C, 1], [n, C, 3], ...]."""
    return [x[:, :, l_slice(l)] for l in range(lmax + 1)]


class EquivariantLinear(torch.nn.Module):
    """y_l[n, d, m] = Σ_c x_l[n, c, m] W_l[c, d] / sqrt(c_in_l), for l = 0..lmax_out.

    `channels_in[l]` may differ per degree (the conv output stacks one block per tensor-product
    path). Input: list of per-degree tensors [n, c_in_l, 2l+1] or one [n, C, (L+1)**2] tensor.
    Output: [n, channels_out, (lmax_out+1)**2] in the input's dtype.
    """

    def __init__(self, channels_in: Sequence[int], channels_out: int, lmax_out: int):
        super().__init__()
        if len(channels_in) < lmax_out + 1:
            raise ValueError("input lacks degrees the output needs")
        self.lmax_out = lmax_out
        self.weights = torch.nn.ParameterList(
            [torch.nn.Parameter(torch.randn(channels_in[l], channels_out)) for l in range(lmax_out + 1)]
        )

    def forward(self, x, dtype: Optional[torch.dtype] = None) -> torch.Tensor:
        """Computes in `dtype` (default: the input's): inputs and weights are cast to it."""
        if isinstance(x, torch.Tensor):
            x = split_degrees(x, int(round(x.shape[-1] ** 0.5)) - 1)
        dtype = dtype or x[0].dtype
        out = []
        for l, w in enumerate(self.weights):
            w = scaled_weight(w, w.shape[0], dtype)
            out.append(torch.einsum("ncm,cd->ndm", x[l].to(dtype), w))
        return torch.cat(out, dim=-1)


class ElementLinear(torch.nn.Module):
    """Element-dependent linear map (mace-torch's skip connection, an e3nn tensor product with the
    one-hot species): y_l[n] = x_l[n]ᵀ W_l[z_n] / sqrt(c_in · n_elements).

    Degrees l <= min(lmax_in, lmax_out) have weights; higher output degrees are zero (no path).
    ``weights[l]`` is [n_elements, C_in, C_out], or its low-rank form (lpmace.nn.element_weights).
    Input x [n, C_in, (lmax_in+1)**2], one-hot species [n, n_elements] (same dtype as x).
    Output [n, C_out, (lmax_out+1)**2].
    """

    def __init__(self, channels_in: int, channels_out: int, lmax_in: int, lmax_out: int, num_elements: int):
        super().__init__()
        self.lmax_out = lmax_out
        self.weights = torch.nn.ParameterList(
            [
                torch.nn.Parameter(torch.randn(num_elements, channels_in, channels_out))
                for _ in range(min(lmax_in, lmax_out) + 1)
            ]
        )

    def forward(self, x: torch.Tensor, one_hot: torch.Tensor, dtype: Optional[torch.dtype] = None) -> torch.Tensor:
        """Computes in `dtype` (default: the input's)."""
        dtype = dtype or x.dtype
        x, one_hot = x.to(dtype), one_hot.to(dtype)
        n = x.shape[0]
        out = []
        for l, w in enumerate(self.weights):
            w = element_weight(w)
            z, c_in, c_out = w.shape
            xl = x[:, :, l_slice(l)]
            xz = (one_hot[:, :, None, None] * xl[:, None]).reshape(n, z * c_in, 2 * l + 1)
            w = scaled_weight(w.reshape(z * c_in, c_out), z * c_in, dtype)
            out.append(torch.einsum("nkm,kd->ndm", xz, w))
        missing = (self.lmax_out + 1) ** 2 - sum(o.shape[-1] for o in out)
        if missing:
            c_out = element_weight(self.weights[0]).shape[-1]
            out.append(x.new_zeros(n, c_out, missing))
        return torch.cat(out, dim=-1)


class DegreeLinear(torch.nn.Module):
    """An equivariant linear whose channel counts differ per degree (e3nn's Linear between any two
    irreps of natural parity): y_l = x_l W_l / sqrt(c_in_l), for the degrees l that both sides have.

    channels_in[l], channels_out[l]: channels of degree l (0 or a missing entry: the degree is absent).
    ``weights`` holds one [c_in_l, c_out_l] matrix per degree in `degrees` (those with both sides).
    forward(x: per-degree list [n, c_in_l, 2l+1] or one [n, C, (L+1)²] tensor) -> per-degree list
    [n, c_out_l, 2l+1] for every output degree, zeros where the input lacks the degree.
    """

    def __init__(self, channels_in: Sequence[int], channels_out: Sequence[int]):
        super().__init__()
        self.channels_out = [int(c) for c in channels_out]
        self.degrees = [l for l, c in enumerate(self.channels_out) if c and l < len(channels_in) and channels_in[l]]
        self.weights = torch.nn.ParameterList(
            [torch.nn.Parameter(torch.randn(channels_in[l], self.channels_out[l])) for l in self.degrees]
        )

    def forward(self, x, dtype: Optional[torch.dtype] = None) -> List[torch.Tensor]:
        """Computes in `dtype` (default: the input's)."""
        if isinstance(x, torch.Tensor):
            x = split_degrees(x, int(round(x.shape[-1] ** 0.5)) - 1)
        dtype = dtype or x[0].dtype
        out = [x[0].new_zeros(x[0].shape[0], c, 2 * l + 1, dtype=dtype) for l, c in enumerate(self.channels_out)]
        for l, w in zip(self.degrees, self.weights):
            out[l] = torch.einsum("ncm,cd->ndm", x[l].to(dtype), scaled_weight(w, w.shape[0], dtype))
        return out
