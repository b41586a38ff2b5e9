"""The table gradient (lpmace.kernels.table_gradient) as small matrix products, by prefix.

    ∂L/∂T[z, c, r, q] = Σ_{i: s_i = z} m_r(A[i, c]) h[i, c, q]

Every monomial r of degree ≥ 1 is, in exactly one way, a prefix p (degree one lower) times its largest
variable j (`polynomial_dot`). So for one element z and channel c, with U[(p, q), i] = m_p(A[i, c]) h[i, c, q]
and X[i, j] = A[i, c, j] over the element's nodes i,

    ∂L/∂T[z, c, p·j, q] = Σ_i U[(p, q), i] X[i, j]        (one product U @ X; p·j kept where j ≥ max(p))
    ∂L/∂T[z, c, 0, q]   = Σ_i h[i, c, q]                   (the constant row)

One program per (element, channel, block of prefixes) walks its element's nodes in chunks of BLOCK_K
(`launch.element_grouping`'s order) and accumulates U @ X in the product itself, on tensor cores for bf16
features: X exact in bf16, U (for tables of degree ≤ 3 a product of ≤ 2 bf16 numbers, exact in float32,
and the float32 h, rounded once)
as two bf16 terms U_hi + U_lo (bf16 rounds to 8 significant bits, a relative 2⁻⁸: residual ≤ 2⁻¹⁶|U|),
so every term is within 2⁻¹⁶ of its float32 value (fp32 features in a 16-bit mode, tests: X split too,
a third product U_hi·X_lo, within 3·2⁻¹⁶).
fp32 features: float32 products on the CUDA cores (`input_precision="ieee"`). Each entry is written once,
by one program, in node order (no atomics; the same result every run); the pairs (p, j) with j < max(p)
are not monomials of the table and are not stored. Elements with no nodes get zeros.

Where the row-by-row kernel of `table_gradient` forms every monomial of a node in registers and adds
them node after node (a chain of dependent steps per program), this kernel's serial chain is one product
per chunk of nodes. Float64 sums stay with the row-by-row kernel (`supports`).
"""

from __future__ import annotations

import torch

from lpmace.kernels.launch import element_blocks, launch_context, next_power_of_2
from lpmace.kernels.monomials import monomial_table
from lpmace.kernels.polynomial_dot import DOT_DTYPES, _degree_of_rows, _row_map

__all__ = ["supports", "table_gradient_by_prefix"]

ROWS = 128  # rows (p, q) of one program's product: prefixes per program = ROWS // q (at least one)
BLOCK_K = 32  # nodes per step
NUM_WARPS = 4
MAX_Q = 128
# Triton's interpreter runs programs one after another: on CPU tensors the operator takes the row-by-row
# kernel unless this is set (the tests of this kernel set it).
ON_CPU = False


def supports(a: torch.Tensor, index: torch.Tensor, h: torch.Tensor) -> bool:
    """Whether this kernel takes the call: float32 sums, a whole-degree table, q ≤ MAX_Q."""
    if a.device.type != "cuda" and not ON_CPU:
        return False
    degree = _degree_of_rows(int(a.shape[2]), int(index.shape[0]))
    return h.dtype == torch.float32 and degree >= 0 and next_power_of_2(int(h.shape[2])) <= MAX_Q


_KERNELS: dict = {}


def _kernel(interpret: bool):
    """The kernel, compiled for the GPU or wrapped for the CPU interpreter (triton.jit reads
    TRITON_INTERPRET when it wraps, so one of each, made on first use)."""
    if interpret not in _KERNELS:
        import triton
        import triton.language as tl

        @triton.jit
        def table_gradient_by_prefix_kernel(a_ptr, order_ptr, node_ptr, index_ptr, rows_ptr, h_ptr, out_ptr, C, D,
                                            R, Q, PREFIXES, NU: tl.constexpr, DP: tl.constexpr, QP: tl.constexpr,
                                            PB: tl.constexpr, BLOCK_K: tl.constexpr, DOT: tl.constexpr,
                                            SPLIT_X: tl.constexpr):
            block = tl.program_id(0)
            c = tl.program_id(1)
            z = tl.program_id(2)
            first = tl.load(node_ptr + z)
            last = tl.load(node_ptr + z + 1)
            pre = block * PB + tl.arange(0, PB)  # this program's prefixes (table rows of degree < the top)
            pre_ok = pre < PREFIXES
            q = tl.arange(0, QP)
            q_ok = q < Q
            j = tl.arange(0, DP)
            acc = tl.zeros((PB * QP, DP), tl.float32)
            h_sum = tl.zeros((QP,), tl.float32)
            for k0 in tl.range(first, last, BLOCK_K):
                slot = k0 + tl.arange(0, BLOCK_K)
                k_ok = slot < last
                node = tl.load(order_ptr + slot, mask=k_ok, other=0).to(tl.int64)
                base = node * C + c  # [BLOCK_K] row of A and h
                x = tl.load(a_ptr + base[:, None] * D + j[None, :], mask=k_ok[:, None] & (j < D)[None, :],
                            other=0.0).to(tl.float32)  # [BLOCK_K, DP]
                h = tl.load(h_ptr + base[:, None] * Q + q[None, :], mask=k_ok[:, None] & q_ok[None, :],
                            other=0.0).to(tl.float32)  # [BLOCK_K, QP]
                h_sum += tl.sum(h, axis=0)
                m = tl.full((PB, BLOCK_K), 1.0, tl.float32)  # each prefix's monomial of each node
                for v in tl.static_range(NU):
                    var = tl.load(index_ptr + pre * NU + v, mask=pre_ok, other=D)  # D: the constant 1
                    value = tl.load(a_ptr + base[None, :] * D + var[:, None], mask=(var < D)[:, None] & k_ok[None, :],
                                    other=1.0)
                    m = m * value.to(tl.float32)
                u = tl.reshape(m[:, None, :] * tl.trans(h)[None, :, :], (PB * QP, BLOCK_K))  # rows (p, q)
                if DOT == 0:
                    acc = tl.dot(u, x, acc, input_precision="ieee")
                elif DOT == 3:  # bf16 rounding to nearest even by hand: the interpreter's cast truncates
                    bits = u.to(tl.uint32, bitcast=True)
                    u_hi = ((bits + 0x7FFF + ((bits >> 16) & 1)) & 0xFFFF0000).to(tl.float32, bitcast=True)
                    bits = (u - u_hi).to(tl.uint32, bitcast=True)
                    u_lo = ((bits + 0x7FFF + ((bits >> 16) & 1)) & 0xFFFF0000).to(tl.float32, bitcast=True)
                    bits = x.to(tl.uint32, bitcast=True)
                    x_hi = ((bits + 0x7FFF + ((bits >> 16) & 1)) & 0xFFFF0000).to(tl.float32, bitcast=True)
                    bits = (x - x_hi).to(tl.uint32, bitcast=True)
                    x_lo = ((bits + 0x7FFF + ((bits >> 16) & 1)) & 0xFFFF0000).to(tl.float32, bitcast=True)
                    acc = tl.dot(u_hi, x_hi, acc, input_precision="ieee")
                    acc = tl.dot(u_lo, x_hi, acc, input_precision="ieee")
                    if SPLIT_X:
                        acc = tl.dot(u_hi, x_lo, acc, input_precision="ieee")
                else:
                    u_hi = u.to(tl.bfloat16)
                    u_lo = (u - u_hi.to(tl.float32)).to(tl.bfloat16)
                    x_hi = x.to(tl.bfloat16)
                    x_lo = (x - x_hi.to(tl.float32)).to(tl.bfloat16)
                    acc = tl.dot(u_hi, x_hi, acc)
                    acc = tl.dot(u_lo, x_hi, acc)
                    if SPLIT_X:
                        acc = tl.dot(u_hi, x_lo, acc)
            cell = (z * C + c).to(tl.int64) * R  # first table row of this element and channel
            row = tl.load(rows_ptr + pre[:, None] * DP + j[None, :], mask=pre_ok[:, None], other=-1)  # [PB, DP]
            offset = (cell + row[:, None, :]) * Q + q[None, :, None]  # [PB, QP, DP]
            tl.store(out_ptr + offset, tl.reshape(acc, (PB, QP, DP)), mask=(row >= 0)[:, None, :] & q_ok[None, :, None])
            if block == 0:
                tl.store(out_ptr + cell * Q + q, h_sum, mask=q_ok)

        _KERNELS[interpret] = table_gradient_by_prefix_kernel
    return _KERNELS[interpret]


def table_gradient_by_prefix(a: torch.Tensor, species: torch.Tensor, index: torch.Tensor, h: torch.Tensor,
                             elements: int, grouping: torch.Tensor | None = None, dot: int | None = None) -> torch.Tensor:
    """∂L/∂T [S, C, R, Q] float32 (shapes as `table_gradient`; h float32, a whole-degree table). `dot`
    overrides the operand mode of `polynomial_dot.DOT_DTYPES` (tests): 0 float32 products, 1 bf16 terms
    (fp16 terms, that kernel's mode 2, are not taken here: U's small residuals fall below fp16's normal
    range); `grouping` as `launch.element_grouping` forms it (None or empty: formed here)."""
    n, c, d = a.shape
    r, q = int(index.shape[0]), int(h.shape[2])
    out = torch.empty(elements, c, r, q, dtype=torch.float32, device=a.device)
    if n == 0 or elements * c * r * q == 0:
        return out.zero_()
    degree = _degree_of_rows(d, r)
    d_pad = max(16, next_power_of_2(d))  # a product's N is at least 16
    prefixes = monomial_table(d, degree).rows_up_to[degree - 1] if degree > 0 else 0
    rows = _row_map(d, degree, d_pad, a.device) if prefixes else torch.full((d_pad,), -1, dtype=torch.int32,
                                                                            device=a.device)
    q_pad = next_power_of_2(q)
    per_program = max(1, ROWS // q_pad, 16 // q_pad)  # a product's M is at least 16
    order, node_ptr, _, _ = element_blocks(species, elements, 1, grouping)
    interpret = a.device.type != "cuda"
    dot = min(DOT_DTYPES.get(a.dtype, 0), 1) if dot is None else dot
    if dot not in (0, 1):
        raise ValueError(f"table_gradient_by_prefix: operand mode {dot} is not 0 (float32) or 1 (bf16 terms)")
    dot = 3 if dot == 1 and interpret else dot
    grid = (max(1, (prefixes + per_program - 1) // per_program), c, elements)
    with launch_context(a.device):
        kernel = _kernel(a.device.type != "cuda")
        kernel[grid](a.contiguous(), order, node_ptr, index.to(torch.int32).contiguous(), rows, h.contiguous(), out,
                     c, d, r, q, prefixes, NU=max(int(index.shape[1]), 1), DP=d_pad, QP=q_pad, PB=per_program,
                     BLOCK_K=BLOCK_K, DOT=dot, SPLIT_X=a.dtype != torch.bfloat16, num_warps=NUM_WARPS)
    return out
