"""Spherical harmonics and Clebsch–Gordan tables against e3nn, the basis mace-torch computes in."""

from __future__ import annotations

import pytest
import torch
from e3nn import o3

from lpmace.o3.clebsch_gordan import coupling_allowed, wigner_3j
from lpmace.o3.spherical_harmonics import SphericalHarmonics

LMAX = 6


def random_vectors(n: int = 64, dtype=torch.float64) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    v = torch.randn(n, 3, generator=g, dtype=torch.float64)
    v = v * (0.5 + 3.0 * torch.rand(n, 1, generator=g, dtype=torch.float64))  # not unit length
    v[:3] = torch.eye(3, dtype=torch.float64)  # the axes, where recursions often break
    return v.to(dtype)


def test_spherical_harmonics_match_e3nn_up_to_l6():
    vectors = random_vectors()
    ours = SphericalHarmonics(LMAX)(vectors)
    ref = o3.spherical_harmonics(list(range(LMAX + 1)), vectors, normalize=True, normalization="component")
    assert ours.shape == ((len(vectors), (LMAX + 1) ** 2)) and ours.dtype == torch.float64
    torch.testing.assert_close(ours, ref, rtol=0.0, atol=1e-12)


@pytest.mark.parametrize("lmax", [0, 1, 2, 3])
def test_spherical_harmonics_of_every_lmax_are_a_prefix(lmax):
    vectors = random_vectors(8)
    full = SphericalHarmonics(LMAX)(vectors)
    torch.testing.assert_close(SphericalHarmonics(lmax)(vectors), full[:, : (lmax + 1) ** 2])


def test_spherical_harmonics_run_in_input_dtype():
    sh = SphericalHarmonics(3)
    single = sh(random_vectors(dtype=torch.float32))
    assert single.dtype == torch.float32
    torch.testing.assert_close(single.double(), sh(random_vectors()), rtol=0.0, atol=1e-5)


def test_wigner_3j_is_float64_and_equals_e3nn():
    for l1, l2, l3 in [(0, 0, 0), (1, 1, 0), (1, 1, 2), (1, 2, 3), (2, 2, 2), (3, 3, 4), (3, 2, 1)]:
        c = wigner_3j(l1, l2, l3)
        assert c.dtype == torch.float64, (l1, l2, l3, c.dtype)
        assert c.shape == (2 * l1 + 1, 2 * l2 + 1, 2 * l3 + 1)
        torch.testing.assert_close(c, o3.wigner_3j(l1, l2, l3, dtype=torch.float64), rtol=0.0, atol=1e-15)
        assert float(c.norm()) == pytest.approx(1.0, abs=1e-14)


def test_wigner_3j_is_a_fresh_copy():
    c = wigner_3j(1, 1, 2)
    c.zero_()
    assert float(wigner_3j(1, 1, 2).norm()) == pytest.approx(1.0, abs=1e-14)


def wigner_d(l: int, rotation: torch.Tensor) -> torch.Tensor:
    """[2l+1, 2l+1] float64 D with Y_l(R r) = D Y_l(r), natural parity included for det R = -1.

    Fitted from e3nn's float64 spherical harmonics: e3nn's own D_from_matrix builds its generators
    in the default dtype (float32), which limits it to ~1e-7.
    """
    points = random_vectors(4 * (2 * l + 1))
    y = o3.spherical_harmonics(l, points, normalize=True, normalization="component")
    y_rotated = o3.spherical_harmonics(l, points @ rotation.T, normalize=True, normalization="component")
    return torch.linalg.lstsq(y, y_rotated).solution.T


def random_orthogonal(seed: int, proper: bool) -> torch.Tensor:
    q, r = torch.linalg.qr(torch.randn(3, 3, generator=torch.Generator().manual_seed(seed), dtype=torch.float64))
    q = q * torch.sign(torch.diagonal(r))
    return q * torch.sign(torch.det(q)) * (1.0 if proper else -1.0)


@pytest.mark.parametrize("proper", [True, False], ids=["rotation", "improper"])
def test_wigner_3j_is_equivariant(proper):
    rotation = random_orthogonal(1, proper)
    for l1, l2, l3 in [(1, 1, 2), (1, 2, 3), (2, 3, 3)]:
        d1, d2, d3 = (wigner_d(l, rotation) for l in (l1, l2, l3))
        c = wigner_3j(l1, l2, l3)
        rotated = torch.einsum("ai,bj,ijk->abk", d1, d2, c)
        # invariance of C under D1 ⊗ D2 ⊗ D3, i.e. (D1 ⊗ D2) C = C D3 on the third index
        torch.testing.assert_close(rotated, torch.einsum("abc,ck->abk", c, d3), rtol=0.0, atol=1e-12)


def test_coupling_allowed_is_triangle_and_natural_parity():
    allowed = {(l1, l2, l3) for l1 in range(4) for l2 in range(4) for l3 in range(7) if coupling_allowed(l1, l2, l3)}
    expected = {
        (l1, l2, l3)
        for l1 in range(4)
        for l2 in range(4)
        for l3 in range(7)
        if o3.Irrep(l3, (-1) ** l3) in o3.Irrep(l1, (-1) ** l1) * o3.Irrep(l2, (-1) ** l2)
    }
    assert allowed == expected
