"""The fused conv tensor product (MACE Eq. 8 neighbour sum) against a plain PyTorch formula written
here: forward, first, second and third derivatives, over real CG tables of L = 0, 1, 2, empty graphs,
single edges and nodes without edges; Triton through its interpreter on the CPU."""

from __future__ import annotations

import pytest
import torch
from tolerances import check_low_precision_kernel

from lpmace.errors import InputError
from lpmace.kernels.convolution import conv_edge, conv_node, conv_tensor_product, edge_segments
from lpmace.nn.interaction import conv_coupling_table, conv_paths
from lpmace.o3.spherical_harmonics import SphericalHarmonics


@pytest.fixture
def interpret(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "1")


def _problem(n, edges, channels, lmax_in, max_ell, dtype=torch.float64, seed=0, device="cpu"):
    """Sender features, CG·Y tables of real unit vectors, radial weights and the graph (on `device`)."""
    gen = torch.Generator().manual_seed(seed)
    paths = conv_paths(lmax_in, max_ell, max_ell)
    pcol = torch.tensor([p for p, (_, _, l3) in enumerate(paths) for _ in range(2 * l3 + 1)])
    src = torch.randint(0, max(n, 1), (edges,), generator=gen)
    dst = torch.randint(0, max(n, 1), (edges,), generator=gen)
    vectors = torch.randn(edges, 3, generator=gen, dtype=torch.float64)
    sh = SphericalHarmonics(max_ell)(vectors)
    table = torch.einsum("ej,ijq->eiq", sh, conv_coupling_table(paths, lmax_in, max_ell)).to(torch.float32 if dtype != torch.float64 else dtype)
    x = torch.randn(n, channels, (lmax_in + 1) ** 2, generator=gen, dtype=torch.float64).to(dtype)
    w = torch.randn(edges, len(paths), channels, generator=gen, dtype=torch.float64).to(dtype)
    x, table, w, pcol = (v.to(device) for v in (x, table, w, pcol))
    seg = edge_segments(torch.stack([src, dst]).to(device), n)
    return x.requires_grad_(), table.requires_grad_(), w.requires_grad_(), pcol, seg


def _plain(x, t, w, pcol, seg):
    """out[n, c, o] = Σ_{e: dst=n} W[e, p(o), c] Σ_i X[src, c, i] T[e, i, o], written directly, in
    x's dtype (plain PyTorch in that precision)."""
    t, w = t.to(x.dtype), w.to(x.dtype)
    per_edge = torch.einsum("eci,eio->eco", x[seg.src], t) * w[:, pcol, :].permute(0, 2, 1)
    out = torch.zeros(seg.dst_ptr.shape[0] - 1, x.shape[1], t.shape[2], dtype=x.dtype, device=x.device)
    return out.index_add(0, seg.dst, per_edge)


def _derivatives(fn, inputs, seed=1):
    """Output, first, second and third derivatives of random projections, each differentiable."""
    gen = torch.Generator().manual_seed(seed)
    out = fn(*inputs)
    found = [out]
    scalar = (out * torch.randn(out.shape, generator=gen, dtype=out.dtype)).sum()
    for _ in range(3):
        grads = torch.autograd.grad(scalar, inputs, create_graph=True, allow_unused=True)
        grads = [torch.zeros_like(x) if g is None else g for g, x in zip(grads, inputs)]
        found.extend(grads)
        scalar = sum((g * torch.randn(g.shape, generator=gen, dtype=g.dtype)).sum() for g in grads)
    return found


@pytest.mark.parametrize("impl", ["reference", "triton"])
@pytest.mark.parametrize("lmax_in, max_ell", [(0, 0), (0, 3), (1, 2), (2, 2)])
def test_forward_and_three_derivatives_match_the_plain_formula(interpret, impl, lmax_in, max_ell):
    x, t, w, pcol, seg = _problem(5, 11, 3, lmax_in, max_ell)
    fused = _derivatives(lambda x, t, w: conv_tensor_product(x, t, w, pcol, seg, impl), (x, t, w))
    plain = _derivatives(lambda x, t, w: _plain(x, t, w, pcol, seg), (x, t, w))
    for k, (a, b) in enumerate(zip(fused, plain)):
        assert a.shape == b.shape, k
        assert (a - b).abs().max() <= 1e-12 * max(b.abs().max().item(), 1.0), k


def test_edge_outputs_are_the_partial_derivatives(interpret):
    """conv_edge's ∂T and ∂W and conv_node(to_src) are the gradients of Σ G · (1) (checked by autograd)."""
    x, t, w, pcol, seg = _problem(4, 9, 5, 1, 2)
    g = torch.randn(4, 5, t.shape[2], dtype=torch.float64)
    grads = torch.autograd.grad((_plain(x, t, w, pcol, seg) * g).sum(), (x, t, w))
    d_t, d_w = conv_edge(g, x.detach(), t.detach(), w.detach(), pcol, seg, impl="triton")
    d_x = conv_node(g, t.detach(), w.detach(), pcol, seg, to_src=True, impl="triton")
    for mine, theirs in zip((d_x, d_t, d_w), grads):
        assert torch.allclose(mine, theirs, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("impl", ["reference", "triton"])
@pytest.mark.parametrize("n, edges", [(0, 0), (3, 0), (2, 1), (4, 1)])
def test_empty_graphs_single_edges_and_isolated_nodes(interpret, impl, n, edges):
    x, t, w, pcol, seg = _problem(n, edges, 3, 1, 1)
    out = conv_tensor_product(x, t, w, pcol, seg, impl)
    assert out.shape == (n, 3, t.shape[2])
    assert torch.allclose(out, _plain(x, t, w, pcol, seg), rtol=0, atol=1e-14)
    if edges:  # only the receiver of the one edge gets a message
        receivers = set(seg.dst.tolist())
        assert all(out[k].abs().max() == 0 for k in range(n) if k not in receivers)
    if n:
        (gx,) = torch.autograd.grad(out.sum(), x)
        assert gx.shape == x.shape


def _check_rounded_operands(n, edges, channels, lmax_in, max_ell, dtype, device):
    x, t, w, pcol, seg = _problem(n, edges, channels, lmax_in, max_ell, device=device)
    i, o = t.shape[1:]
    degree = max(int(seg.dst_ptr.diff().max()), int(seg.src_ptr.diff().max()))
    # longest chain of roundings in one kernel output (node sums over a node's edges, edge sums over
    # channels or columns), twice: a second derivative chains two kernels
    roundings = 2 * (degree * (max(i, o) + 2) + channels + i * o + 4)
    check_low_precision_kernel(lambda x, t, w: conv_tensor_product(x, t, w, pcol, seg, "triton"),
                               lambda x, t, w: _plain(x, t, w, pcol, seg), (x, t, w),
                               (dtype, torch.float32, dtype), dtype, roundings, ("X", "T", "W"))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_rounded_operands_sum_in_float32_forward_and_two_derivatives(interpret, dtype):
    """16-bit or fp32 features and weights (T >= fp32), fp32 sums, 64 channels (two node-kernel blocks):
    within float32 rounding of float64 sums of the same operands, and 16-bit at most twice plain
    PyTorch's error."""
    _check_rounded_operands(4, 10, 64, 1, 2, dtype, "cpu")


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_rounded_operands_at_real_size_on_the_gpu(dtype):
    """The compiled kernels at a medium model's size (128 channels, L = 1 features, max_ell 3, ~24
    neighbours)."""
    _check_rounded_operands(512, 512 * 24, 128, 1, 3, dtype, "cuda")


def test_sums_run_in_float64_for_float64_inputs(interpret):
    x, t, w, pcol, seg = _problem(3, 6, 4, 1, 1)
    assert conv_tensor_product(x, t, w, pcol, seg, "triton").dtype == torch.float64
    assert conv_tensor_product(x.float(), t.float(), w.half(), pcol, seg, "triton").dtype == torch.float32


def test_the_accumulation_dtype_is_an_argument(interpret):
    """16-bit operands summed in float64 when asked (a policy with accumulate float64): the result is
    the float64 sum of the rounded operands, far closer than a float32 sum would be; a 16-bit
    accumulator is refused."""
    x, t, w, pcol, seg = _problem(4, 40, 8, 1, 2, dtype=torch.bfloat16)
    exact = _plain(x.double(), t.double(), w.double(), pcol, seg)
    wide = conv_tensor_product(x, t, w, pcol, seg, "triton", acc=torch.float64)
    narrow = conv_tensor_product(x, t, w, pcol, seg, "triton", acc=torch.float32)
    assert wide.dtype == torch.float64 and narrow.dtype == torch.float32
    scale = float(exact.abs().max())
    assert float((wide - exact).abs().max()) <= 1e-12 * scale
    assert float((narrow.double() - exact).abs().max()) > 1e-9 * scale  # float32 sums do round
    with pytest.raises(InputError, match="accumulates in float32 or float64"):
        conv_tensor_product(x, t, w, pcol, seg, "triton", acc=torch.bfloat16)


@pytest.mark.gpu
def test_sums_are_deterministic_on_the_gpu():
    """Node sums walk each node's edges in a fixed order (no atomics): bitwise equal results, forward
    and backward, where thousands of programs run at once (the interpreter runs them one by one)."""
    x, t, w, pcol, seg = _problem(512, 512 * 24, 128, 1, 3, dtype=torch.float32, device="cuda")
    runs = []
    for _ in range(3):
        out = conv_tensor_product(x, t, w, pcol, seg, "triton")
        runs.append([out, *torch.autograd.grad((out * out).sum(), (x, t, w))])
    for again in runs[1:]:
        assert all(torch.equal(a, b) for a, b in zip(runs[0], again))


def test_opcheck():
    x, t, w, pcol, seg = _problem(4, 7, 3, 1, 1)
    torch.library.opcheck(torch.ops.lpmace.conv_node.default, (x, t, w, pcol, *seg, False, "reference", torch.float64))
    g = torch.randn(4, 3, t.shape[2], dtype=torch.float64, requires_grad=True)
    torch.library.opcheck(torch.ops.lpmace.conv_edge.default, (g, x, t, w, pcol, *seg, True, True, "reference", torch.float64))


def test_unknown_implementation_and_cpu_without_interpreter(monkeypatch):
    x, t, w, pcol, seg = _problem(3, 4, 2, 0, 1)
    with pytest.raises(InputError, match="implementation"):
        conv_tensor_product(x, t, w, pcol, seg, "cuda")
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    with pytest.raises(InputError, match="TRITON_INTERPRET=1"):
        conv_tensor_product(x, t, w, pcol, seg, "triton")


def test_channels_beyond_one_block_accumulate(interpret):
    """More channels than one edge-kernel block (256): ∂T adds up the channel blocks."""
    x, t, w, pcol, seg = _problem(3, 4, 300, 0, 1)
    g = torch.randn(3, 300, t.shape[2], dtype=torch.float64)
    d_t, d_w = conv_edge(g, x.detach(), t.detach(), w.detach(), pcol, seg, impl="triton")
    grads = torch.autograd.grad((_plain(x, t, w, pcol, seg) * g).sum(), (t, w))
    assert torch.allclose(d_t, grads[0], rtol=1e-12, atol=1e-12)
    assert torch.allclose(d_w, grads[1], rtol=1e-12, atol=1e-12)


def test_edge_index_that_is_a_transposed_view(interpret):
    """edge_index [2, E] as a view of an [E, 2] tensor (rows of stride 2) gives the same message."""
    x, t, w, pcol, seg = _problem(5, 9, 3, 1, 1)
    pairs = torch.stack([seg.src, seg.dst], dim=1)  # [E, 2]
    strided = edge_segments(pairs.t(), 5)
    assert torch.allclose(conv_tensor_product(x, t, w, pcol, strided, "triton"), _plain(x, t, w, pcol, seg),
                          rtol=1e-12, atol=1e-12)


def test_a_receiver_with_300_edges_and_one_with_a_single_edge(interpret):
    """Node sums cross many edge tiles (300 edges into node 0, from and to nodes in shuffled order)
    and a tile that holds one edge (node 2's single incoming edge): forward and three derivatives
    against the plain formula; the edge kernel's tiles straddle the two receivers."""
    x, t, w, pcol, _ = _problem(5, 301, 3, 1, 2)
    gen = torch.Generator().manual_seed(3)
    dst = torch.zeros(301, dtype=torch.long)
    dst[torch.randint(0, 301, (1,), generator=gen)] = 2
    src = torch.randint(0, 5, (301,), generator=gen)
    seg = edge_segments(torch.stack([src, dst]), 5)
    assert seg.dst_ptr.diff().tolist() == [300, 0, 1, 0, 0]
    fused = _derivatives(lambda x, t, w: conv_tensor_product(x, t, w, pcol, seg, "triton"), (x, t, w))
    plain = _derivatives(lambda x, t, w: _plain(x, t, w, pcol, seg), (x, t, w))
    for k, (a, b) in enumerate(zip(fused, plain)):
        assert (a - b).abs().max() <= 1e-12 * max(b.abs().max().item(), 1.0), k
