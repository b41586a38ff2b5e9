"""The symmetric-contraction basis: equivariant, linearly independent, and complete.

Completeness is checked against the multiplicity of the irrep (L, (-1)^L) in Sym^ν(V),
V = ⊕_{l ≤ lmax_in} (l, (-1)^l), computed from O(3) characters (Weyl integration), which shares
nothing with the code under test.
"""

from __future__ import annotations

import math

import pytest
import torch
from e3nn import o3

from lpmace.o3.symmetric_basis import symmetric_basis, symmetric_tensor

CASES = [(lmax_in, nu, L) for lmax_in in (1, 2, 3) for nu in (1, 2, 3) for L in range(4)]


# --- independent dimension count -------------------------------------------------------------------


def _character(lmax_in: int, theta: float, parity: int, power: int) -> float:
    """χ_V(g^power) for g = (parity · rotation by θ): Σ_l (parity^l)^power Σ_m cos(m · power · θ)."""
    return sum(
        (parity**l) ** power * sum(math.cos(m * power * theta) for m in range(-l, l + 1)) for l in range(lmax_in + 1)
    )


def _symmetric_power_character(lmax_in: int, nu: int, theta: float, parity: int) -> float:
    """χ_{Sym^ν V}(g) by Newton's identity: ν h_ν = Σ_k p_k h_{ν-k}, p_k = χ_V(g^k)."""
    h = [1.0]
    for n in range(1, nu + 1):
        h.append(sum(_character(lmax_in, theta, parity, k) * h[n - k] for k in range(1, n + 1)) / n)
    return h[nu]


def equivariant_map_count(lmax_in: int, nu: int, L: int, points: int = 64) -> int:
    """dim Hom_O(3)(Sym^ν V, (L, (-1)^L)) = ½ Σ_± ∫_SO(3) χ_Sym(±R) χ_L(±R) dR.

    Class functions on SO(3) integrate as (1/2π) ∫_0^{2π} f(θ)(1 - cos θ) dθ; the integrand is a
    trigonometric polynomial, so the uniform rule with enough points is exact.
    """
    total = 0.0
    for parity in (1, -1):
        for i in range(points):
            theta = 2 * math.pi * i / points
            chi_out = (parity**L) * sum(math.cos(m * theta) for m in range(-L, L + 1))
            total += _symmetric_power_character(lmax_in, nu, theta, parity) * chi_out * (1 - math.cos(theta))
    value = total / points / 2
    assert abs(value - round(value)) < 1e-9, value
    return round(value)


def test_character_count_matches_hand_counts():
    # Sym²(0e + 1o) → 0e: s·s and v·v.  Sym²(1o) would give v·v only; (1o)³ → 0e is v·(v×v) = 0 and odd.
    assert equivariant_map_count(1, 2, 0) == 2
    assert equivariant_map_count(1, 2, 1) == 1  # s v
    assert equivariant_map_count(1, 3, 0) == 2  # s³, s (v·v)
    assert equivariant_map_count(1, 3, 3) == 1  # (v v v)_3
    assert equivariant_map_count(1, 1, 2) == 0


@pytest.mark.parametrize("lmax_in, nu, L", CASES)
def test_basis_dimension_is_that_of_all_symmetric_equivariant_maps(lmax_in, nu, L):
    _, coeffs = symmetric_basis(lmax_in, nu, L)
    assert coeffs.shape[-1] == equivariant_map_count(lmax_in, nu, L)


def test_quadratic_invariants_of_scalar_and_vector():
    monos, coeffs = symmetric_basis(1, 2, 0)
    assert coeffs.shape[-1] == 2  # 0⊗0 and 1⊗1 singlets


# --- linear independence, normalisation, symmetry ----------------------------------------------------


# Cases with no equivariant map (e.g. Sym²(0e + 1o) → 3o) have an empty basis, checked by the
# dimension test above; there is nothing here to be independent or orthonormal.
@pytest.mark.parametrize("lmax_in, nu, L", [c for c in CASES if c[1] >= 2 and equivariant_map_count(*c) > 0])
def test_basis_functions_are_independent_and_orthonormal(lmax_in, nu, L):
    monos, coeffs = symmetric_basis(lmax_in, nu, L)
    n_basis = coeffs.shape[-1]
    assert n_basis > 0
    assert coeffs.dtype == torch.float64
    assert torch.linalg.matrix_rank(coeffs.reshape(-1, n_basis)) == n_basis
    dim = (lmax_in + 1) ** 2
    dense = symmetric_tensor(monos, coeffs, dim)  # [2L+1, dim, ..., dim, n_basis]
    flat = dense.reshape(-1, n_basis)
    gram = flat.T @ flat
    torch.testing.assert_close(gram, (2 * L + 1) * torch.eye(n_basis, dtype=torch.float64), rtol=0.0, atol=1e-10)
    swapped = dense.transpose(1, 2)  # symmetric in its input indices
    torch.testing.assert_close(swapped, dense, rtol=0.0, atol=1e-14)


# --- equivariance ----------------------------------------------------------------------------------


def wigner_d(lmax: int, rotation: torch.Tensor) -> torch.Tensor:
    """Block-diagonal D of 0e + 1o + ... + lmax (natural parity), [(lmax+1)², (lmax+1)²] float64.

    Fitted from e3nn's float64 spherical harmonics (Y(R r) = D Y(r)); e3nn's D_from_matrix builds its
    generators in float32 and is only good to ~1e-7.
    """
    g = torch.Generator().manual_seed(5)
    points = torch.randn(8 * (lmax + 1) ** 2, 3, generator=g, dtype=torch.float64)
    ls = list(range(lmax + 1))
    y = o3.spherical_harmonics(ls, points, normalize=True, normalization="component")
    y_rotated = o3.spherical_harmonics(ls, points @ rotation.T, normalize=True, normalization="component")
    d = torch.linalg.lstsq(y, y_rotated).solution.T
    mask = torch.block_diag(*[torch.ones(2 * l + 1, 2 * l + 1, dtype=torch.float64) for l in ls])
    assert float((d * (1 - mask)).abs().max()) < 1e-12  # the fit found the block structure
    return d * mask


def random_orthogonal(seed: int, proper: bool = True) -> torch.Tensor:
    q, r = torch.linalg.qr(torch.randn(3, 3, generator=torch.Generator().manual_seed(seed), dtype=torch.float64))
    q = q * torch.sign(torch.diagonal(r))
    return q * torch.sign(torch.det(q)) * (1.0 if proper else -1.0)


def test_wigner_d_fit_agrees_with_e3nn_at_its_precision():
    rotation = random_orthogonal(2)
    for r in (rotation, -rotation):
        e3nn_d = o3.Irreps("0e+1o+2e+3o").D_from_matrix(r)
        torch.testing.assert_close(wigner_d(3, r), e3nn_d, rtol=0.0, atol=1e-5)


def evaluate(monos: torch.Tensor, coeffs: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
    """B[batch, M, k] = Σ_mono coeffs[mono, M, k] Π_j a[batch, monos[mono, j]]."""
    products = a[:, monos].prod(dim=-1)  # [batch, n_mono]
    return torch.einsum("bn,nmk->bmk", products, coeffs)


@pytest.mark.parametrize("proper", [True, False], ids=["rotation", "improper"])
@pytest.mark.parametrize("lmax_in, nu, L", [(1, 2, 0), (2, 2, 2), (3, 2, 1), (2, 3, 1), (3, 3, 2), (3, 3, 3)])
def test_basis_is_equivariant(lmax_in, nu, L, proper):
    seed = lmax_in * 100 + nu * 10 + L
    rotation = random_orthogonal(seed, proper)
    d_in = wigner_d(lmax_in, rotation)
    d_out = wigner_d(L, rotation)[L * L :, L * L :]
    monos, coeffs = symmetric_basis(lmax_in, nu, L)
    assert coeffs.shape[-1] > 0
    a = torch.randn(5, (lmax_in + 1) ** 2, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    b = evaluate(monos, coeffs, a)
    b_of_rotated = evaluate(monos, coeffs, a @ d_in.T)
    assert float(b.abs().max()) > 1e-3
    torch.testing.assert_close(b_of_rotated, torch.einsum("mn,bnk->bmk", d_out, b), rtol=0.0, atol=1e-11)
