"""The fused conv tensor product (MACE Eq. 8 neighbour sum) against a plain PyTorch formula written
here: forward, first, second and third derivatives, over real CG tables of L = 0, 1, 2, empty graphs,
single edges, nodes without edges, a receiver with 300 edges and unsorted edges; Triton through its
interpreter on the CPU. The Triton kernels sum in float32 (their CG literals are float32), so they
are checked in float32 and 16-bit against float64 sums; float64 work runs the reference."""

from __future__ import annotations

import pytest
import torch
from tolerances import check_low_precision_kernel

from lpmace.errors import InputError
from lpmace.kernels.convolution import conv_grads, conv_tensor_product, edge_segments
from lpmace.o3.clebsch_gordan import conv_coupling_table, conv_paths
from lpmace.o3.spherical_harmonics import SphericalHarmonics


@pytest.fixture
def interpret(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "1")


def _graph(n, edges, gen):
    src = torch.randint(0, max(n, 1), (edges,), generator=gen)
    dst = torch.randint(0, max(n, 1), (edges,), generator=gen)
    return torch.stack([src, dst])


def _problem(n, edges, channels, lmax_in, max_ell, dtype=torch.float64, seed=0, device="cpu", index=None):
    """Sender features, spherical harmonics of random unit vectors, radial weights and the graph."""
    gen = torch.Generator().manual_seed(seed)
    paths = conv_paths(lmax_in, max_ell, max_ell)
    index = _graph(n, edges, gen) if index is None else index
    y = SphericalHarmonics(max_ell)(torch.randn(index.shape[1], 3, generator=gen, dtype=torch.float64))
    y = y.to(torch.float64 if dtype == torch.float64 else torch.float32)
    x = torch.randn(n, channels, (lmax_in + 1) ** 2, generator=gen, dtype=torch.float64).to(dtype)
    w = torch.randn(index.shape[1], len(paths), channels, generator=gen, dtype=torch.float64).to(dtype)
    x, y, w = (v.to(device) for v in (x, y, w))
    seg = edge_segments(index.to(device), n)
    return x.requires_grad_(), y.requires_grad_(), w.requires_grad_(), seg


def _plain(x, y, w, seg, lmax_in, max_ell, absolute=False):
    """out[n, c, o] = Σ_{e: dst=n} W[e, p(o), c] Σ_{i,b} X[src, c, i] Y[e, b] CG[i, b, o], written
    directly, in x's dtype (plain PyTorch in that precision); |CG| when `absolute`."""
    paths = conv_paths(lmax_in, max_ell, max_ell)
    cg = conv_coupling_table(paths, lmax_in, max_ell).to(x.dtype).to(x.device)
    cg = cg.abs() if absolute else cg
    pcol = torch.tensor([p for p, (_, _, l3) in enumerate(paths) for _ in range(2 * l3 + 1)], device=x.device)
    per_edge = torch.einsum("eci,eb,ibo->eco", x[seg.src], y.to(x.dtype), cg) * w.to(x.dtype)[:, pcol, :].permute(0, 2, 1)
    out = torch.zeros(seg.dst_ptr.shape[0] - 1, x.shape[1], cg.shape[2], dtype=x.dtype, device=x.device)
    return out.index_add(0, seg.dst, per_edge)


def _derivatives(fn, inputs, seed=1):
    """Output, first, second and third derivatives of random projections (float64), each differentiable."""
    gen = torch.Generator().manual_seed(seed)
    out = fn(*inputs)
    found = [out]
    scalar = (out.double() * torch.randn(out.shape, generator=gen, dtype=torch.float64)).sum()
    for _ in range(3):
        grads = torch.autograd.grad(scalar, inputs, create_graph=True, allow_unused=True)
        grads = [torch.zeros_like(x) if g is None else g for g, x in zip(grads, inputs)]
        found.extend(grads)
        scalar = sum((g.double() * torch.randn(g.shape, generator=gen, dtype=torch.float64)).sum() for g in grads)
    return found


def _assert_close(got, want, rel, what=""):
    for k, (a, b) in enumerate(zip(got, want)):
        assert a.shape == b.shape, (what, k)
        scale = max(b.double().abs().max().item(), 1.0) if b.numel() else 1.0
        err = (a.double() - b.double()).abs().max().item() if b.numel() else 0.0
        assert err <= rel * scale, f"{what} output {k}: error {err:.3g} > {rel:g} of {scale:.3g}"


@pytest.mark.parametrize("lmax_in, max_ell", [(0, 0), (0, 3), (1, 2), (2, 2)])
def test_reference_forward_and_three_derivatives_match_the_plain_formula(lmax_in, max_ell):
    x, y, w, seg = _problem(5, 11, 3, lmax_in, max_ell)
    fused = _derivatives(lambda x, y, w: conv_tensor_product(x, y, w, seg, lmax_in, max_ell, "reference"), (x, y, w))
    plain = _derivatives(lambda x, y, w: _plain(x, y, w, seg, lmax_in, max_ell), (x, y, w))
    _assert_close(fused, plain, 1e-12)


@pytest.mark.parametrize("lmax_in, max_ell", [(0, 0), (0, 3), (1, 2), (1, 3), (2, 2)])
def test_triton_forward_and_three_derivatives_match_the_plain_formula(interpret, lmax_in, max_ell):
    """float32 operands: the kernels (float32 sums, float32 CG literals) against float64 sums of the
    same operands, to float32 rounding; a dropped or wrong CG term is off by O(1)."""
    x, y, w, seg = _problem(5, 11, 3, lmax_in, max_ell, dtype=torch.float32)
    fused = _derivatives(lambda x, y, w: conv_tensor_product(x, y, w, seg, lmax_in, max_ell, "triton"), (x, y, w))
    plain = _derivatives(lambda x, y, w: _plain(x.double(), y.double(), w.double(), seg, lmax_in, max_ell), (x, y, w))
    _assert_close(fused, plain, 2e-6)


def test_grads_are_the_partial_derivatives(interpret):
    """conv_grads' ∂X, ∂Y and ∂W are the gradients of Σ G · (1) (checked by autograd on the plain form)."""
    x, y, w, seg = _problem(4, 9, 5, 1, 2, dtype=torch.float32)
    g = torch.randn(4, 5, 21)
    grads = torch.autograd.grad((_plain(x.double(), y.double(), w.double(), seg, 1, 2) * g.double()).sum(), (x, y, w))
    mine = conv_grads(g, x.detach(), y.detach(), w.detach(), seg, 1, 2, impl="triton")
    _assert_close(mine, grads, 1e-6)
    only_w = conv_grads(g, x.detach(), y.detach(), w.detach(), seg, 1, 2, False, False, True, impl="triton")
    assert only_w[0].numel() == 0 and only_w[1].numel() == 0 and torch.equal(only_w[2], mine[2])


@pytest.mark.parametrize("impl", ["reference", "triton"])
@pytest.mark.parametrize("n, edges", [(0, 0), (3, 0), (2, 1), (4, 1)])
def test_empty_graphs_single_edges_and_isolated_nodes(interpret, impl, n, edges):
    x, y, w, seg = _problem(n, edges, 3, 1, 1, dtype=torch.float32)
    out = conv_tensor_product(x, y, w, seg, 1, 1, impl)
    assert out.shape == (n, 3, 8)  # columns of paths (0,0,0), (0,1,1), (1,0,1), (1,1,0)
    assert torch.allclose(out.double(), _plain(x.double(), y.double(), w.double(), seg, 1, 1), rtol=0, atol=1e-6)
    if edges:  # only the receiver of the one edge gets a message
        receivers = set(seg.dst.tolist())
        assert all(out[k].abs().max() == 0 for k in range(n) if k not in receivers)
    if n:
        (gx,) = torch.autograd.grad(out.sum(), x)
        assert gx.shape == x.shape


def _check_rounded_operands(n, edges, channels, lmax_in, max_ell, dtype, device):
    x, y, w, seg = _problem(n, edges, channels, lmax_in, max_ell, device=device)
    i, b = x.shape[2], y.shape[1]
    degree = max(int(seg.dst_ptr.diff().max()), int(seg.src_ptr.diff().max()))
    # longest chain of roundings in one kernel output (node sums over a node's edges of CG terms, edge
    # sums over channels and terms), twice: a second derivative chains two kernels
    roundings = 2 * (degree * (i * b + 2) + channels * i * b + 4)
    check_low_precision_kernel(lambda x, y, w: conv_tensor_product(x, y, w, seg, lmax_in, max_ell, "triton"),
                               lambda x, y, w: _plain(x, y, w, seg, lmax_in, max_ell), (x, y, w),
                               (dtype, torch.float32, dtype), dtype, roundings, ("X", "Y", "W"),
                               magnitude=lambda x, y, w: _plain(x, y, w, seg, lmax_in, max_ell, absolute=True))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_rounded_operands_sum_in_float32_forward_and_two_derivatives(interpret, dtype):
    """16-bit or fp32 features and weights (Y fp32), fp32 sums, 160 channels (two programs of 128):
    within float32 rounding of float64 sums of the same operands, and 16-bit at most twice plain
    PyTorch's error."""
    _check_rounded_operands(4, 10, 160, 1, 2, dtype, "cpu")


def test_layers_take_their_own_tiles(monkeypatch):
    """A TILES entry ending ", L = l" holds for features of L = l only, its AHEAD and MAXNREG with it: the
    kernels of scalar features take 128 channels per program in one warp, one edge per step, and load
    indices ahead; L = 1 features keep their kernel's entry."""
    from lpmace.kernels import convolution_triton as ct

    bf16 = torch.bfloat16
    assert ct._key("message", bf16, 0) == "message 16-bit, L = 0"
    assert ct._key("message", bf16, 1) == ct._key("message", bf16) == "message 16-bit"
    assert ct._key("message", torch.float32, 0) == "message, L = 0"
    assert ct._key("message", torch.float32, 1) == "message"
    assert ct._key("grads", torch.float16, 0) == "grads 16-bit, L = 0"
    assert ct._key("grads", torch.float32, 0) == "grads, L = 0" and ct._key("grads", torch.float32, 1) == "grads"
    assert ct._channels(128, "grads", torch.float32, 0) == (128, 1, 1)
    assert ct._channels(128, "message", bf16, 0) == (128, 1, 1)
    assert ct._channels(128, "message", bf16, 1)[:2] == (64, 1)
    assert ct._channels(48, "message", bf16, 0)[:2] == (64, 1)  # fewer channels: one program, one warp
    monkeypatch.setitem(ct.TILES, "grads, L = 2", (64, 1, 3, 2, 1))
    monkeypatch.setitem(ct.MAXNREG, "grads, L = 2", 96)
    assert ct._channels(128, "grads", torch.float32, 2) == (64, 1, 1) and ct._runs("grads", torch.float32, 2, 2) == 1
    assert ct._registers("grads", torch.float32, 2) == {"maxnreg": 96}
    assert ct._registers("grads", torch.float32, 1) == {}
    assert ct._channels(128, "grads", torch.float32, 1) == (32, 1, 1)
    monkeypatch.setattr(ct, "_LOADED", {})
    monkeypatch.setattr(ct, "source", lambda *args: (_ for _ in ()).throw(RuntimeError(args)))
    with pytest.raises(RuntimeError) as made:  # what would be generated: (lmax_in, max_ell, unroll, groups, ahead)
        ct.kernels(0, 3, bf16)
    assert made.value.args[0] == (0, 3, (1, 1), (1, 1), (1, 1))
    with pytest.raises(RuntimeError) as made:
        ct.kernels(0, 3, torch.float32)
    assert made.value.args[0] == (0, 3, (1, 1), (1, 1), (1, 1))
    with pytest.raises(RuntimeError) as made:
        ct.kernels(2, 2, torch.float32)
    assert made.value.args[0] == (2, 2, (2, 3), (1, 1), (1, 0))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_the_scalar_layer_at_its_own_tiles(interpret, monkeypatch, dtype):
    """Operands of L = 0 features at their own entries (128 channels per program, four per lane, one edge
    per step, indices ahead) over 160 channels (a program of 128 and one of 32, its other lanes masked):
    forward and two derivatives within the bounds of their dtype; every launch asks its tiles, lanes,
    runs and register cap for L = 0."""
    from lpmace.kernels import convolution_triton as ct

    asked = []
    for name, at in (("_channels", 3), ("_lanes", 4), ("_runs", 2), ("_registers", 2)):
        def spy(*args, _made=getattr(ct, name), _name=name, _at=at):
            asked.append((_name, args[_at] if len(args) > _at else None))
            return _made(*args)
        monkeypatch.setattr(ct, name, spy)
    _check_rounded_operands(4, 10, 160, 0, 2, dtype, "cpu")
    assert {name for name, _ in asked} == {"_channels", "_lanes", "_runs", "_registers"}
    assert all(level == 0 for _, level in asked), sorted(set(asked))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_derivatives_split_into_two_launches(interpret, monkeypatch, dtype):
    """`SPLIT`: ∂W in a launch of its own, ∂X and ∂Y in another: the same values as one launch (the same
    sums), two launches where ∂W and another are wanted, one where only ∂W or only ∂X and ∂Y are."""
    from lpmace.kernels import convolution_triton

    x, y, w, seg = _problem(7, 23, 70, 1, 2, dtype=torch.float32, seed=13)
    x, w = x.detach().to(dtype), w.detach().to(dtype)
    g = torch.randn(7, 70, 21, generator=torch.Generator().manual_seed(1)).to(dtype)
    whole = conv_grads(g, x, y.detach(), w, seg, 1, 2, impl="triton")
    launches = []
    made = convolution_triton.kernels

    def counted(*args):
        message, grads = made(*args)

        class Counted:
            def __getitem__(self, grid):
                return lambda *a, **k: (launches.append((k["WANT_X"], k["WANT_Y"], k["WANT_W"])), grads[grid](*a, **k))
        return message, Counted()

    monkeypatch.setattr(convolution_triton, "kernels", counted)
    monkeypatch.setitem(convolution_triton.SPLIT, convolution_triton._key("grads", dtype, 1), True)
    split = conv_grads(g, x, y.detach(), w, seg, 1, 2, impl="triton")
    assert launches == [(True, True, False), (False, False, True)]
    assert all(torch.equal(a, b) for a, b in zip(split, whole))
    launches.clear()
    only_w = conv_grads(g, x, y.detach(), w, seg, 1, 2, False, False, True, impl="triton")
    assert launches == [(False, False, True)] and torch.equal(only_w[2], whole[2])


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("lmax_in", [0, 1])
def test_rounded_operands_at_real_size_on_the_gpu(dtype, lmax_in):
    """The compiled kernels at a foundation model's size (128 channels, L = 0 and 1 features, max_ell 3,
    ~24 neighbours)."""
    _check_rounded_operands(512, 512 * 24, 128, lmax_in, 3, dtype, "cuda")


def test_sums_run_in_float64_for_float64_inputs(interpret):
    x, y, w, seg = _problem(3, 6, 4, 1, 1)
    assert conv_tensor_product(x, y, w, seg, 1, 1, "triton").dtype == torch.float64
    assert conv_tensor_product(x.float(), y.float(), w.half(), seg, 1, 1, "triton").dtype == torch.float32


def test_the_accumulation_dtype_is_an_argument(interpret):
    """16-bit operands summed in float64 when asked (a policy with accumulate float64): the result is
    the float64 sum of the rounded operands, far closer than a float32 sum would be; a 16-bit
    accumulator is refused."""
    x, y, w, seg = _problem(4, 40, 8, 1, 2, dtype=torch.bfloat16)
    exact = _plain(x.double(), y.double(), w.double(), seg, 1, 2)
    wide = conv_tensor_product(x, y, w, seg, 1, 2, "triton", acc=torch.float64)
    narrow = conv_tensor_product(x, y, w, seg, 1, 2, "triton", acc=torch.float32)
    assert wide.dtype == torch.float64 and narrow.dtype == torch.float32
    scale = float(exact.detach().abs().max())
    assert float((wide - exact).abs().max()) <= 1e-12 * scale
    assert float((narrow.double() - exact).abs().max()) > 1e-9 * scale  # float32 sums do round
    with pytest.raises(InputError, match="accumulates in float32 or float64"):
        conv_tensor_product(x, y, w, seg, 1, 2, "triton", acc=torch.bfloat16)


@pytest.mark.gpu
def test_sums_are_deterministic_on_the_gpu():
    """Every output is written by one program in a fixed order (no atomics): bitwise equal results,
    forward and backward, where thousands of programs run at once (the interpreter runs them one by one)."""
    x, y, w, seg = _problem(512, 512 * 24, 128, 1, 3, dtype=torch.float32, device="cuda")
    runs = []
    for _ in range(3):
        out = conv_tensor_product(x, y, w, seg, 1, 3, "triton")
        runs.append([out, *torch.autograd.grad((out * out).sum(), (x, y, w))])
    for again in runs[1:]:
        assert all(torch.equal(a, b) for a, b in zip(runs[0], again))


def test_opcheck():
    x, y, w, seg = _problem(4, 7, 3, 1, 1)
    torch.library.opcheck(torch.ops.lpmace.conv_message.default,
                          (x, y, w, *seg, 1, 1, "reference", torch.float64, torch.float64))
    torch.library.opcheck(torch.ops.lpmace.conv_message.default,
                          (x, y, w, *seg, 1, 1, "reference", torch.float64, torch.float32))
    g = torch.randn(4, 3, 8, dtype=torch.float64, requires_grad=True)
    torch.library.opcheck(torch.ops.lpmace.conv_grads.default,
                          (g, x, y, w, *seg, 1, 1, True, True, True, "reference", torch.float64))


@pytest.mark.parametrize("impl", ["reference", "triton"])
def test_a_message_asked_in_bfloat16_is_the_float32_one_rounded_once(interpret, impl):
    """out=bfloat16 (what the block asks when its linear computes in bf16): the float32 sums rounded once,
    bit for bit, and the derivatives of a bf16 cotangent equal those through the float32 message and an
    explicit cast (the cotangent widened to float32 carries the same numbers)."""
    _check_message_rounded_once(_problem(6, 20, 5, 1, 2, dtype=torch.float32, seed=4), impl, max_ell=2)


@pytest.mark.gpu
def test_a_message_asked_in_bfloat16_is_rounded_once_on_the_gpu():
    """The same on CUDA, where the kernel itself rounds (to nearest even, as torch does), 128 channels."""
    _check_message_rounded_once(_problem(300, 5000, 128, 1, 3, dtype=torch.bfloat16, seed=4, device="cuda"), "triton",
                                max_ell=3)


def _check_message_rounded_once(problem, impl, max_ell):
    x, y, w, seg = problem
    wide = conv_tensor_product(x, y, w, seg, 1, max_ell, impl)
    narrow = conv_tensor_product(x, y, w, seg, 1, max_ell, impl, out=torch.bfloat16)
    assert wide.dtype == torch.float32 and narrow.dtype == torch.bfloat16
    assert torch.equal(narrow, wide.to(torch.bfloat16))
    g = torch.randn(narrow.shape, generator=torch.Generator().manual_seed(5)).to(torch.bfloat16).to(x.device)
    d_narrow = torch.autograd.grad(conv_tensor_product(x, y, w, seg, 1, max_ell, impl, out=torch.bfloat16), (x, y, w), g)
    d_wide = torch.autograd.grad(conv_tensor_product(x, y, w, seg, 1, max_ell, impl).to(torch.bfloat16), (x, y, w), g)
    if x.device.type == "cpu":  # the interpreter: the same code on the same values, the same bits
        assert all(torch.equal(a, b) for a, b in zip(d_narrow, d_wide))
        return
    # On the GPU the two calls run grads compiled for a bf16 and for a float32 G (the same values): two
    # binaries, whose float32 sums may round differently (the H200 gave ∂X one bf16 step apart on some
    # entries): at most one step of each output's dtype at its largest entry.
    for a, b in zip(d_narrow, d_wide):
        step = 2.0 ** -8 if b.dtype.itemsize == 2 else 1e-6
        assert float((a.double() - b.double()).abs().max()) <= step * float(b.double().abs().max())


def test_bad_input_a_message_dtype_that_is_not_floating():
    x, y, w, seg = _problem(3, 4, 2, 0, 1, dtype=torch.float32)
    with pytest.raises(InputError, match="message dtype must be a floating dtype, not torch.int32"):
        conv_tensor_product(x, y, w, seg, 0, 1, "reference", out=torch.int32)


def test_bad_input_unknown_implementation_and_cpu_without_interpreter(monkeypatch):
    x, y, w, seg = _problem(3, 4, 2, 0, 1, dtype=torch.float32)
    with pytest.raises(InputError, match="implementation"):
        conv_tensor_product(x, y, w, seg, 0, 1, "cuda")
    with pytest.raises(InputError, match=r"lmax_in=1, max_ell=1 needs features \[N, C, 4\]"):
        conv_tensor_product(x, y, w, seg, 1, 1, "reference")
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    with pytest.raises(InputError, match="TRITON_INTERPRET=1"):
        conv_tensor_product(x, y, w, seg, 0, 1, "triton")


def test_channels_beyond_one_program_add_up(interpret):
    """300 channels (three programs of up to 128 per sender): ∂Y adds up the programs' partial sums."""
    x, y, w, seg = _problem(3, 4, 300, 0, 1, dtype=torch.float32)
    g = torch.randn(3, 300, 4)
    grads = torch.autograd.grad((_plain(x.double(), y.double(), w.double(), seg, 0, 1) * g.double()).sum(), (x, y, w))
    _assert_close(conv_grads(g, x.detach(), y.detach(), w.detach(), seg, 0, 1, impl="triton"), grads, 1e-6)


def test_edge_index_that_is_a_transposed_view(interpret):
    """edge_index [2, E] as a view of an [E, 2] tensor (rows of stride 2) gives the same message."""
    x, y, w, seg = _problem(5, 9, 3, 1, 1, dtype=torch.float32)
    strided = edge_segments(torch.stack([seg.src, seg.dst], dim=1).t(), 5)
    assert torch.equal(conv_tensor_product(x, y, w, strided, 1, 1, "triton"),
                       conv_tensor_product(x, y, w, seg, 1, 1, "triton"))


def test_a_receiver_with_300_edges_and_one_with_a_single_edge(interpret):
    """Node 0 receives 300 edges (from senders in shuffled order), node 2 a single edge: forward and
    three derivatives against the plain formula (float32 kernels, float64 plain sums)."""
    gen = torch.Generator().manual_seed(3)
    dst = torch.zeros(301, dtype=torch.long)
    dst[torch.randint(0, 301, (1,), generator=gen)] = 2
    index = torch.stack([torch.randint(0, 5, (301,), generator=gen), dst])
    x, y, w, seg = _problem(5, 301, 3, 1, 2, dtype=torch.float32, index=index)
    assert seg.dst_ptr.diff().tolist() == [300, 0, 1, 0, 0]
    fused = _derivatives(lambda x, y, w: conv_tensor_product(x, y, w, seg, 1, 2, "triton"), (x, y, w))
    plain = _derivatives(lambda x, y, w: _plain(x.double(), y.double(), w.double(), seg, 1, 2), (x, y, w))
    _assert_close(fused, plain, 2e-6)


def test_no_channels(interpret):
    """A layer of zero channels: empty message and ∂X, ∂W; ∂Y is zero (nothing to sum), not an error."""
    x, y, w, seg = _problem(3, 5, 0, 1, 1, dtype=torch.float32)
    assert conv_tensor_product(x, y, w, seg, 1, 1, "triton").shape == (3, 0, 8)
    d_x, d_y, d_w = conv_grads(torch.zeros(3, 0, 8), x.detach(), y.detach(), w.detach(), seg, 1, 1, impl="triton")
    assert d_x.shape == (3, 0, 4) and d_w.shape == (5, 4, 0)
    assert d_y.shape == (5, 4) and torch.equal(d_y, torch.zeros(5, 4))


@pytest.mark.parametrize("unroll, per_lane, channels", [((1, 1), 1, 3), ((2, 3), 1, 3), ((4, 2), 1, 3), ((2, 1), 2, 70)])
def test_edges_unrolled_per_loop_step(interpret, monkeypatch, unroll, per_lane, channels):
    """Kernels that take 2–4 edges per loop step (segments of 0..7 edges: most end mid-step, where the
    extra slots must load zeros and store nothing), and two channels per lane over two programs of 64:
    forward and three derivatives against the plain formula."""
    from lpmace.kernels import convolution_triton

    monkeypatch.setattr(convolution_triton, "AHEAD", {})  # indices loaded in their own step (AHEAD's own test below)
    monkeypatch.setitem(convolution_triton.TILES, "message", (64, 3, unroll[0], per_lane, 1))
    monkeypatch.setitem(convolution_triton.TILES, "message 16-bit", (64, 3, unroll[0], per_lane, 1))
    monkeypatch.setitem(convolution_triton.TILES, "grads", (64, 1, unroll[1], per_lane, 1))
    monkeypatch.setitem(convolution_triton.TILES, "grads 16-bit", (64, 1, unroll[1], per_lane, 1))
    assert convolution_triton._channels(channels, "grads")[1] == (2 // per_lane if channels > 32 else 1)
    x, y, w, seg = _problem(7, 23, channels, 1, 2, dtype=torch.float32, seed=10)
    assert sorted(seg.dst_ptr.diff().tolist()) == [1, 2, 3, 4, 4, 4, 5]
    assert sorted(seg.src_ptr.diff().tolist()) == [0, 1, 2, 3, 3, 6, 8]
    fused = _derivatives(lambda x, y, w: conv_tensor_product(x, y, w, seg, 1, 2, "triton"), (x, y, w))
    plain = _derivatives(lambda x, y, w: _plain(x.double(), y.double(), w.double(), seg, 1, 2), (x, y, w))
    _assert_close(fused, plain, 2e-6)


@pytest.mark.parametrize("unroll, per_lane, channels, level", [((1, 1), 1, 3, 1), ((2, 3), 2, 70, 1),
                                                                 ((1, 1), 1, 3, 2), ((2, 2), 2, 70, 2)])
def test_edge_indices_loaded_a_step_ahead(interpret, monkeypatch, unroll, per_lane, channels, level):
    """Each step loading the next step's edge and node indices (`AHEAD` 1), and the message also the
    next step's values (2), one or 2–3 edges per step, segments of 1..5 edges per receiver and 0..8 per
    sender (empty ones, ones ending mid-step): forward and three derivatives against the plain formula;
    and (one case per level) the 300-edge receiver beside four receivers without edges."""
    from lpmace.kernels import convolution_triton

    for key in ("message", "grads"):
        monkeypatch.setitem(convolution_triton.AHEAD, key, level)
    monkeypatch.setitem(convolution_triton.TILES, "message", (64, 1, unroll[0], per_lane, 1))
    monkeypatch.setitem(convolution_triton.TILES, "grads", (64, 1, unroll[1], per_lane, 1))
    assert f"ahead=({level}, {level})" in convolution_triton.source(1, 2, unroll, (1, 1), (level, level))
    x, y, w, seg = _problem(7, 23, channels, 1, 2, dtype=torch.float32, seed=10)
    assert 0 in seg.src_ptr.diff().tolist()
    monkeypatch.setattr(convolution_triton, "_LOADED", {})
    fused = _derivatives(lambda x, y, w: conv_tensor_product(x, y, w, seg, 1, 2, "triton"), (x, y, w))
    plain = _derivatives(lambda x, y, w: _plain(x.double(), y.double(), w.double(), seg, 1, 2), (x, y, w))
    _assert_close(fused, plain, 2e-6)
    assert [key[4] for key in convolution_triton._LOADED] == [(level, level)]  # the kernels that ran: AHEAD's
    if (unroll, level) not in (((1, 1), 1), ((2, 2), 2)):  # the long receiver once per level (a minute each on the CPU)
        return
    gen = torch.Generator().manual_seed(3)
    index = torch.stack([torch.randint(0, 5, (300,), generator=gen), torch.full((300,), 2)])
    x, y, w, seg = _problem(5, 300, 3, 1, 2, dtype=torch.float32, index=index)
    fused = _derivatives(lambda x, y, w: conv_tensor_product(x, y, w, seg, 1, 2, "triton"), (x, y, w))
    plain = _derivatives(lambda x, y, w: _plain(x.double(), y.double(), w.double(), seg, 1, 2), (x, y, w))
    _assert_close(fused, plain, 2e-6)


@pytest.mark.parametrize("level", [1, 2])
def test_edge_indices_loaded_ahead_with_16_bit_operands(interpret, monkeypatch, level):
    """bf16 operands through the 16-bit entries with `AHEAD` set (values loaded ahead stay bf16 until
    used): within the same bounds as without."""
    from lpmace.kernels import convolution_triton

    for key in ("message 16-bit", "grads 16-bit"):
        monkeypatch.setitem(convolution_triton.AHEAD, key, level)
    _check_rounded_operands(4, 10, 160, 1, 2, torch.bfloat16, "cpu")


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("level", [1, 2])
def test_edge_indices_loaded_ahead_at_real_size_on_the_gpu(monkeypatch, dtype, level):
    """`AHEAD` set for every kernel, compiled, at a foundation model's size."""
    from lpmace.kernels import convolution_triton

    for key in convolution_triton.TILES:
        monkeypatch.setitem(convolution_triton.AHEAD, key, level)
    _check_rounded_operands(512, 512 * 24, 128, 1, 3, dtype, "cuda")


class _PoisonedTorch:
    """torch, except that `empty` float tensors are full of NaN: a buffer entry a kernel should write
    and does not shows up in the result (torch.empty may hand back zeros by chance)."""

    def __getattr__(self, name):
        return getattr(torch, name)

    @staticmethod
    def empty(*size, **kwargs):
        made = torch.empty(*size, **kwargs)
        return made.fill_(float("nan")) if made.is_floating_point() else made


@pytest.mark.parametrize("lmax_in, max_ell, runs", [(1, 3, 2), (1, 3, 3), (0, 3, 4), (2, 2, 3)])
def test_paths_cut_into_runs(interpret, monkeypatch, lmax_in, max_ell, runs):
    """Each kernel's paths cut into runs, one program per run (grads then sums the runs' ∂X and ∂Y,
    buffers poisoned with NaN: every entry, zeros of a run's untouched components included, must be
    written): forward and three derivatives against the plain formula, with two edges per step and
    two channels per lane over two programs of 64 channels; 16-bit operands take their own entries.
    At 3 runs the message loads its next step's values ahead (`AHEAD` 2) and grads its indices (1)."""
    from lpmace.kernels import convolution_triton

    monkeypatch.setattr(convolution_triton, "torch", _PoisonedTorch())

    groups = convolution_triton.path_groups(lmax_in, max_ell, runs)
    paths = conv_paths(lmax_in, max_ell, max_ell)
    assert len(groups) == min(runs, len(paths)) and [q for r in groups for q in r] == list(range(len(paths)))
    if runs == 3:  # each run's branch with the values (message) and indices (grads) loaded a step ahead
        monkeypatch.setattr(convolution_triton, "AHEAD", {"message": 2, "grads": 1})
    for key, unroll in (("message", 2), ("grads", 2)):
        monkeypatch.setitem(convolution_triton.TILES, key, (64, 1, unroll, 2, runs))
        monkeypatch.setitem(convolution_triton.TILES, f"{key} 16-bit", (64, 1, 1, 1, 1))
        monkeypatch.delitem(convolution_triton.TILES, f"{key}, L = {lmax_in}", raising=False)  # (the runs' tiles)
    x, y, w, seg = _problem(7, 23, 70, lmax_in, max_ell, dtype=torch.float32, seed=11)
    fused = _derivatives(lambda x, y, w: conv_tensor_product(x, y, w, seg, lmax_in, max_ell, "triton"), (x, y, w))
    plain = _derivatives(lambda x, y, w: _plain(x.double(), y.double(), w.double(), seg, lmax_in, max_ell),
                         (x, y, w))
    _assert_close(fused, plain, 2e-6)
    assert convolution_triton._runs("grads", torch.float32, lmax_in, max_ell) == len(groups)
    assert convolution_triton._runs("message", torch.float32, lmax_in, max_ell) == len(groups)


def test_paths_cut_into_runs_with_16_bit_operands(interpret, monkeypatch):
    """bf16 features and weights, 3 runs per kernel, 160 channels (three programs of 64): the runs'
    float32 partial sums of ∂X and ∂Y are rounded once to the operand dtype, within the same bounds as
    one run (`_check_rounded_operands`); buffers poisoned with NaN."""
    from lpmace.kernels import convolution_triton

    monkeypatch.setattr(convolution_triton, "torch", _PoisonedTorch())
    for key in ("message 16-bit", "grads 16-bit"):
        monkeypatch.setitem(convolution_triton.TILES, key, (64, 1, 1, 2, 3))
    assert convolution_triton._runs("grads", torch.bfloat16, 1, 2) == 3
    _check_rounded_operands(4, 10, 160, 1, 2, torch.bfloat16, "cpu")


def test_runs_of_paths_balance_the_work():
    """The runs are adjacent paths in order; for L = 1 features and max_ell 3 (10 paths, 86 CG terms,
    40 columns) two runs split the 126 units of work no worse than 40/60 %."""
    from lpmace.kernels.convolution_triton import _terms, layout, path_groups

    _, pcol, table = layout(1, 3)
    cost = [0] * 10
    for _, _, o, _ in _terms(table):
        cost[pcol[o]] += 1
    for o in pcol:
        cost[o] += 1
    assert sum(cost) == 126
    first, second = path_groups(1, 3, 2)
    assert first + second == tuple(range(10))
    assert 0.4 <= sum(cost[q] for q in first) / 126 <= 0.6
    assert path_groups(1, 3, 1) == (tuple(range(10)),) and len(path_groups(0, 3, 9)) == 4


def _run_warp(ptx: str, operands: dict) -> list:
    """The PTX of `butterfly` run for the 32 lanes of a warp, in order, instruction by instruction: the
    few instructions it uses (mov, add, and, shr, setp.ne, selp, shfl.sync.bfly) with their PTX meaning.
    operands: {"$k": [32 values]} for the inputs; returns each lane's registers (outputs as "$k")."""
    lanes = [dict({k: v[lane] for k, v in operands.items()}, **{"%laneid": lane}) for lane in range(32)]
    for line in ptx.splitlines():
        line = line.strip().rstrip(";")
        if not line or line[0] in "{}." or line.startswith(".reg"):
            continue
        op, args = line.split(None, 1)
        args = [a.strip() for a in args.split(",")]

        def val(regs, a):
            return regs[a] if a in regs else int(a, 0)
        if op.startswith("shfl.sync.bfly"):
            sent = [val(regs, args[1]) for regs in lanes]
            for lane, regs in enumerate(lanes):
                regs[args[0]] = sent[lane ^ int(args[2])]
            continue
        for regs in lanes:
            a = [val(regs, x) for x in args[1:]]
            regs[args[0]] = {"mov": lambda: a[0], "add": lambda: a[0] + a[1], "and": lambda: a[0] & a[1],
                             "shr": lambda: a[0] >> a[1], "setp": lambda: a[0] != a[1],
                             "selp": lambda: a[0] if a[2] else a[1]}[op.split(".")[0]]()
    return lanes


@pytest.mark.parametrize("pack", [1, 2, 4])
def test_butterfly_sums_sixteen_values_over_a_warp(pack):
    """`butterfly`'s PTX (which the CPU cannot run: the interpreter takes the tl.sum path) executed lane
    by lane: lane l's first output is the sum over all 32 lanes and `pack` channels of input (l >> 1) & 15,
    every output of the lane carries it, and exactly one output of the warp names each of the 16 indices."""
    from lpmace.kernels.convolution_triton import butterfly

    ptx, constraints = butterfly(pack)
    assert constraints.count("=r") == 2 * pack and constraints.count(",r") + constraints.startswith("r") == 16 * pack
    gen = torch.Generator().manual_seed(0)
    values = torch.randint(-1000, 1000, (16, pack, 32), generator=gen)  # integers: sums exact in any order
    operands = {f"${2 * pack + b * pack + k}": values[b, k].tolist() for b in range(16) for k in range(pack)}
    lanes = _run_warp(ptx, operands)
    sums = values.sum(dim=(1, 2))
    named = []
    for lane, regs in enumerate(lanes):
        assert [regs[f"${k}"] for k in range(pack)] == [int(sums[(lane >> 1) & 15])] * pack, lane
        named += [regs[f"${pack + k}"] for k in range(pack) if regs[f"${pack + k}"] != -1]
    assert sorted(named) == list(range(16))


def test_the_butterfly_runs_where_a_program_is_one_warp_on_a_gpu(monkeypatch):
    """grads' LANES: the default tiles (one warp of 32 channels, or of 64 at two per lane) take the
    butterfly on a GPU, as does one warp of 128 at four per lane; two warps, three channels per lane, the
    CPU, the interpreter or BUTTERFLY off take the tl.sum path."""
    from lpmace.kernels import convolution_triton

    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    cuda = torch.device("cuda")
    for dtype, lanes in ((torch.float32, 1), (torch.bfloat16, 2), (torch.float16, 2)):
        block, warps, _ = convolution_triton._channels(128, "grads", dtype)
        assert convolution_triton._lanes(block, warps, dtype, cuda) == lanes
        assert convolution_triton._lanes(block, warps, dtype, torch.device("cpu")) == 0
    assert convolution_triton._lanes(64, 2, torch.float32, cuda) == 0
    assert convolution_triton._lanes(32, 1, torch.bfloat16, cuda) == 0  # one warp, but one channel per lane
    monkeypatch.setitem(convolution_triton.TILES, "grads, L = 0", (128, 1, 1, 4, 1))
    assert convolution_triton._lanes(128, 1, torch.float32, cuda, 0) == 4
    monkeypatch.setitem(convolution_triton.TILES, "grads, L = 0", (96, 1, 1, 3, 1))
    assert convolution_triton._lanes(96, 1, torch.float32, cuda, 0) == 0
    monkeypatch.setattr(convolution_triton, "BUTTERFLY", False)
    assert convolution_triton._lanes(32, 1, torch.float32, cuda) == 0
    monkeypatch.setattr(convolution_triton, "BUTTERFLY", True)
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    assert convolution_triton._lanes(32, 1, torch.float32, cuda) == 0


@pytest.mark.gpu
@pytest.mark.parametrize("dtype, max_ell, channels, unroll, runs, per_lane", [
    (torch.float32, 3, 128, 1, 1, 1), (torch.bfloat16, 3, 128, 1, 1, 2), (torch.float32, 2, 48, 3, 2, 1),
    (torch.bfloat16, 1, 48, 2, 1, 2), (torch.bfloat16, 2, 70, 1, 3, 2), (torch.bfloat16, 3, 128, 1, 1, 4),
    (torch.bfloat16, 2, 100, 2, 1, 4)])
def test_butterfly_and_per_harmonic_sums_agree_on_the_gpu(monkeypatch, dtype, max_ell, channels, unroll, runs,
                                                          per_lane):
    """grads with the butterfly and with one tl.sum per harmonic: ∂X and ∂W identical (the same code), ∂Y
    the same sums in another order (float32); at a foundation model's size, and with fewer harmonics
    (the butterfly's zero padding), channels that leave lanes empty, 2–3 edges per step (edges past a
    segment's end), paths in runs, and one, two or four channels per lane."""
    from lpmace.kernels import convolution_triton

    key = "grads 16-bit" if dtype.itemsize == 2 else "grads"
    tile = convolution_triton.TILES[key]
    monkeypatch.setitem(convolution_triton.TILES, key, (32 * per_lane, tile[1], unroll, per_lane, runs))
    x, y, w, seg = _problem(512, 512 * 24, channels, 1, max_ell, device="cuda")
    x, y, w = x.detach().to(dtype), y.detach().float(), w.detach().to(dtype)
    columns = convolution_triton.sizes(1, max_ell)[2]
    g = torch.randn(512, channels, columns, device="cuda", generator=torch.Generator(device="cuda").manual_seed(0))
    g = g.to(dtype)
    assert convolution_triton._lanes(*convolution_triton._channels(channels, "grads", dtype)[:2], dtype, x.device) > 0
    fly = conv_grads(g, x, y, w, seg, 1, max_ell, impl="triton")
    monkeypatch.setattr(convolution_triton, "BUTTERFLY", False)
    tree = conv_grads(g, x, y, w, seg, 1, max_ell, impl="triton")
    assert torch.equal(fly[0], tree[0]) and torch.equal(fly[2], tree[2])
    assert float((fly[1] - tree[1]).abs().max()) <= 1e-5 * float(tree[1].abs().max())
