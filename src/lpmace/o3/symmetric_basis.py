"""Basis of the symmetric contraction (MACE paper Eq. 10–11) as polynomials.

The product basis B_{c,LM} of correlation order ν is an equivariant, symmetric ν-linear function of
one channel's atomic basis A_{c,i} (i runs over the (lmax+1)**2 components of l = 0..lmax). Every
such function is a homogeneous polynomial of degree ν in the A_{c,i}:

    B_{c,M} = Σ_k W_{z,k,c} Σ_mono P[mono, M, k] Π_{i ∈ mono} A_{c,i}

This module builds P: all coupling trees ((l1 ⊗ l2) → l12) ⊗ l3 → ... → L are formed directly in
monomial space (which symmetrises them), reduced to a linearly independent set at every level by
Gram–Schmidt in path order (deterministic: the same basis on every machine), and orthogonalised
under the Frobenius inner product of the corresponding symmetric tensors, each of norm sqrt(2L+1). The span is the complete
space of symmetric equivariant maps, so any mace-torch U tensor (reduced or not) maps into it
exactly (see lpmace.interop).
"""

from __future__ import annotations

import itertools
import math
from functools import lru_cache
from typing import Dict, List, Tuple

import torch

from lpmace.o3.clebsch_gordan import coupling_allowed, wigner_3j
from lpmace.o3.irreps import l_slice, num_components

_RANK_TOL = 1e-7


@lru_cache(maxsize=None)
def monomials(dim: int, degree: int) -> Tuple[Tuple[int, ...], ...]:
    """Sorted index tuples i1 <= ... <= i_degree over `dim` variables, in lexicographic order."""
    return tuple(itertools.combinations_with_replacement(range(dim), degree))


def multiplicity(mono: Tuple[int, ...]) -> int:
    """Number of index tuples that sort to `mono` (multinomial coefficient)."""
    counts = [mono.count(i) for i in set(mono)]
    return math.factorial(len(mono)) // math.prod(math.factorial(c) for c in counts)


@lru_cache(maxsize=None)
def _times_table(dim: int, degree: int) -> torch.Tensor:
    """[n_mono(degree), dim] index of mono * x_i among monomials of degree + 1."""
    index: Dict[Tuple[int, ...], int] = {m: k for k, m in enumerate(monomials(dim, degree + 1))}
    rows = [[index[tuple(sorted(m + (i,)))] for i in range(dim)] for m in monomials(dim, degree)]
    return torch.tensor(rows, dtype=torch.int64)


@lru_cache(maxsize=None)
def _inner_weights(dim: int, degree: int) -> torch.Tensor:
    """1 / multiplicity: turns polynomial coefficients into a symmetric tensor's Frobenius metric."""
    return torch.tensor([1.0 / multiplicity(m) for m in monomials(dim, degree)], dtype=torch.float64)


def _orthonormal_subset(vectors: List[torch.Tensor], metric: torch.Tensor) -> List[torch.Tensor]:
    """Gram–Schmidt in the given order, dropping vectors already in the span."""
    basis: List[torch.Tensor] = []
    for v in vectors:
        w = v.clone()
        norm0 = math.sqrt(float((w * w * metric).sum()))
        if norm0 == 0.0:
            continue
        for _ in range(2):  # twice is enough (Kahan–Parlett)
            for b in basis:
                w = w - float((w * b * metric).sum()) * b
        norm = math.sqrt(float((w * w * metric).sum()))
        if norm > _RANK_TOL * norm0:
            basis.append(w / norm)
    return basis


def _reduce(partials: List[Tuple[int, torch.Tensor]], dim: int, degree: int):
    metric = _inner_weights(dim, degree)[:, None]
    out = []
    for l in sorted({l for l, _ in partials}):
        for b in _orthonormal_subset([c for lc, c in partials if lc == l], metric):
            out.append((l, b))
    return out


@lru_cache(maxsize=None)
def symmetric_basis(lmax_in: int, degree: int, l_out: int) -> Tuple[torch.Tensor, torch.Tensor]:
    """Polynomial basis of symmetric equivariant maps Sym^degree(⊕_{l<=lmax_in} l) → l_out.

    Returns:
        monos: [n_mono, degree] int64 variable indices of the monomials used (zero rows dropped).
        coeffs: [n_mono, 2*l_out+1, n_basis] float64 P[mono, M, k]; the k-th basis function's
            symmetric tensor has Frobenius norm sqrt(2L+1). n_basis may be 0.
    """
    dim = num_components(lmax_in)
    partials = []
    for l in range(lmax_in + 1):
        c = torch.zeros(dim, 2 * l + 1, dtype=torch.float64)
        c[l_slice(l), :] = torch.eye(2 * l + 1, dtype=torch.float64)
        partials.append((l, c))
    partials = _reduce(partials, dim, 1)
    for k in range(1, degree):
        remaining = degree - k - 1
        times = _times_table(dim, k)
        n_next = len(monomials(dim, k + 1))
        nxt = []
        for la, coef in partials:
            for lb in range(lmax_in + 1):
                for lc in range(abs(la - lb), la + lb + 1):
                    if not coupling_allowed(la, lb, lc) or abs(lc - l_out) > remaining * lmax_in:
                        continue
                    if remaining == 0 and lc != l_out:
                        continue
                    t = torch.einsum("na,abc->nbc", coef, wigner_3j(la, lb, lc))
                    idx = times[:, l_slice(lb)].reshape(-1)
                    new = torch.zeros(n_next, 2 * lc + 1, dtype=torch.float64)
                    new.index_add_(0, idx, t.reshape(-1, 2 * lc + 1))
                    nxt.append((lc, new))
        partials = _reduce(nxt, dim, k + 1)
    chosen = [c for l, c in partials if l == l_out]
    all_monos = torch.tensor(monomials(dim, degree), dtype=torch.int64).reshape(-1, degree)
    if not chosen:
        return all_monos[:0], torch.zeros(0, 2 * l_out + 1, 0, dtype=torch.float64)
    # "component" scale, like e3nn/mace-torch's CG paths: norm sqrt(2L+1) per basis function.
    coeffs = torch.stack(chosen, dim=-1) * math.sqrt(2 * l_out + 1)
    used = coeffs.abs().amax(dim=(1, 2)) > 1e-13
    return all_monos[used], coeffs[used]


def symmetric_tensor(monos: torch.Tensor, coeffs: torch.Tensor, dim: int) -> torch.Tensor:
    """Dense symmetric tensor [2L+1, dim, ..., dim, n_basis] of a polynomial basis (for tests/interop)."""
    degree = monos.shape[1]
    n_m, n_b = coeffs.shape[1], coeffs.shape[2]
    out = torch.zeros((dim,) * degree + (n_m, n_b), dtype=coeffs.dtype)
    for row, mono in enumerate(monos.tolist()):
        perms = set(itertools.permutations(mono))
        for p in perms:
            out[p] = coeffs[row] / len(perms)
    return out.movedim(-2, 0)
