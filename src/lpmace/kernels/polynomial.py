"""Polynomial contraction: the one operation behind the fused symmetric contraction and its derivatives.

For every node i and channel c, with m_r the monomials of `monomials.MonomialTable` evaluated on the
node's features A[i, c, :] (D components), species s_i and an element-dependent coefficient table T:

    out[i, c, o] = Σ_r m_r(A[i, c]) · Σ_q T[s_i, c, r, o, q] · G[i, c, q]            (1)

The symmetric contraction B = Σ_ν Σ_k W[z, k, c] P_ν[mono, M, k] Π A is (1) with o = M, one q and
G = 1 (T = P·W summed over the basis index k). Its derivatives are (1) again:

    ∂/∂A: (1) over the monomials one degree lower, T' = derivative_table(T) with o = j (the component)
          and q = (o, q) of the original, G' = grad_out ⊗ G;
    ∂/∂G: (1) with the roles of o and q swapped and G = grad_out;
    ∂/∂T: Σ_{i: s_i = z} m_r · grad_out[o] · G[q] (a sum over each element's nodes,
          `lpmace.kernels.table_gradient`).

So `polynomial_contraction` registers its own backward in terms of itself, and the double backward
that training needs (forces are ∂E/∂positions, and the loss differentiates them) comes for free.

Numerics: A, T and G may be 16-bit; every load is converted to the accumulation dtype `acc` (an
argument: float32 or float64; the block passes its policy's) and the sums run there, as the precision
policies require.

Implementations: "reference" (PyTorch, forms [n, C, R] monomials) and "triton", two kernels, neither
of which puts [n, C, R] in memory: `lpmace.kernels.polynomial_dot` (blocks of 64 same-element nodes,
per prefix monomial one product features @ table rows, on tensor cores for bf16 features) takes the
calls `polynomial_dot.supports` accepts: CUDA tensors, fp32 sums, tables of at most 32 prefixes (the
derivative calls of a correlation-3 model); the row-by-row kernel here takes the rest (one program
per block of up to 8 same-element nodes and block of channels, monomials formed in registers, each
table slice loaded once per block of nodes). The Triton kernels run on CUDA tensors, or on CPU
tensors under TRITON_INTERPRET=1 (slow; for tests).
"""

from __future__ import annotations

import torch

from lpmace.errors import InputError
from lpmace.kernels.launch import accumulate_dtype as _accumulate_dtype
from lpmace.kernels.launch import element_blocks
from lpmace.kernels.launch import launch_context, require_interpreter, triton_available
from lpmace.kernels.launch import next_power_of_2 as _next_power_of_2
from lpmace.kernels import polynomial_dot
from lpmace.kernels.monomials import monomial_table
from lpmace.kernels.table_gradient import table_gradient

__all__ = ["IMPLEMENTATIONS", "monomial_values", "polynomial_contraction", "polynomial_contraction_reference",
           "triton_available"]

IMPLEMENTATIONS = ("reference", "triton")
# The row-by-row kernel's tile: nodes per program, at most this many channels per program, warps. H200, the
# forward of a `medium` W1 step, 4 outputs (benchmarks/contraction_kernels.py --sweep, contraction_in_dot_h200_mp_2026-12-03):
# 8 nodes, 32 channels, 4 warps 0.39 ms (448 programs for 132 SMs); 16 channels and 2 warps 0.25 ms (scalar output:
# 0.21 / 0.22 ms).
ROWS_BLOCK_N = 8
ROWS_MAX_BLOCK_C = 16
ROWS_NUM_WARPS = 2


def monomial_values(a: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """a [n, C, D], index [R, ν] (padded with D = the constant 1) -> monomials [n, C, R] (a's dtype)."""
    if index.shape[1] == 0:  # degree 0: the constant
        return a.new_ones(*a.shape[:-1], index.shape[0])
    padded = torch.cat([a, a.new_ones(*a.shape[:-1], 1)], dim=-1)
    values = padded.index_select(-1, index[:, 0])
    for k in range(1, index.shape[1]):
        values = values * padded.index_select(-1, index[:, k])
    return values


def polynomial_contraction_reference(a: torch.Tensor, species: torch.Tensor, index: torch.Tensor,
                                     table: torch.Tensor, g: torch.Tensor, acc: torch.dtype | None = None) -> torch.Tensor:
    """Equation (1) in plain, differentiable PyTorch; shapes and `acc` as `polynomial_contraction`."""
    acc = _acc(acc, a, table)
    values = monomial_values(a.to(acc), index)
    table, g = table.to(acc), g.to(acc)
    out = None
    for z in range(table.shape[0]):
        term = torch.einsum("icr,croq,icq->ico", values, table[z], g) * (species == z).to(acc)[:, None, None]
        out = term if out is None else out + term
    return out


# ---- Triton ----------------------------------------------------------------------------------------

_KERNELS: dict = {}


def _kernel(interpret: bool):
    """The Triton kernel, compiled for the GPU or wrapped for the CPU interpreter (made on first use).

    One program takes up to BLOCK_N nodes of one element (nodes sorted by element; `block_ptr[s]` is
    the first program of element s, `node_ptr[s]` its first node in `order`) and a block of channels,
    so each slice of the element's table is loaded once for BLOCK_N nodes, not once per node.
    """
    if interpret not in _KERNELS:
        import triton
        import triton.language as tl

        def contraction(a_ptr, order_ptr, node_ptr, block_ptr, index_ptr, table_ptr, g_ptr, out_ptr, C, D, O,
                        S: tl.constexpr, R: tl.constexpr, Q: tl.constexpr, NU: tl.constexpr, BLOCK_N: tl.constexpr,
                        BLOCK_R: tl.constexpr, BLOCK_O: tl.constexpr, BLOCK_C: tl.constexpr, ACC: tl.constexpr):
            p = tl.program_id(0)
            s = 0
            for z in tl.static_range(S):  # this program's element: the number of elements it is past
                s += (tl.load(block_ptr + z + 1) <= p).to(tl.int32)
            s = tl.minimum(s, S - 1)
            first = tl.load(node_ptr + s) + (p - tl.load(block_ptr + s)) * BLOCK_N
            slot = first + tl.arange(0, BLOCK_N)
            end = tl.load(node_ptr + s + 1)
            if first >= end:  # a program past its element's last block (the grid is an upper bound)
                return
            n_ok = slot < end
            node = tl.load(order_ptr + slot, mask=n_ok, other=0).to(tl.int64)
            c = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
            c_ok = c < C
            o = tl.arange(0, BLOCK_O)
            o_ok = o < O
            nc_ok = n_ok[:, None] & c_ok[None, :]
            row = node[:, None] * C + c[None, :]  # [BLOCK_N, BLOCK_C]
            acc = tl.zeros((BLOCK_N, BLOCK_O, BLOCK_C), ACC)
            for r0 in range(0, R, BLOCK_R):
                r = r0 + tl.arange(0, BLOCK_R)
                r_ok = r < R
                mono = tl.full((BLOCK_R, BLOCK_N, BLOCK_C), 1.0, ACC)
                for k in tl.static_range(NU):
                    var = tl.load(index_ptr + r * NU + k, mask=r_ok, other=D)
                    real = (var < D)[:, None, None] & nc_ok[None, :, :]
                    value = tl.load(a_ptr + row[None, :, :] * D + var[:, None, None], mask=real, other=1.0)
                    mono = mono * value.to(ACC)
                t_ok = r_ok[:, None, None] & o_ok[None, :, None] & c_ok[None, None, :]
                for q in range(Q):
                    gq = tl.load(g_ptr + row * Q + q, mask=nc_ok, other=0.0).to(ACC)  # [BLOCK_N, BLOCK_C]
                    offset = (((s.to(tl.int64) * C + c[None, None, :]) * R + r[:, None, None]) * O + o[None, :, None]) * Q + q
                    t = tl.load(table_ptr + offset, mask=t_ok, other=0.0).to(ACC)  # [BLOCK_R, BLOCK_O, BLOCK_C]
                    part = tl.sum(mono[:, :, None, :] * t[:, None, :, :], axis=0)  # [BLOCK_N, BLOCK_O, BLOCK_C]
                    acc += part * gq[:, None, :]
            out = out_ptr + row[:, None, :] * O + o[None, :, None]
            tl.store(out, acc, mask=n_ok[:, None, None] & o_ok[None, :, None] & c_ok[None, None, :])

        # Loop bounds S, R and Q are compile-time constants: a handful of values occur (the element count,
        # the monomial counts of each degree), and the interpreter cannot loop to a run-time bound under
        # NumPy 2. Under TRITON_INTERPRET=1 (checked by the caller for CPU tensors) triton.jit gives the
        # interpreter.
        _KERNELS[interpret] = triton.jit(contraction)
    return _KERNELS[interpret]


def _triton(a, species, index, table, g, out_dtype, grouping=None):
    require_interpreter(a.device)
    if polynomial_dot.supports(a, table, out_dtype):
        return polynomial_dot.contraction_by_prefix(a, species, index, table, g, grouping=grouping)
    return _triton_rows(a, species, index, table, g, out_dtype, grouping)


def _triton_rows(a, species, index, table, g, out_dtype, grouping=None):
    """The row-by-row kernel (float64 sums, and shapes `polynomial_dot` does not take)."""
    import triton.language as tl

    n, c, d = a.shape
    s, _, r, o, q = table.shape
    out = torch.empty(n, c, o, dtype=out_dtype, device=a.device)
    if n == 0 or c == 0 or o == 0:
        return out.zero_()
    if r == 0:
        return out.zero_()
    interpret = a.device.type != "cuda"
    require_interpreter(a.device)
    block_o = max(_next_power_of_2(o), 2)
    block_c = min(max(_next_power_of_2(c), 2), ROWS_MAX_BLOCK_C)
    block_n = ROWS_BLOCK_N
    block_r = max(1, min(16, 8192 // (block_n * block_o * block_c)))
    block_r = 1 << (block_r.bit_length() - 1)
    order, node_ptr, block_ptr, programs = element_blocks(species, s, block_n, grouping)
    grid = (programs, (c + block_c - 1) // block_c)
    with launch_context(a.device):
        _kernel(interpret)[grid](
            a.contiguous(), order, node_ptr, block_ptr, index.to(torch.int32).contiguous(), table.contiguous(),
            g.contiguous(), out, c, d, o, S=s, R=r, Q=q, NU=index.shape[1], BLOCK_N=block_n, BLOCK_R=block_r,
            BLOCK_O=block_o, BLOCK_C=block_c, ACC=tl.float64 if out_dtype == torch.float64 else tl.float32,
            num_warps=ROWS_NUM_WARPS)
    return out


# ---- the operator, its shape function and its derivatives -------------------------------------------

@torch.library.custom_op("lpmace::polynomial_contraction", mutates_args=())
def _polynomial_contraction(a: torch.Tensor, species: torch.Tensor, index: torch.Tensor, table: torch.Tensor,
                            g: torch.Tensor, impl: str, acc: torch.dtype, d_gather: torch.Tensor,
                            d_scatter: torch.Tensor, grouping: torch.Tensor) -> torch.Tensor:
    # d_*: the MonomialTable's derivative entries for the backward (empty: made there), unused here;
    # grouping: `launch.element_grouping(species, S)` (empty: each launch sorts the nodes itself)
    if impl == "triton":
        return _triton(a, species, index, table, g, acc, grouping)
    with torch.no_grad():
        return polynomial_contraction_reference(a, species, index, table, g, acc)


@_polynomial_contraction.register_fake
def _(a, species, index, table, g, impl, acc, d_gather, d_scatter, grouping):
    return a.new_empty(a.shape[0], a.shape[1], table.shape[3], dtype=acc)


def _setup_context(ctx, inputs, output):
    a, species, index, table, g, impl, acc, d_gather, d_scatter, grouping = inputs
    ctx.save_for_backward(a, species, index, table, g, grouping, d_gather, d_scatter)
    ctx.impl, ctx.acc = impl, acc


def _backward(ctx, grad_out):
    a, species, index, table, g, grouping, *entries = ctx.saved_tensors
    n, c, d = a.shape
    s, _, r, o, q = table.shape
    grad_a = grad_table = grad_g = None
    if ctx.needs_input_grad[0]:
        monomials = monomial_table(int(d), int(index.shape[1]))  # D and ν are fixed by the model
        wide = table.reshape(s, c, r, o * q).to(ctx.acc)  # k·T exact, not 16-bit
        derivative = monomials.derivative_table(wide, tuple(entries) if entries[0].numel() else None)  # [S, C, R', D, O·Q]
        if derivative.shape[2] == 0:
            grad_a = torch.zeros_like(a)
        else:
            h = (grad_out[..., :, None] * g[..., None, :]).reshape(n, c, o * q)
            grad_a = _polynomial_contraction(a, species, index[: derivative.shape[2]], derivative, h, ctx.impl, ctx.acc,
                                             *entries, grouping)
            grad_a = grad_a.to(a.dtype)
    if ctx.needs_input_grad[4]:
        swapped = table.transpose(3, 4).contiguous()  # out index q, summed index o
        grad_g = _polynomial_contraction(a, species, index, swapped, grad_out, ctx.impl, ctx.acc, *entries,
                                         grouping).to(g.dtype)
    if ctx.needs_input_grad[3]:  # Σ over each element's nodes (the kernel where autograd records nothing)
        h = (grad_out[..., :, None] * g.to(grad_out.dtype)[..., None, :]).reshape(n, c, o * q)
        grad_table = table_gradient(a, species, index, h, s, ctx.impl, grouping).reshape(s, c, r, o, q).to(table.dtype)
    return grad_a, None, None, grad_table, grad_g, None, None, None, None, None


_polynomial_contraction.register_autograd(_backward, setup_context=_setup_context)


def flop_count(a_shape, species_shape, index_shape, table_shape, g_shape, impl, acc=None, *derivative_shapes,
               out_shape=None, **kwargs) -> int:
    """FLOPs of one call, for torch.utils.flop_counter (lpmace bench's roofline registers it): the
    monomials (ν−1 products per node, channel and row) and the contraction (2 per node, channel, row,
    output and q)."""
    n, c, _ = a_shape
    r, nu = index_shape
    _, _, _, o, q = table_shape
    return n * c * r * (max(nu - 1, 0) + 2 * o * q)


def polynomial_contraction(a: torch.Tensor, species: torch.Tensor, index: torch.Tensor, table: torch.Tensor,
                           g: torch.Tensor | None = None, impl: str = "reference",
                           acc: torch.dtype | None = None, derivative: tuple | None = None,
                           grouping: torch.Tensor | None = None) -> torch.Tensor:
    """Equation (1) of this module, differentiable to any order in `a`, `table` and `g`.

    Args:
        a: [n, C, D] node features (any float dtype; 16-bit allowed).
        species: [n] int64 element index of each node, in [0, S).
        index: [R, ν] int64 rows of a `MonomialTable` (a whole-degree prefix), padded with D.
        table: [S, C, R, O, Q] coefficients (any float dtype).
        g: [n, C, Q] weights of the q index; None means Q = 1 and g = 1.
        impl: "reference" or "triton".
        acc: the accumulation dtype (float32 or float64): every load is widened to it and the sums run
            in it; None: float64 when `a` or `table` is float64, else float32.
        derivative: `MonomialTable.derivative_tensors()` of `index`'s table on `a`'s device (a model's
            buffers: a traced graph then holds no constants), or None: the backward makes them.
        grouping: `lpmace.kernels.launch.element_grouping(species, S)`, formed once for all the calls
            of a model's forward and backward (the kernels walk nodes by element), or None: each
            kernel launch sorts the nodes itself. The reference does not read it.

    Returns:
        [n, C, O] in `acc`.
    """
    if impl not in IMPLEMENTATIONS:
        raise InputError(f"polynomial contraction implementation must be one of {IMPLEMENTATIONS}, got {impl!r}")
    if impl == "triton" and not triton_available():
        raise InputError("backend 'triton' needs the triton package (pip install triton)")
    acc = _acc(acc, a, table)
    if g is None:
        g = a.new_ones(a.shape[0], a.shape[1], table.shape[4], dtype=acc)
    if derivative is None:
        derivative = (index.new_zeros(0),) * 2
    if grouping is None:
        grouping = species.new_zeros(0, dtype=torch.int64)
    return _polynomial_contraction(a, species, index, table, g, impl, acc, *derivative, grouping)


def _acc(acc, a: torch.Tensor, table: torch.Tensor) -> torch.dtype:
    """`acc` checked, or when None float64 if `a` or `table` is float64, else float32."""
    if acc is None:
        return torch.promote_types(_accumulate_dtype(a.dtype), _accumulate_dtype(table.dtype))
    if acc not in (torch.float32, torch.float64):
        raise InputError(f"the polynomial contraction accumulates in float32 or float64, not {acc}")
    return acc
