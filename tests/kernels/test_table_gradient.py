"""∂L/∂T of the polynomial contraction, Σ_{i: s_i = z} m_r(A[i, c]) h[i, c, p]: the Triton kernel
(interpreter on the CPU, compiled on the GPU) and the reference against the sum written here node by
node, monomials enumerated here; when each is taken (autograd recording or not)."""

from __future__ import annotations

import itertools

import pytest
import torch
from tolerances import assert_rounding_error

from lpmace.kernels import launch
from lpmace.kernels import table_gradient as module
from lpmace.kernels.monomials import monomial_table
from lpmace.kernels.table_gradient import table_gradient


@pytest.fixture
def interpret(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "1")


def _plain(a, species, degree, rows, h, elements):
    """The sum over nodes, one node at a time, in a's dtype; monomials by degree, as multisets."""
    monomials = [m for d in range(degree + 1) for m in itertools.combinations_with_replacement(range(a.shape[2]), d)]
    out = a.new_zeros(elements, a.shape[1], rows, h.shape[2])
    for i in range(a.shape[0]):
        values = torch.stack([torch.ones_like(a[i, :, 0]) if not m else torch.stack([a[i, :, j] for j in m]).prod(0)
                              for m in monomials[:rows]], dim=1)  # [C, R]
        out[species[i]] += values[:, :, None] * h[i, :, None, :]
    return out


def _inputs(n, channels, dim, degree, elements, p, dtype=torch.float64, device="cpu", seed=0, species=None):
    gen = torch.Generator().manual_seed(seed)
    table = monomial_table(dim, degree)
    rows = table.rows_up_to[degree]
    a = torch.randn(n, channels, dim, generator=gen, dtype=torch.float64).to(dtype)
    h = torch.randn(n, channels, p, generator=gen, dtype=torch.float64)
    if species is None:
        species = torch.randint(0, elements, (n,), generator=gen)
    return a.to(device), species.to(device), table.index[:rows].to(device), h.to(device), rows


SHAPES = [  # n, C, D, degree, elements, P
    (5, 3, 4, 3, 2, 4),  # the energy's call: layer of 128x0e+128x1o outputs (4), L = 1 features
    (7, 2, 4, 2, 3, 64),  # a derivative call's P = D·O·Q, four blocks of p
    (9, 40, 4, 3, 2, 1),  # channels past one block of 32, P = 1 (a last layer's scalar output)
    (40, 2, 4, 3, 89, 4),  # a foundation model's 89 elements, most absent from the batch
    (6, 1, 1, 3, 1, 2),  # one variable: rows 1, a, a², a³
    (3, 2, 16, 1, 2, 3),  # degree 1 over 16 components (the second derivative's call)
]


@pytest.mark.parametrize("shape", SHAPES)
def test_kernel_and_reference_equal_the_sum_over_nodes(interpret, shape):
    a, species, index, h, rows = _inputs(*shape)
    expected = _plain(a, species, shape[3], rows, h, shape[4])
    with torch.no_grad():
        got = table_gradient(a, species, index, h, shape[4], impl="triton")
    reference = table_gradient(a, species, index, h, shape[4], impl="reference")
    torch.testing.assert_close(got, expected, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(reference, expected, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("sums,max_c,warps", [(512, 8, 1), (2048, 2, 2), (100, 4, 4)])
def test_other_tiles_give_the_same_sums(interpret, monkeypatch, sums, max_c, warps):
    """The tile settings a benchmark sweeps (rows per program from SUMS, rounded down to a power of two;
    channels per program; warps): the same sums over nodes, rows and channels past one tile."""
    for name, value in (("SUMS", sums), ("MAX_BLOCK_C", max_c), ("NUM_WARPS", warps)):
        monkeypatch.setattr(module, name, value)
    for shape in (SHAPES[0], SHAPES[2], (7, 5, 4, 2, 3, 20)):
        a, species, index, h, rows = _inputs(*shape)
        with torch.no_grad():
            got = table_gradient(a, species, index, h, shape[4], impl="triton")
        torch.testing.assert_close(got, _plain(a, species, shape[3], rows, h, shape[4]), rtol=1e-12, atol=1e-12)


def test_elements_in_any_order_and_an_element_without_nodes(interpret):
    """Species interleaved, sorted, all one element, one node of an element: each element's rows sum its own nodes;
    an element with no node gets zeros."""
    for species in (torch.tensor([3, 0, 2] * 4), torch.tensor([0] * 5 + [2] * 7), torch.full((12,), 1),
                    torch.tensor([2] * 11 + [0])):
        a, species, index, h, rows = _inputs(12, 3, 4, 2, 4, 4, species=species)
        with torch.no_grad():
            got = table_gradient(a, species, index, h, 4, impl="triton")
        torch.testing.assert_close(got, _plain(a, species, 2, rows, h, 4), rtol=1e-12, atol=1e-12)
        for z in set(range(4)) - set(species.tolist()):
            assert (got[z] == 0).all()


@pytest.mark.parametrize("runs", [2, 3, 7])
def test_each_elements_nodes_cut_into_runs(interpret, monkeypatch, runs):
    """Few elements: their nodes in runs of programs, summed afterwards (runs with no node of an element
    add zeros); the same sums as the plain loop. 14 nodes of 3 elements (9, 1, 4), one program per element
    and run: `runs` runs asked through PROGRAMS, at most 14 // 3 = 4 (NODES = 1)."""
    launched = []
    made = module._kernel

    def spy(interpret):
        kernel = made(interpret)

        class Spy:
            def __getitem__(self, grid):
                return lambda *args, **kw: (launched.append((grid[2], kw["CHUNKS"])), kernel[grid](*args, **kw))
        return Spy()

    monkeypatch.setattr(module, "_kernel", spy)
    monkeypatch.setattr(module, "PROGRAMS", 3 * runs)
    monkeypatch.setattr(module, "NODES", 1)
    species = torch.tensor([0] * 9 + [2] * 4 + [1])
    a, species, index, h, rows = _inputs(14, 3, 4, 2, 3, 4, species=species)
    with torch.no_grad():
        got = table_gradient(a, species, index, h, 3, impl="triton")
    assert launched == [(3 * min(runs, 4), min(runs, 4))]
    torch.testing.assert_close(got, _plain(a, species, 2, rows, h, 3), rtol=1e-12, atol=1e-12)


def test_no_nodes_gives_zeros(interpret):
    a, species, index, h, rows = _inputs(0, 3, 4, 2, 3, 4)
    with torch.no_grad():
        got = table_gradient(a, species, index, h, 3, impl="triton")
    assert got.shape == (3, 3, rows, 4) and (got == 0).all()


def test_the_kernel_only_where_autograd_records_nothing(interpret, monkeypatch):
    """Under grad mode (a create_graph backward) the differentiable reference (its result has a grad_fn);
    with grad mode off the kernel."""
    calls = []
    monkeypatch.setattr(module, "_triton", lambda *args: calls.append(1) or module.table_gradient_reference(*args[:5]))
    a, species, index, h, rows = _inputs(5, 3, 4, 3, 2, 4)
    h.requires_grad_()
    recorded = table_gradient(a, species, index, h, 2, impl="triton")
    assert recorded.grad_fn is not None and not calls
    with torch.no_grad():
        table_gradient(a, species, index, h, 2, impl="triton")
    assert calls == [1]
    with torch.no_grad():
        table_gradient(a, species, index, h, 2, impl="reference")
    assert calls == [1]


def _rounded_check(n, channels, dim, degree, elements, p, dtype, device):
    """Kernel on `dtype` features (sums in float32) within float32 rounding of float64 sums of the same
    rounded operands: Σ over an element's nodes of a product of degree + 1 factors."""
    a, species, index, h, rows = _inputs(n, channels, dim, degree, elements, p, dtype, device)
    h = h.float()
    with torch.no_grad():
        got = table_gradient(a, species, index, h, elements, impl="triton")
    assert got.dtype == torch.float32
    exact = table_gradient(a.double(), species, index, h.double(), elements, impl="reference")
    scale = table_gradient(a.double().abs(), species, index, h.double().abs(), elements, impl="reference")
    roundings = int(species.bincount().max()) + degree + 2
    assert_rounding_error(got, exact, scale, roundings, dtype, f"∂T {dtype}")
    return got


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_rounded_features_sum_in_float32(interpret, dtype):
    _rounded_check(20, 40, 4, 3, 3, 4, dtype, "cpu")


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("degree,p", [(3, 4), (2, 64)])
@pytest.mark.parametrize("elements", [89, 4])
def test_at_real_size_on_the_gpu_and_the_same_every_run(monkeypatch, dtype, degree, p, elements):
    """W1 shapes: 864 nodes of 89 elements (MACE-MP-0 medium: one run per element) or 4 (medium: each
    element's nodes in runs), 128 channels, 16 components; the energy's call (969 rows, P = 4) and the
    derivative's (153 rows, P = 64). Two runs are bit-equal. The row-by-row kernel for every feature dtype
    (bf16 features go by prefix by default: test_table_gradient_dot holds those to their bound)."""
    monkeypatch.setattr(module, "BY_PREFIX", 0)
    first = _rounded_check(864, 128, 16, degree, elements, p, dtype, "cuda")
    a, species, index, h, _ = _inputs(864, 128, 16, degree, elements, p, dtype, "cuda")
    with torch.no_grad():
        again = table_gradient(a, species, index, h.float(), elements, impl="triton")
    assert torch.equal(first, again)


@pytest.mark.parametrize("n,elements", [(0, 3), (1, 1), (12, 4), (300, 89), (50, 2)])
def test_element_blocks_are_the_stable_order_of_the_species(n, elements):
    """`element_blocks` (its own sort, or the grouping a model formed once) gives the nodes in element
    order, ties by node (written here in Python), each element's first node and first block of 1, 8, 64."""
    species = torch.randint(0, elements, (n,), generator=torch.Generator().manual_seed(n))
    order = sorted(range(n), key=lambda i: (int(species[i]), i))
    counts = [int((species == z).sum()) for z in range(elements)]
    first = [sum(counts[:z]) for z in range(elements + 1)]
    grouping = launch.element_grouping(species, elements)
    assert grouping.tolist() == order + first
    for block in (1, 8, 64):
        blocks = [sum((c + block - 1) // block for c in counts[:z]) for z in range(elements + 1)]
        for given in (None, grouping):
            got = launch.element_blocks(species, elements, block, given)
            assert got[0].tolist() == order and got[1].tolist() == first and got[2].tolist() == blocks
            assert got[3] == (n + block - 1) // block + elements >= blocks[-1]  # the grid: an upper bound
    with pytest.raises(ValueError, match=f"{n + elements + 1} entries"):  # a grouping of another batch
        launch.element_blocks(species, elements, 8, launch.element_grouping(species, elements + 1))


def test_opcheck(interpret):
    """The operator's registration: schema, fake (shape and dtype) against the real result."""
    a, species, index, h, _ = _inputs(5, 3, 4, 2, 3, 4)
    for grouping in (species.new_zeros(0), launch.element_grouping(species, 3)):  # formed inside, or passed in
        torch.library.opcheck(torch.ops.lpmace.table_gradient.default, (a, species, index, h, 3, grouping),
                              test_utils=("test_schema", "test_faketensor"))
