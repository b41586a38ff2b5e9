"""Real Clebsch-Gordan (Wigner 3j) tables in e3nn's real basis, as float64 constants.

e3nn is used only for these numbers (DESIGN.md): the spherical harmonics, the conv tensor product
and the symmetric-contraction basis are all expressed in the same real basis, so a model built here
computes exactly what mace-torch computes.
"""

from __future__ import annotations

from functools import lru_cache

import torch


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
