"""Real Clebsch-Gordan (Wigner 3j) tables in e3nn's real basis, as float64 constants.

e3nn is used only for these numbers (DESIGN.md): the spherical harmonics, the conv tensor product
and the symmetric-contraction basis are all expressed in the same real basis, so a model built here
computes exactly what mace-torch computes.
"""

from __future__ import annotations

import math
from functools import lru_cache
from typing import List, Sequence, Tuple

import torch

from lpmace.o3.irreps import l_slice, num_components


@lru_cache(maxsize=None)
def _wigner_3j_cached(l1: int, l2: int, l3: int) -> torch.Tensor:
    from e3nn import o3

    return o3.wigner_3j(l1, l2, l3, dtype=torch.float64).contiguous()


def wigner_3j(l1: int, l2: int, l3: int) -> torch.Tensor:
    """[2l1+1, 2l2+1, 2l3+1] float64 coupling tensor with unit Frobenius norm (a fresh copy)."""
    return _wigner_3j_cached(l1, l2, l3).clone()


def coupling_allowed(l1: int, l2: int, l3: int) -> bool:
    """Triangle rule plus natural parity: (l1, (-1)^l1) x (l2, (-1)^l2) contains (l3, (-1)^l3)."""
    return abs(l1 - l2) <= l3 <= l1 + l2 and (l1 + l2 + l3) % 2 == 0


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


def path_of_column(paths: Sequence[Tuple[int, int, int]]) -> List[int]:
    """The path of each output column of `conv_coupling_table` (2 l3 + 1 columns per path)."""
    return [p for p, (_, _, l3) in enumerate(paths) for _ in range(2 * l3 + 1)]
