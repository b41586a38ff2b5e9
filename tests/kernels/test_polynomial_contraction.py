"""The fused polynomial contraction (symmetric contraction kernel) against the plain formula written
here (monomials enumerated here, not taken from the module): forward, first and second derivatives,
Triton (interpreter on the CPU, compiled on the GPU) and the PyTorch implementation."""

from __future__ import annotations

import itertools

import pytest
import torch
from tolerances import check_low_precision_kernel, unit_roundoff

from lpmace.errors import InputError
from lpmace.backends import resolve as resolve_backend
from lpmace.kernels.launch import element_grouping
from lpmace.kernels.monomials import monomial_table
from lpmace.kernels.polynomial import monomial_values, polynomial_contraction


@pytest.fixture
def interpret(monkeypatch):
    """Run Triton kernels on the CPU through Triton's interpreter."""
    monkeypatch.setenv("TRITON_INTERPRET", "1")


def _monomials(dim, degree):
    """Every product of at most `degree` of `dim` variables (multisets), by degree: the rows a table
    passed to the kernel describes."""
    return [m for d in range(degree + 1) for m in itertools.combinations_with_replacement(range(dim), d)]


def _plain(a, species, table, g):
    """out[i, c, o] = Σ_r Π_{j∈m_r} A[i, c, j] · Σ_q T[s_i, c, r, o, q] G[i, c, q], written directly,
    in a's dtype (plain PyTorch in that precision)."""
    elements, _, rows = table.shape[:3]
    degree = next(d for d in range(rows) if len(_monomials(a.shape[2], d)) >= rows)
    monomials = _monomials(a.shape[2], degree)[:rows]
    values = torch.stack([torch.ones_like(a[..., 0]) if not m else
                          torch.stack([a[..., j] for j in m]).prod(0) for m in monomials], dim=-1)  # [n, C, R]
    table, g = table.to(a.dtype), g.to(a.dtype)
    out = a.new_zeros(a.shape[0], a.shape[1], table.shape[3])
    for z in range(elements):
        nodes = (species == z).nonzero()[:, 0]
        term = torch.einsum("icr,croq,icq->ico", values[nodes], table[z], g[nodes])
        out = out.index_copy(0, nodes, term)
    return out


def _inputs(n, channels, lmax, degree, elements, outputs, q, dtype=torch.float64, seed=0, device="cpu"):
    gen = torch.Generator().manual_seed(seed)
    dim = (lmax + 1) ** 2
    table = monomial_table(dim, degree)
    rows = table.rows_up_to[degree]
    a = torch.randn(n, channels, dim, generator=gen, dtype=torch.float64).to(dtype).requires_grad_()
    species = torch.randint(0, elements, (n,), generator=gen)
    coefficients = torch.randn(elements, channels, rows, outputs, q, generator=gen, dtype=torch.float64)
    coefficients = coefficients.to(dtype).requires_grad_()
    g = torch.randn(n, channels, q, generator=gen, dtype=torch.float64).to(dtype).requires_grad_()
    if device != "cpu":
        a, coefficients, g = (x.detach().to(device).requires_grad_() for x in (a, coefficients, g))
    return a, species.to(device), table.index[:rows].to(device), coefficients, g


def test_monomial_table_rows_are_every_monomial_by_degree():
    """The kernel's index rows are the monomials `_plain` enumerates, in the same order (the contract
    that lets the tests below use their own enumeration)."""
    for dim, degree in ((1, 3), (4, 3), (9, 2), (16, 3)):
        index = monomial_table(dim, degree).index
        assert [tuple(j for j in row if j < dim) for row in index.tolist()] == _monomials(dim, degree)


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
    coefficients = torch.randn(2, 5, 35, 3, generator=gen, dtype=torch.float64)  # [S, C, R, Q]
    x = torch.randn(6, 5, 4, generator=gen, dtype=torch.float64, requires_grad=True)  # [n, C, D]
    p = torch.einsum("ncr,crq->nqc", monomial_values(x, table.index), coefficients[1])
    (grad,) = torch.autograd.grad(p.sum(), x)
    derivative = table.derivative_table(coefficients)  # [S, C, R', D, Q]
    assert derivative.shape == (2, 5, 15, 4, 3)
    by_table = torch.einsum("ncr,crjq->ncj", monomial_values(x, table.index[:15]), derivative[1])
    torch.testing.assert_close(by_table, grad, rtol=1e-12, atol=1e-12)


def test_derivative_table_gradient_is_its_transpose():
    """The gather's hand-written gradient (and that gradient's gradient) against the dense linear map
    read off the gather itself: <y, D(T)> = <D^T(y), T> for random T and y, to second order."""
    table = monomial_table(4, 3)
    gen = torch.Generator().manual_seed(2)
    coefficients = torch.randn(2, 3, 35, 2, generator=gen, dtype=torch.float64, requires_grad=True)
    derivative = table.derivative_table(coefficients)
    y = torch.randn(derivative.shape, generator=gen, dtype=torch.float64, requires_grad=True)
    (grad,) = torch.autograd.grad((derivative * y).sum(), coefficients, create_graph=True)
    # dense map: column r of D is D applied to the unit table e_r (every entry of D(e_r) is k or 0)
    dense = torch.stack([table.derivative_table(torch.eye(35, dtype=torch.float64)[r].view(1, 1, 35, 1)).reshape(-1)
                         for r in range(35)], dim=1)  # [15·4, 35]
    expected = torch.einsum("gr,scgp->scrp", dense, y.reshape(2, 3, 60, 2))
    torch.testing.assert_close(grad, expected, rtol=1e-12, atol=1e-12)
    assert set(dense.unique().tolist()) == {0.0, 1.0, 2.0, 3.0}  # multiplicities of degree ≤ 3 monomials
    v = torch.randn(grad.shape, generator=gen, dtype=torch.float64)
    (second,) = torch.autograd.grad((grad * v).sum(), y)
    torch.testing.assert_close(second.reshape(2, 3, 60, 2), torch.einsum("gr,scrp->scgp", dense, v))


SHAPES = [  # n, C, lmax, degree, elements, outputs, q
    (3, 2, 1, 3, 2, 4, 1),
    (2, 3, 1, 2, 3, 4, 2),
    (2, 2, 2, 1, 1, 9, 1),
    (2, 2, 0, 3, 2, 1, 1),
    (1, 1, 1, 3, 1, 4, 1),
    (21, 3, 1, 2, 3, 4, 2),  # several 8-node blocks per element in the Triton kernel
    (10, 64, 0, 3, 10, 1, 1),  # 10 elements, two 32-channel blocks
    (40, 2, 1, 3, 89, 4, 1),  # a foundation model's 89 elements, most of them absent from the graph
]


@pytest.mark.parametrize("impl", ["reference", "triton"])
@pytest.mark.parametrize("shape", SHAPES)
def test_forward_first_and_second_derivatives_match_the_reference(interpret, impl, shape):
    a, species, index, coefficients, g = _inputs(*shape)
    expected = _plain(a, species, coefficients, g)
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


@pytest.mark.parametrize("shape", [SHAPES[0], SHAPES[-1], (70, 2, 1, 3, 2, 4, 1)])
@pytest.mark.parametrize("prefix", [False, True])
def test_one_element_grouping_for_every_launch_gives_the_same_numbers(interpret, monkeypatch, shape, prefix):
    """A model sorts its nodes by element once (`launch.element_grouping`) for all its contractions: with
    that grouping passed in, the forward, first and second derivatives (∂A, ∂T by the table-gradient
    kernel, ∂G) are bit-equal to those of launches that sort for themselves, and no launch sorts."""
    from lpmace.kernels import launch, polynomial_dot

    monkeypatch.setattr(polynomial_dot, "ON_CPU", prefix)
    a, species, index, coefficients, g = _inputs(*shape)
    if prefix:
        a, coefficients, g = (x.detach().float().requires_grad_() for x in (a, coefficients, g))
    grouping = launch.element_grouping(species, coefficients.shape[0])
    sorts = []
    real = launch.element_grouping
    monkeypatch.setattr(launch, "element_grouping", lambda *args: sorts.append(1) or real(*args))
    inputs = (a, coefficients, g)
    results = []
    for given in (None, grouping):
        sorts.clear()
        out = polynomial_contraction(a, species, index, coefficients, g, impl="triton", grouping=given)
        first = torch.autograd.grad((out * out.detach()).sum(), inputs, create_graph=True)
        second = torch.autograd.grad((first[0] * a.detach()).sum(), inputs, allow_unused=True)
        results.append((out, *first, *second))
        assert bool(sorts) == (given is None), len(sorts)
    for x, y in zip(*results):
        assert (x is None and y is None) or torch.equal(x, y)


def test_triton_blocks_of_same_element_nodes(interpret):
    """Nodes in element order or interleaved, an element with no nodes, counts not multiples of the
    kernel's 8-node blocks: every node gets its own element's table."""
    a, _, index, coefficients, g = _inputs(27, 2, 1, 2, 4, 4, 1)
    for species in (torch.tensor([0] * 10 + [2] * 17), torch.tensor([3, 0, 2] * 9), torch.full((27,), 1)):
        expected = _plain(a, species, coefficients, g)
        got = polynomial_contraction(a, species, index, coefficients, g, impl="triton")
        torch.testing.assert_close(got, expected, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("block_n,max_c,warps", [(8, 16, 2), (8, 32, 4), (4, 8, 1), (16, 16, 2)])
def test_row_kernel_other_tiles_give_the_same_numbers(interpret, monkeypatch, block_n, max_c, warps):
    """The row kernel's tile settings a benchmark sweeps (nodes and at most this many channels per program,
    warps, which the interpreter ignores): channels and nodes past one tile, an element's nodes not a multiple
    of the block, q > 1."""
    from lpmace.kernels import polynomial

    for name, value in (("ROWS_BLOCK_N", block_n), ("ROWS_MAX_BLOCK_C", max_c), ("ROWS_NUM_WARPS", warps)):
        monkeypatch.setattr(polynomial, name, value)
    a, species, index, coefficients, g = _inputs(37, 20, 1, 2, 3, 4, 2)
    with torch.no_grad():
        got = polynomial_contraction(a, species, index, coefficients, g, impl="triton")
    torch.testing.assert_close(got, _plain(a, species, coefficients, g), rtol=1e-12, atol=1e-12)


def _check_rounded_operands(n, channels, lmax, degree, elements, outputs, q, dtype, device):
    a, species, index, coefficients, g = _inputs(n, channels, lmax, degree, elements, outputs, q, device=device)
    per_element = int(species.bincount().max())
    # longest chain of roundings in one output: the sum over rows and q in the kernel, over one
    # element's nodes in ∂T (PyTorch), and the derivative table's few terms; twice for the second derivative
    roundings = 2 * (index.shape[0] + per_element + 2 * degree + 2 * q + 6)
    check_low_precision_kernel(lambda a, t, g: polynomial_contraction(a, species, index, t, g, impl="triton"),
                               lambda a, t, g: _plain(a, species, t, g), (a, coefficients, g),
                               (dtype, dtype, dtype), dtype, roundings, ("A", "T", "G"))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_triton_rounded_operands_sum_in_float32_forward_and_two_derivatives(interpret, dtype):
    """16-bit or fp32 operands, fp32 sums, 64 channels (two blocks): within float32
    rounding of float64 sums of the same operands, and 16-bit at most twice plain PyTorch's error."""
    _check_rounded_operands(6, 64, 1, 2, 2, 4, 1, dtype, "cpu")  # 10 elements: SHAPES (fp64), the GPU test


def test_prefix_kernel_bf16_operands_sum_in_float32_forward_and_two_derivatives(interpret, monkeypatch):
    """The same check through the prefix kernel (bf16 features: exact in bf16, the table as two bf16
    terms; emulated in the interpreter)."""
    from lpmace.kernels import polynomial_dot

    monkeypatch.setattr(polynomial_dot, "ON_CPU", True)
    calls = []
    real = polynomial_dot.contraction_by_prefix
    monkeypatch.setattr(polynomial_dot, "contraction_by_prefix", lambda *args, **kw: calls.append(1) or real(*args, **kw))
    _check_rounded_operands(6, 64, 1, 2, 2, 4, 1, torch.bfloat16, "cpu")
    assert len(calls) >= 3  # the forward and the derivative calls went to the prefix kernel


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_triton_rounded_operands_at_real_size_on_the_gpu(dtype):
    """The compiled kernel at a medium model's size: L = 3 features (16 components), correlation 3
    (969 monomials), 128 channels, 10 elements."""
    _check_rounded_operands(512, 128, 3, 3, 10, 4, 1, dtype, "cuda")


@pytest.mark.parametrize("impl", ["reference", "triton"])
def test_no_nodes_and_constant_only_tables(interpret, impl):
    a, species, index, coefficients, g = _inputs(0, 2, 1, 2, 2, 4, 1)
    out = polynomial_contraction(a, species, index, coefficients, g, impl=impl)
    assert out.shape == (0, 2, 4)
    a, species, index, coefficients, g = _inputs(2, 2, 1, 0, 2, 4, 1)  # degree 0: the constant only
    out = polynomial_contraction(a, species, index, coefficients, g, impl=impl)
    manual = torch.einsum("icoq,icq->ico", coefficients[species][:, :, 0], g)  # Σ_q T[s, c, const, o, q] g[q]
    torch.testing.assert_close(out, manual)
    (grad,) = torch.autograd.grad(out.sum(), a, allow_unused=True)
    assert grad is None or (grad == 0).all()


def test_opcheck():
    a, species, index, coefficients, g = _inputs(3, 2, 1, 2, 2, 4, 2)
    op = torch.ops.lpmace.polynomial_contraction.default
    empty = (index.new_zeros(0),) * 2  # derivative entries made by the backward
    none = species.new_zeros(0)  # no element grouping: the kernels sort the nodes themselves
    torch.library.opcheck(op, (a, species, index, coefficients, g, "reference", torch.float64, *empty, none))
    entries = monomial_table(4, 2).derivative_tensors()  # passed in, as a model's buffers
    grouping = element_grouping(species, coefficients.shape[0])
    torch.library.opcheck(op, (a, species, index, coefficients, g, "reference", torch.float64, *entries, grouping))


@pytest.mark.parametrize("active", [1, 2, 3])
def test_derivative_entries_passed_in_give_the_derivatives_made_inside(active):
    """The model passes the table's derivative entries as buffers (a traced graph then holds no
    constants): first and second derivatives equal those of the entries made by the backward, for
    every whole-degree prefix of the table (progressive correlation order)."""
    a, species, _, coefficients, g = _inputs(4, 3, 1, 3, 2, 4, 1)
    table = monomial_table(4, 3)
    rows = table.rows_up_to[active]
    index, coefficients = table.index[:rows], coefficients[:, :, :rows].detach().requires_grad_()
    results = []
    gather, scatter = table.derivative_tensors()
    for entries in (None, (gather, scatter), (gather * torch.tensor([[1], [2]]), scatter * torch.tensor([[[1]], [[2]]]))):
        out = polynomial_contraction(a, species, index, coefficients, g, derivative=entries)
        (d_a,) = torch.autograd.grad((out ** 2).sum(), a, create_graph=True)
        second = torch.autograd.grad((d_a ** 2).sum(), [a, coefficients, g], allow_unused=True)
        results.append([d_a, *second])
    assert results[0][0].abs().max() > 0
    assert not torch.equal(results[2][1], results[1][1])  # the entries passed in are the ones used
    for x, y in zip(*results[:2]):
        assert (x is None) == (y is None)
        if x is not None:
            assert torch.equal(x, y)


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


# ---- the prefix-product kernel (lpmace.kernels.polynomial_dot: fp32 sums) ---------------------------

@pytest.mark.parametrize("dim,degree", [(1, 3), (4, 3), (9, 2), (16, 3), (16, 1)])
def test_prefix_rows_cover_every_monomial_once(dim, degree):
    """Row 0 (the constant) and the map's rows together are every monomial of the table exactly once,
    and the row at (prefix p, variable j) is the monomial p·j (enumerated here)."""
    from lpmace.kernels import polynomial_dot

    monomials = _monomials(dim, degree)
    pad = max(16, 1 << (dim - 1).bit_length())
    rows = polynomial_dot._row_map(dim, degree, pad, torch.device("cpu")).view(-1, pad)
    prefixes = [m for m in monomials if len(m) < degree]
    assert rows.shape[0] == len(prefixes)
    used = [0]
    for p, line in zip(prefixes, rows.tolist()):
        for j, r in enumerate(line):
            if r >= 0:
                assert monomials[r] == tuple(sorted(p + (j,)))
                used.append(r)
    assert sorted(used) == list(range(len(monomials)))


def _fp32_inputs(shape):
    """_inputs rounded to float32 (leaves), and the float64 copies of the same values."""
    a, species, index, coefficients, g = _inputs(*shape)
    low = [x.detach().float().requires_grad_() for x in (a, coefficients, g)]
    wide = [x.detach().double().requires_grad_() for x in low]
    return species, index, low, wide


@pytest.mark.parametrize("shape", [s for s in SHAPES if s[1] <= 3] + [(70, 2, 1, 3, 2, 4, 1), (9, 2, 3, 2, 2, 1, 3)])
def test_prefix_kernel_fp32_forward_and_two_derivatives(interpret, monkeypatch, shape):  # one program per channel
    """fp32 features and table: the kernel (it takes every call, counted) against the formula in float64
    on the same rounded numbers, forward, first and second derivatives, to float32 rounding."""
    from lpmace.kernels import polynomial_dot

    monkeypatch.setattr(polynomial_dot, "ON_CPU", True)
    calls = []
    real = polynomial_dot.contraction_by_prefix
    monkeypatch.setattr(polynomial_dot, "contraction_by_prefix", lambda *args, **kw: calls.append(1) or real(*args, **kw))
    species, index, low, wide = _fp32_inputs(shape)
    got = polynomial_contraction(low[0], species, index, low[1], low[2], impl="triton")
    expected = _plain(wide[0], species, wide[1], wide[2])
    assert got.dtype == torch.float32 and calls
    weights = torch.randn(expected.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    first_got = torch.autograd.grad((got * weights.float()).sum(), low, create_graph=True)
    first_expected = torch.autograd.grad((expected * weights).sum(), wide, create_graph=True)
    v = torch.randn(wide[0].shape, dtype=torch.float64, generator=torch.Generator().manual_seed(4))
    second_got = torch.autograd.grad((first_got[0] * v.float()).sum(), low, allow_unused=True)
    second_expected = torch.autograd.grad((first_expected[0] * v).sum(), wide, allow_unused=True)
    pairs = [(got, expected), *zip(first_got, first_expected), *zip(second_got, second_expected)]
    for x, e in pairs:
        if e is None or e.norm() < 1e-12:  # degree ≤ 1: no second derivative (fp64 leaves ~1e-17)
            assert x is None or x.norm() < 1e-6
            continue
        assert ((x.double() - e).norm() / e.norm()).item() < 2e-6
    assert len(calls) >= 3  # forward, ∂A and the second derivative's calls all went to this kernel


SPLIT_SHAPES = [(70, 3, 1, 3, 2, 4, 1), (9, 2, 1, 2, 2, 16, 4), (9, 2, 1, 1, 2, 16, 64), (5, 2, 3, 3, 3, 1, 1)]


@pytest.mark.parametrize("dot,dtype", [(1, torch.bfloat16), (2, torch.float16)])  # bf16 emulated here
@pytest.mark.parametrize("shape", SPLIT_SHAPES)
def test_prefix_kernel_16bit_products_within_their_rounding_bound(interpret, dot, dtype, shape):
    """16-bit products: the fp32 features X and each table entry T as two 16-bit terms (residual ≤
    unit² relative), three products X_hi·T_hi + X_hi·T_lo + X_lo·T_hi (the dropped X_lo·T_lo ≤ unit²),
    sums in float32. Every output is within that bound of the float64 formula, scaled by the sum of
    absolute terms (the same formula on |A|, |T|, |G|); unit: the 16-bit type's unit roundoff."""
    from lpmace.kernels import polynomial_dot

    unit = unit_roundoff(dtype)
    species, index, low, wide = _fp32_inputs(shape)
    got = polynomial_dot.contraction_by_prefix(*(x.detach() for x in low[:1]), species, index,
                                               *(x.detach() for x in low[1:]), dot=dot).double()
    a, t, g = (x.detach() for x in wide)
    exact, scale = _plain(a, species, t, g), _plain(a.abs(), species, t.abs(), g.abs())
    assert ((got - exact).abs() <= _split_bound(unit, index, t) * scale + 1e-30).all()
    assert not torch.equal(got, polynomial_dot.contraction_by_prefix(low[0].detach(), species, index, low[1].detach(),
                                                                     low[2].detach(), dot=0).double())


@pytest.mark.parametrize("shape", SPLIT_SHAPES)
def test_prefix_kernel_bf16_features_within_their_rounding_bound(interpret, shape):
    """bf16 features (as bf16-mixed hands them; several prefixes and, for the degree-1 table, one): X exact,
    the table as two bf16 terms, two products; within the same bound of the formula on the same numbers."""
    from lpmace.kernels import polynomial_dot

    species, index, low, wide = _fp32_inputs(shape)
    a16 = low[0].detach().to(torch.bfloat16)
    got = polynomial_dot.contraction_by_prefix(a16, species, index, low[1].detach(), low[2].detach()).double()
    a, t, g = a16.double(), wide[1].detach(), wide[2].detach()
    exact, scale = _plain(a, species, t, g), _plain(a.abs(), species, t.abs(), g.abs())
    assert ((got - exact).abs() <= _split_bound(unit_roundoff(torch.bfloat16), index, t) * scale + 1e-30).all()


def _split_bound(unit, index, table):
    """Relative (to Σ|terms|) error bound of the split products and the float32 sums of one output."""
    return 3 * unit ** 2 * (1 + 4 * unit) + (index.shape[0] + index.shape[1] + table.shape[-1] + 2) * 2.0 ** -24


@pytest.mark.gpu
@pytest.mark.parametrize("dot,dtype", [(1, torch.bfloat16), (2, torch.float16)])
def test_prefix_kernel_16bit_products_within_their_rounding_bound_on_the_gpu(dot, dtype):
    """The same bound with the GPU's tensor-core products, at a medium model's size (16 components,
    969 monomials, 4 outputs), at its derivative's (153 rows, 16 outputs, q = 4) and its second
    derivative's (17 rows: one prefix); fp32 features split, and (bf16) bf16 features as the model hands them."""
    from lpmace.kernels import polynomial_dot

    unit = unit_roundoff(dtype)
    for shape in ((700, 16, 3, 3, 4, 4, 1), (700, 16, 3, 2, 4, 16, 4), (700, 16, 3, 1, 4, 16, 64)):
        species, index, low, wide = _fp32_inputs(shape)
        a, t, g = (x.detach() for x in wide)
        got = polynomial_dot.contraction_by_prefix(*(x.detach().cuda() for x in low[:1]), species.cuda(), index.cuda(),
                                                   *(x.detach().cuda() for x in low[1:]), dot=dot).double().cpu()
        exact, scale = _plain(a, species, t, g), _plain(a.abs(), species, t.abs(), g.abs())
        assert ((got - exact).abs() <= _split_bound(unit, index, t) * scale + 1e-30).all()
        if dtype == torch.bfloat16:
            a16 = low[0].detach().to(torch.bfloat16)
            got = polynomial_dot.contraction_by_prefix(a16.cuda(), species.cuda(), index.cuda(), low[1].detach().cuda(),
                                                       low[2].detach().cuda()).double().cpu()
            exact, scale = _plain(a16.double(), species, t, g), _plain(a16.double().abs(), species, t.abs(), g.abs())
            assert ((got - exact).abs() <= _split_bound(unit, index, t) * scale + 1e-30).all()


def test_prefix_kernel_takes_the_short_prefix_loops_with_float32_sums(monkeypatch):
    """Which calls go to the prefix kernel: fp32 sums, tables of ≤ 32 prefixes (a correlation-3
    model's derivative calls), not its 969-row forward table (153 prefixes) nor float64 sums; on
    CPU tensors (the interpreter) only when asked."""
    from lpmace.kernels import polynomial_dot

    a = torch.zeros(2, 3, 16)
    assert not polynomial_dot.supports(a, torch.zeros(1, 3, 153, 4, 1), torch.float32)
    monkeypatch.setattr(polynomial_dot, "ON_CPU", True)
    for rows, acc, expected in ((969, torch.float32, False), (153, torch.float32, True), (17, torch.float32, True),
                                (1, torch.float32, True), (153, torch.float64, False), (100, torch.float32, False)):
        assert polynomial_dot.supports(a, torch.zeros(1, 3, rows, 4, 1), acc) == expected, (rows, acc)
    assert polynomial_dot.supports(torch.zeros(2, 3, 4), torch.zeros(1, 3, 35, 4, 1), torch.float32)  # 15 prefixes


def test_derivative_gradient_keeps_an_inf_in_its_own_row():
    """The transposed gather pads with entry 0 at weight 0: an inf in entry 0 reaches only the source
    rows that really have it as a target, not every padded row (no NaN from inf · 0)."""
    table = monomial_table(4, 2)
    coefficients = torch.zeros(1, 1, 15, 1, dtype=torch.float64, requires_grad=True)
    derivative = table.derivative_table(coefficients)  # [1, 1, 5, 4, 1]
    upstream = torch.zeros_like(derivative)
    upstream[0, 0, 0, 0, 0] = float("inf")  # entry (constant, variable 0): its source is monomial x0 (row 1)
    (grad,) = torch.autograd.grad(derivative, coefficients, upstream)
    assert torch.isinf(grad[0, 0, 1, 0]) and not torch.isnan(grad).any()
    assert (grad[0, 0, 2:, 0] == 0).all() and grad[0, 0, 0, 0] == 0
