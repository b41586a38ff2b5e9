"""Irreps of MACE features: uniform channels over l = 0..L with natural parity (-1)^l.

lpmace stores equivariant features as one tensor ``[..., channels, (L + 1)**2]``: the last axis
concatenates the m-components of l = 0, 1, ..., L (the order of e3nn's "Cx0e + Cx1o + ...", with
the channel axis pulled out). mace-torch's flat layout ``[..., C*1 | C*3 | C*5 ...]`` differs only
by that transposition (see `to_flat_irreps` / `from_flat_irreps`).
"""

from __future__ import annotations

from typing import List

import torch


def num_components(lmax: int) -> int:
    """(lmax + 1)**2: number of m-components of l = 0..lmax."""
    return (lmax + 1) ** 2


def l_slice(l: int) -> slice:
    """Slice of the m-components of degree l in a ``(L + 1)**2`` axis."""
    return slice(l * l, (l + 1) * (l + 1))


def degree_of_component(lmax: int) -> List[int]:
    """l of each of the (lmax + 1)**2 components."""
    return [l for l in range(lmax + 1) for _ in range(2 * l + 1)]


def irreps_string(channels: int, lmax: int) -> str:
    """e3nn notation of ``channels`` copies of l = 0..lmax with natural parity."""
    return "+".join(f"{channels}x{l}{'e' if l % 2 == 0 else 'o'}" for l in range(lmax + 1))


def to_flat_irreps(x: torch.Tensor) -> torch.Tensor:
    """[n, C, (L+1)**2] -> e3nn/mace flat layout [n, sum_l C*(2l+1)] (channel-major within l)."""
    n, c, d = x.shape
    lmax = int(round(d**0.5)) - 1
    return torch.cat([x[:, :, l_slice(l)].reshape(n, -1) for l in range(lmax + 1)], dim=-1)


def from_flat_irreps(x: torch.Tensor, channels: int) -> torch.Tensor:
    """Inverse of `to_flat_irreps`."""
    n = x.shape[0]
    blocks, start, l = [], 0, 0
    while start < x.shape[1]:
        width = channels * (2 * l + 1)
        blocks.append(x[:, start : start + width].reshape(n, channels, 2 * l + 1))
        start += width
        l += 1
    return torch.cat(blocks, dim=-1)
