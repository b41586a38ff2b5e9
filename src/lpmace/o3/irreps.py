"""Irreps of MACE features: uniform channels over l = 0..L with natural parity (-1)^l.

lpmace stores equivariant features as one tensor ``[..., channels, (L + 1)**2]``: the last axis
concatenates the m-components of l = 0, 1, ..., L (the order of e3nn's "Cx0e + Cx1o + ...", with
the channel axis pulled out). mace-torch's flat layout ``[..., C*1 | C*3 | C*5 ...]`` differs only
by that transposition.
"""

from __future__ import annotations


def num_components(lmax: int) -> int:
    """(lmax + 1)**2: number of m-components of l = 0..lmax."""
    return (lmax + 1) ** 2


def l_slice(l: int) -> slice:
    """Slice of the m-components of degree l in a ``(L + 1)**2`` axis."""
    return slice(l * l, (l + 1) * (l + 1))

