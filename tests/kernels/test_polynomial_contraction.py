"""The fused polynomial contraction (symmetric contraction kernel) against its plain reference:
forward, first and second derivatives, Triton (interpreter on the CPU) and the PyTorch implementation."""

from __future__ import annotations

import pytest
import torch

from lpmace.errors import InputError
from lpmace.kernels import resolve_backend
from lpmace.kernels.monomials import monomial_table
from lpmace.kernels.polynomial import (
    monomial_values,
    polynomial_contraction,
    polynomial_contraction_reference,
)


@pytest.fixture
def interpret(monkeypatch):
    """Run Triton kernels on the CPU through Triton's interpreter."""
    monkeypatch.setenv("TRITON_INTERPRET", "1")


def _inputs(n, channels, lmax, degree, elements, outputs, q, dtype=torch.float64, seed=0):
    gen = torch.Generator().manual_seed(seed)
    dim = (lmax + 1) ** 2
    table = monomial_table(dim, degree)
    rows = table.rows_up_to[degree]
    a = torch.randn(n, channels, dim, generator=gen, dtype=torch.float64).to(dtype).requires_grad_()
    species = torch.randint(0, elements, (n,), generator=gen)
    coefficients = torch.randn(elements, rows, outputs, q, channels, generator=gen, dtype=torch.float64)
    coefficients = coefficients.to(dtype).requires_grad_()
    g = torch.randn(n, channels, q, generator=gen, dtype=torch.float64).to(dtype).requires_grad_()
    return a, species, table.index[:rows], coefficients, g


def test_monomial_table_counts_and_padding():
    table = monomial_table(16, 3)
    assert table.rows_up_to == [1, 17, 153, 969]  # C(16 + d, d): monomials of degree <= d in 16 variables
    assert table.index.shape == (969, 3)
    assert (table.index[0] == 16).all()  # the constant
    degrees = (table.index < 16).sum(1)
    assert (degrees[:-1] <= degrees[1:]).all()  # sorted by degree


def test_derivative_table_is_the_derivative_of_the_polynomial():
    table = monomial_table(4, 3)
    gen = torch.Generator().manual_seed(1)
    coefficients = torch.randn(2, 35, 3, 5, generator=gen, dtype=torch.float64)  # [S, R, Q, C]
    x = torch.randn(6, 5, 4, generator=gen, dtype=torch.float64, requires_grad=True)  # [n, C, D]
    p = torch.einsum("ncr,rqc->nqc", monomial_values(x, table.index), coefficients[1])
    (grad,) = torch.autograd.grad(p.sum(), x)
    derivative = table.derivative_table(coefficients)  # [S, R', D, Q, C]
    assert derivative.shape == (2, 15, 4, 3, 5)
    by_table = torch.einsum("ncr,rjqc->ncj", monomial_values(x, table.index[:15]), derivative[1])
    torch.testing.assert_close(by_table, grad, rtol=1e-12, atol=1e-12)


SHAPES = [  # n, C, lmax, degree, elements, outputs, q
    (3, 2, 1, 3, 2, 4, 1),
    (2, 3, 1, 2, 3, 4, 2),
    (2, 2, 2, 1, 1, 9, 1),
    (2, 2, 0, 3, 2, 1, 1),
    (1, 1, 1, 3, 1, 4, 1),
    (21, 3, 1, 2, 3, 4, 2),  # several 8-node blocks per element in the Triton kernel
]


@pytest.mark.parametrize("impl", ["reference", "triton"])
@pytest.mark.parametrize("shape", SHAPES)
def test_forward_first_and_second_derivatives_match_the_reference(interpret, impl, shape):
    a, species, index, coefficients, g = _inputs(*shape)
    expected = polynomial_contraction_reference(a, species, index, coefficients, g)
    got = polynomial_contraction(a, species, index, coefficients, g, impl=impl)
    torch.testing.assert_close(got, expected, rtol=1e-12, atol=1e-12)
    weights = torch.randn_like(expected)
    first_expected = torch.autograd.grad((expected * weights).sum(), (a, coefficients, g), create_graph=True)
    first_got = torch.autograd.grad((got * weights).sum(), (a, coefficients, g), create_graph=True)
    for e, x in zip(first_expected, first_got):
        torch.testing.assert_close(x, e, rtol=1e-11, atol=1e-11)
    # the double backward of training: differentiate a function of dOut/dA again
    v = torch.randn_like(a)
    inputs = (a, coefficients, g)
    second_expected = torch.autograd.grad((first_expected[0] * v).sum(), inputs, allow_unused=True)
    second_got = torch.autograd.grad((first_got[0] * v).sum(), inputs, allow_unused=True)
    for e, x, t in zip(second_expected, second_got, inputs):
        e = torch.zeros_like(t) if e is None else e  # degree 1: dOut/dA does not depend on A
        x = torch.zeros_like(t) if x is None else x
        torch.testing.assert_close(x, e, rtol=1e-10, atol=1e-10)


def test_triton_blocks_of_same_element_nodes(interpret):
    """Nodes in element order or interleaved, an element with no nodes, counts not multiples of the
    kernel's 8-node blocks: every node gets its own element's table."""
    a, _, index, coefficients, g = _inputs(27, 2, 1, 2, 4, 4, 1)
    for species in (torch.tensor([0] * 10 + [2] * 17), torch.tensor([3, 0, 2] * 9), torch.full((27,), 1)):
        expected = polynomial_contraction_reference(a, species, index, coefficients, g)
        got = polynomial_contraction(a, species, index, coefficients, g, impl="triton")
        torch.testing.assert_close(got, expected, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("dtype, tolerance", [(torch.float32, 2e-6), (torch.float16, 2e-3)])
def test_triton_low_precision_operands_accumulate_in_float32(interpret, dtype, tolerance):
    a, species, index, coefficients, g = _inputs(3, 4, 1, 3, 2, 4, 1, dtype=dtype)
    got = polynomial_contraction(a, species, index, coefficients, g, impl="triton")
    assert got.dtype == torch.float32
    # the same rounded operands, summed in float64: only the float32 accumulation differs
    exact = polynomial_contraction_reference(a.double(), species, index, coefficients.double(), g.double())
    scale = exact.abs().max()
    assert (got.double() - exact).abs().max() <= tolerance * scale
    (grad,) = torch.autograd.grad(got.sum(), a)
    (grad_exact,) = torch.autograd.grad(exact.sum(), a)
    assert grad.dtype == dtype
    assert (grad.double() - grad_exact).abs().max() <= 10 * tolerance * grad_exact.abs().max()


@pytest.mark.parametrize("impl", ["reference", "triton"])
def test_no_nodes_and_constant_only_tables(interpret, impl):
    a, species, index, coefficients, g = _inputs(0, 2, 1, 2, 2, 4, 1)
    out = polynomial_contraction(a, species, index, coefficients, g, impl=impl)
    assert out.shape == (0, 2, 4)
    a, species, index, coefficients, g = _inputs(2, 2, 1, 0, 2, 4, 1)  # degree 0: the constant only
    out = polynomial_contraction(a, species, index, coefficients, g, impl=impl)
    manual = torch.einsum("ioqc,icq->ico", coefficients[species, 0], g)  # Σ_q T[s, const, o, q, c] g[q]
    torch.testing.assert_close(out, manual)
    (grad,) = torch.autograd.grad(out.sum(), a, allow_unused=True)
    assert grad is None or (grad == 0).all()


def test_opcheck():
    a, species, index, coefficients, g = _inputs(3, 2, 1, 2, 2, 4, 2)
    op = torch.ops.lpmace.polynomial_contraction.default
    torch.library.opcheck(op, (a, species, index, coefficients, g, "reference"))


def test_triton_on_the_cpu_without_the_interpreter_is_a_clear_error(monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    a, species, index, coefficients, g = _inputs(2, 2, 1, 2, 1, 4, 1)
    with pytest.raises(InputError, match="TRITON_INTERPRET=1"):
        polynomial_contraction(a, species, index, coefficients, g, impl="triton")


def test_backend_names():
    assert resolve_backend("auto", "cpu") == "reference"
    assert resolve_backend("reference", "cpu") == "reference"
    assert resolve_backend("triton", "cpu") == "triton"
    with pytest.raises(InputError, match="backend must be one of"):
        resolve_backend("cuda-graphs", "cpu")
