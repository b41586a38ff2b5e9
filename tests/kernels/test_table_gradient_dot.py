"""The table gradient as products by prefix (lpmace.kernels.table_gradient_dot) against the sum over nodes
written here (test_table_gradient's `_plain`, monomials enumerated there): every entry, in float32 and with
16-bit products within their rounding bound; when the operator takes it."""

from __future__ import annotations

import pytest
import torch
from test_table_gradient import SHAPES, _inputs, _plain

from lpmace.kernels import table_gradient as module
from lpmace.kernels import table_gradient_dot
from lpmace.kernels.launch import element_grouping
from lpmace.kernels.table_gradient import table_gradient


@pytest.fixture
def interpret(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "1")


def _bound(unit, n, nu):
    """Relative (to Σ|terms|) error bound of one entry: three split products (the dropped U_lo·X_lo and
    the residuals of U and X, each ≤ unit²), U = m_p·h rounded in float32, the float32 sums over nodes."""
    return 3 * unit ** 2 * (1 + 4 * unit) + (n + nu + 8) * 2.0 ** -24


def _check(shape, dot, unit, features=torch.float32, device="cpu"):
    a, species, index, h, rows = _inputs(*shape)
    low = a.to(features)
    got = table_gradient_dot.table_gradient_by_prefix(low.to(device), species.to(device), index.to(device),
                                                      h.float().to(device), shape[4], dot=dot).double().cpu()
    wide = low.double()  # the features as the kernel sees them; h as float32 numbers
    exact = _plain(wide, species, shape[3], rows, h.float().double(), shape[4])
    scale = _plain(wide.abs(), species, shape[3], rows, h.float().double().abs(), shape[4])
    assert got.shape == exact.shape
    assert ((got - exact).abs() <= _bound(unit, shape[0], index.shape[1]) * scale + 1e-30).all()
    return got


@pytest.mark.parametrize("shape", SHAPES + [(5, 2, 4, 0, 3, 4)])  # and a degree-0 table: the constant row only
def test_float32_products_equal_the_sum_over_nodes(interpret, monkeypatch, shape):
    real = torch.empty  # every entry must be written: unwritten ones would stay NaN

    def empty(*size, **kwargs):
        out = real(*size, **kwargs)
        return out.fill_(float("nan")) if out.is_floating_point() else out

    monkeypatch.setattr(torch, "empty", empty)
    _check(shape, 0, 0.0)


@pytest.mark.parametrize("shape", [SHAPES[0], SHAPES[1], SHAPES[3], SHAPES[5]])
def test_bf16_products_within_their_rounding_bound(interpret, shape):
    """fp32 features in the bf16 mode (emulated here): X and U split, three products; unit roundoff 2⁻⁸."""
    got = _check(shape, 1, 2.0 ** -8)
    a, species, index, h, _ = _inputs(*shape)
    plain32 = table_gradient_dot.table_gradient_by_prefix(a.float(), species, index, h.float(), shape[4], dot=0)
    assert not torch.equal(got.float(), plain32)  # the 16-bit products were taken


def test_bf16_features_within_their_rounding_bound(interpret):
    """bf16 features (as bf16-mixed hands them): X exact, U split; the bound of the split products."""
    for shape in (SHAPES[0], SHAPES[1]):
        _check(shape, None, 2.0 ** -8, features=torch.bfloat16)


def test_elements_without_nodes_get_zeros_and_chunks_past_one_step(interpret, monkeypatch):
    """An element's nodes in several steps of BLOCK_K (and not a multiple of it), prefixes in several
    programs, elements absent from the batch: every entry written, absent elements zero."""
    monkeypatch.setattr(table_gradient_dot, "BLOCK_K", 16)
    monkeypatch.setattr(table_gradient_dot, "ROWS", 16)
    species = torch.tensor([2] * 37 + [0] * 3)
    shape = (40, 2, 4, 3, 4, 4)
    a, _, index, h, rows = _inputs(*shape, species=species)
    got = table_gradient_dot.table_gradient_by_prefix(a.float(), species, index, h.float(), 4, dot=0)
    expected = _plain(a.float().double(), species, 3, rows, h.float().double(), 4)
    torch.testing.assert_close(got.double(), expected, rtol=1e-5, atol=1e-5)
    assert (got[1] == 0).all() and (got[3] == 0).all()


@pytest.mark.parametrize("by_prefix,taken", [(0, ()), (1, ("bf16",)), (2, ("bf16", "fp16", "fp32"))])
def test_operator_takes_it_when_asked(interpret, monkeypatch, by_prefix, taken):
    """BY_PREFIX 1 (the default) sends the operator's calls with bf16 features here, 2 also those with
    fp16 and float32 features (float32 products), 0 none; float64 sums stay with the row-by-row kernel;
    all equal the sum over nodes."""
    assert module.BY_PREFIX == 1
    monkeypatch.setattr(module, "BY_PREFIX", by_prefix)
    monkeypatch.setattr(table_gradient_dot, "ON_CPU", True)
    calls = []
    real = table_gradient_dot.table_gradient_by_prefix
    monkeypatch.setattr(table_gradient_dot, "table_gradient_by_prefix",
                        lambda a, *x, **k: calls.append(a.dtype) or real(a, *x, **k))
    shape = SHAPES[1]
    a, species, index, h, rows = _inputs(*shape)
    grouping = element_grouping(species, shape[4])
    low = a.to(torch.bfloat16)
    with torch.no_grad():
        got16 = table_gradient(low, species, index, h.float(), shape[4], impl="triton", grouping=grouping)
        half = table_gradient(a.half(), species, index, h.float(), shape[4], impl="triton", grouping=grouping)
        got32 = table_gradient(a.float(), species, index, h.float(), shape[4], impl="triton", grouping=grouping)
        got64 = table_gradient(a, species, index, h, shape[4], impl="triton")
    names = {torch.bfloat16: "bf16", torch.float16: "fp16", torch.float32: "fp32", torch.float64: "fp64"}
    assert tuple(names[d] for d in calls) == taken
    expected = _plain(a, species, shape[3], rows, h, shape[4])
    torch.testing.assert_close(got32.double(), expected, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(got64, expected, rtol=1e-12, atol=1e-12)
    expected16 = _plain(low.double(), species, shape[3], rows, h.float().double(), shape[4])
    torch.testing.assert_close(got16.double(), expected16, rtol=1e-4, atol=1e-4)
    expected_half = _plain(a.half().double(), species, shape[3], rows, h.float().double(), shape[4])
    torch.testing.assert_close(half.double(), expected_half, rtol=1e-5, atol=1e-5)


def test_fp16_products_refused(interpret):
    """Mode 2 (fp16 terms, the prefix kernel's test mode) is not taken here: one clear error."""
    a, species, index, h, _ = _inputs(4, 2, 4, 2, 2, 4)
    with pytest.raises(ValueError, match="operand mode 2"):
        table_gradient_dot.table_gradient_by_prefix(a.float(), species, index, h.float(), 2, dot=2)


def test_a_grouping_of_another_batch_refused(interpret):
    a, species, index, h, _ = _inputs(6, 2, 4, 2, 2, 4)
    with pytest.raises(ValueError, match="has 9 entries, not 5"):
        table_gradient_dot.table_gradient_by_prefix(a.float(), species, index, h.float(), 2,
                                                    grouping=element_grouping(species[:2], 2))


@pytest.mark.gpu
@pytest.mark.parametrize("dot,unit", [(0, 0.0), (1, 2.0 ** -8)])
def test_products_within_their_rounding_bound_on_the_gpu(dot, unit):
    """At a medium model's sizes (16 components): the energy's call (969 rows, 4 outputs) and the
    derivative's (153 rows, P = 64), on the GPU's tensor cores."""
    for shape in ((300, 8, 16, 3, 4, 4), (300, 8, 16, 2, 4, 64)):
        _check(shape, dot, unit, device="cuda")
        if dot == 1:
            _check(shape, None, unit, features=torch.bfloat16, device="cuda")
