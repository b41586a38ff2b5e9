"""The polynomial contraction (lpmace.kernels.polynomial, Eq. 1) as a sum of small matrix products.

Every monomial of degree d ≥ 1 is, in exactly one way, a monomial of degree d − 1 (its prefix p) times
its largest variable j. So for one node and channel

    Σ_r m_r(A) T[r, n] = T[1, n] + Σ_p m_p(A) Σ_j A_j T[p·j, n]      (T[p·j] := 0 unless j ≥ max(p))

and for a block of 64 same-element nodes of one channel that is, per prefix p, one small matrix product
of the features X [nodes, D] with the table rows of p·j, T_p [D, (o, q)]. No monomial is formed per row
(the row-by-row kernel gathers each of its ν factors):

- bf16 features: products on tensor cores, Y_p = X @ T_p scaled by the prefix values m_p [nodes] and
  summed into the accumulator. X is exact in bf16; the fp32 table goes in as two bf16 terms
  T = T_hi + T_lo (X·T_hi + X·T_lo, each exact in fp32; bf16 rounds to 8 significant bits, a relative
  2⁻⁸, so the residual is ≤ 2⁻¹⁶|T|): every term is within 2⁻¹⁶ of its value in fp32 arithmetic, next to
  the 2⁻⁸ of the bf16 features themselves, and the table is never rounded to 16 bits (DESIGN rule 2).
  fp32 features given to a 16-bit mode (tests) are split the same way, with a third product X_lo·T_hi
  (within 3·2⁻¹⁶);
- fp32 (and fp16) features: fp32 products on the CUDA cores (`input_precision="ieee"`: no TF32) of
  U_p = m_p X with T_p, accumulated inside the product (acc = U_p @ T_p + acc). For bf16 features that
  form was slower on the H200 and less exact (U_p = m_p X is not one bf16 number: a split of U and a
  dropped U_lo·T_lo), so they keep the product-then-scale form (session 39).

The epilogue sums over q with G in fp32 and writes each output once. Padding (j ≥ D, prefixes past the
last, o and q past their counts) is masked to zero. Float64 stays with the row-by-row kernel.
"""

from __future__ import annotations

import torch

from lpmace.kernels.launch import element_blocks, launch_context, next_power_of_2
from lpmace.kernels.monomials import monomial_table

__all__ = ["DOT_DTYPES", "supports", "contraction_by_prefix"]

# products per feature dtype: 0 = fp32 on the CUDA cores, 1 = bf16 terms on tensor cores, 2 = the same
# in fp16 (tests). Triton's interpreter gets bf16 products wrong (DESIGN.md), so under it mode 1
# becomes 3: the same bf16 terms, multiplied in fp32 (exact for bf16 products, as on the GPU).
DOT_DTYPES = {torch.bfloat16: 1, torch.float32: 0, torch.float16: 0}

BLOCK_N = 64  # nodes per program: the M of one tensor-core product (wgmma needs 64)
MAX_COLUMNS = 128  # columns (o, q) of one program's products
MAX_PREFIXES = 32  # longer prefix loops go to the row-by-row kernel (see `supports`)
# Triton's interpreter runs programs one after another in Python, and this kernel has one per channel
# (the row kernel one per 32): on CPU tensors the operator takes the row kernel unless this is set
# (the tests of this kernel set it).
ON_CPU = False
# Tile: H200, the six prefix-kernel calls of a `medium` W1 step (benchmarks/contraction_kernels.py --old, --sweep,
# contraction_in_dot_h200_mp_2026-12-03, calls B and C): no software pipelining (∂A, 4 outputs, bf16 features:
# 0.311 ms at 3 stages, 0.170 at 1; fp32 features, accumulating inside the product: 0.290 → 0.236); 128 nodes
# per program was faster for bf16 features in the accumulate-inside form (0.154 against 0.203 ms) and no faster
# for fp32; the prefix loop unrolled by 2 gained 0.01–0.02 ms a call on fp32 (∂A 0.239 → 0.224, ∂G of ∂A
# 0.172 → 0.160), by 4–8 lost up to 0.034: UNROLL, for fp32 features (the product-then-scale form of bf16
# features was timed at 1 only, and runs at 1).
NUM_WARPS = 4
NUM_STAGES = 1
UNROLL = 2  # the fp32 form's prefix loop unroll factor (tl.range's loop_unroll_factor)


def supports(a: torch.Tensor, table: torch.Tensor, acc: torch.dtype) -> bool:
    """Whether this kernel takes the call: fp32 sums, a whole-degree table of at most MAX_PREFIXES
    prefixes, q padded to ≤ MAX_COLUMNS.

    The prefix loop is serial within a program, so a degree-3 table of 16 components (153 prefixes:
    the forward call of a correlation-3 model) is left to the row-by-row kernel, which was faster
    there on the H200 (0.65 against 0.98 ms bf16 / 1.12 ms fp32 at the medium W1 size); the
    derivative calls (17 and 1 prefixes, 16–1024 columns) run 1.2–5.6× faster here
    (benchmarks/results/contraction_prefix_h200_2026-12-02)."""
    if a.device.type != "cuda" and not ON_CPU:
        return False
    d, rows = int(a.shape[2]), int(table.shape[2])
    degree = _degree_of_rows(d, rows)
    return (acc == torch.float32 and degree >= 0 and next_power_of_2(int(table.shape[4])) <= MAX_COLUMNS
            and (degree == 0 or monomial_table(d, degree).rows_up_to[degree - 1] <= MAX_PREFIXES))


def _degree_of_rows(d: int, rows: int) -> int:
    """The degree whose monomials of degree ≤ it number `rows` (−1 if none)."""
    degree, count = 0, 1
    while count < rows:
        degree += 1
        count = count * (d + degree) // degree  # C(d + k, k)
    return degree if count == rows else -1


_ROW_MAPS: dict = {}


def _row_map(d: int, degree: int, d_pad: int, device: torch.device) -> torch.Tensor:
    """[P·d_pad] int32: the table row of prefix p times variable j at p·d_pad + j, −1 where p·j is not a
    monomial of the sum (j ≥ d, or j < the prefix's largest variable). P = monomials of degree < degree.

    Made on first use and kept per device: the first call of a shape runs before any CUDA-graph
    recording (the trainer's and torch's first steps are eager), so no copy happens inside one."""
    key = (d, degree, d_pad, device)
    if key not in _ROW_MAPS:
        monomials = monomial_table(d, degree)
        prefixes = list(monomials.row)[: monomials.rows_up_to[degree - 1]]
        rows = [monomials.row[p + (j,)] if j < d and (not p or j >= p[-1]) else -1 for p in prefixes for j in range(d_pad)]
        _ROW_MAPS[key] = torch.tensor(rows, dtype=torch.int32).to(device)
    return _ROW_MAPS[key]


_KERNELS: dict = {}


def _kernel(interpret: bool):
    if interpret not in _KERNELS:
        import triton
        import triton.language as tl

        def contraction_by_prefix(a_ptr, order_ptr, node_ptr, block_ptr, index_ptr, rows_ptr, table_ptr, g_ptr,
                                  out_ptr, C, D, R, O, Q, S: tl.constexpr, P: tl.constexpr, NU: tl.constexpr,
                                  DP: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_O: tl.constexpr, QP: tl.constexpr,
                                  DOT: tl.constexpr, SPLIT_X: tl.constexpr, UNROLL: tl.constexpr):
            p_id = tl.program_id(0)
            s = 0
            for z in tl.static_range(S):  # this program's element: the number of elements it is past
                s += (tl.load(block_ptr + z + 1) <= p_id).to(tl.int32)
            s = tl.minimum(s, S - 1)
            first = tl.load(node_ptr + s) + (p_id - tl.load(block_ptr + s)) * BLOCK_N
            slot = first + tl.arange(0, BLOCK_N)
            end = tl.load(node_ptr + s + 1)
            if first >= end:  # a program past its element's last block (the grid is an upper bound)
                return
            n_ok = slot < end
            node = tl.load(order_ptr + slot, mask=n_ok, other=0).to(tl.int64)
            c = tl.program_id(1)
            base = node * C + c  # [BLOCK_N] row of A, G and out
            j = tl.arange(0, DP)
            x = tl.load(a_ptr + base[:, None] * D + j[None, :], mask=n_ok[:, None] & (j < D)[None, :],
                        other=0.0).to(tl.float32)  # [BLOCK_N, DP]
            if DOT == 3:  # bf16 rounding to nearest even by hand: the interpreter's cast truncates
                bits = x.to(tl.uint32, bitcast=True)
                x_hi = ((bits + 0x7FFF + ((bits >> 16) & 1)) & 0xFFFF0000).to(tl.float32, bitcast=True)
                bits = (x - x_hi).to(tl.uint32, bitcast=True)
                x_lo = ((bits + 0x7FFF + ((bits >> 16) & 1)) & 0xFFFF0000).to(tl.float32, bitcast=True)
            elif DOT != 0:
                x_hi = x.to(tl.bfloat16 if DOT == 1 else tl.float16)
                x_lo = (x - x_hi.to(tl.float32)).to(tl.bfloat16 if DOT == 1 else tl.float16)
            col = tl.arange(0, BLOCK_O * QP)
            o = tl.program_id(2) * BLOCK_O + col // QP
            q = col % QP
            col_ok = (o < O) & (q < Q)
            slice_ = (s * C + c).to(tl.int64) * R  # first row of this element's and channel's table
            t0 = tl.load(table_ptr + slice_ * O * Q + o * Q + q, mask=col_ok, other=0.0).to(tl.float32)
            acc = tl.zeros((BLOCK_N, BLOCK_O * QP), tl.float32) + t0[None, :]  # the constant row
            for p in tl.range(0, P, loop_unroll_factor=UNROLL):
                m = tl.full((BLOCK_N,), 1.0, tl.float32)  # the prefix monomial of each node
                for v in tl.static_range(NU):
                    var = tl.load(index_ptr + p * NU + v + tl.zeros((BLOCK_N,), tl.int32))  # D: the constant 1
                    value = tl.load(a_ptr + base * D + var, mask=n_ok & (var < D), other=1.0)
                    m = m * value.to(tl.float32)
                row = tl.load(rows_ptr + p * DP + j)
                t = tl.load(table_ptr + (slice_ + row[:, None]) * O * Q + (o * Q + q)[None, :],
                            mask=(row >= 0)[:, None] & col_ok[None, :], other=0.0).to(tl.float32)  # [DP, cols]
                if DOT == 0:  # fp32: the monomials p·j of each node, accumulated inside the product
                    acc = tl.dot(x * m[:, None], t, acc, input_precision="ieee")
                else:
                    if DOT == 3:
                        bits = t.to(tl.uint32, bitcast=True)
                        t_hi = ((bits + 0x7FFF + ((bits >> 16) & 1)) & 0xFFFF0000).to(tl.float32, bitcast=True)
                        bits = (t - t_hi).to(tl.uint32, bitcast=True)
                        t_lo = ((bits + 0x7FFF + ((bits >> 16) & 1)) & 0xFFFF0000).to(tl.float32, bitcast=True)
                        y = tl.dot(x_hi, t_hi, input_precision="ieee")
                        y = tl.dot(x_hi, t_lo, y, input_precision="ieee")
                        if SPLIT_X:
                            y = tl.dot(x_lo, t_hi, y, input_precision="ieee")
                    else:
                        t_hi = t.to(tl.bfloat16 if DOT == 1 else tl.float16)
                        t_lo = (t - t_hi.to(tl.float32)).to(tl.bfloat16 if DOT == 1 else tl.float16)
                        y = tl.dot(x_hi, t_hi)
                        y = tl.dot(x_hi, t_lo, y)
                        if SPLIT_X:
                            y = tl.dot(x_lo, t_hi, y)
                    acc += m[:, None] * y
            gq = tl.load(g_ptr + base[:, None] * Q + q[None, :], mask=n_ok[:, None] & (q < Q)[None, :],
                         other=0.0).to(tl.float32)
            result = tl.sum(tl.reshape(acc * gq, (BLOCK_N, BLOCK_O, QP)), axis=2)
            o_out = tl.program_id(2) * BLOCK_O + tl.arange(0, BLOCK_O)
            tl.store(out_ptr + base[:, None] * O + o_out[None, :], result, mask=n_ok[:, None] & (o_out < O)[None, :])

        _KERNELS[interpret] = triton.jit(contraction_by_prefix)
    return _KERNELS[interpret]


def contraction_by_prefix(a, species, index, table, g, dot: int | None = None,
                          grouping: torch.Tensor | None = None) -> torch.Tensor:
    """Eq. (1) of lpmace.kernels.polynomial in fp32 (shapes as there; any whole-degree table, though
    `supports` sends only short prefix loops here), by prefix blocks. `dot` overrides the operand mode
    of DOT_DTYPES (tests); `grouping` as `launch.element_blocks` takes it."""
    n, c, d = a.shape
    s, _, r, o, q = table.shape
    out = torch.empty(n, c, o, dtype=torch.float32, device=a.device)
    if n == 0 or c == 0 or o == 0:
        return out.zero_()
    degree = _degree_of_rows(d, r)
    d_pad = max(16, next_power_of_2(d))  # a product's K is at least 16
    prefixes = monomial_table(d, degree).rows_up_to[degree - 1] if degree > 0 else 0
    rows = _row_map(d, degree, d_pad, a.device) if prefixes else torch.full((1,), -1, dtype=torch.int32, device=a.device)
    q_pad = next_power_of_2(q)
    block_o = max(1, min(next_power_of_2(o), MAX_COLUMNS // 2 // q_pad))
    block_o = max(block_o, 16 // q_pad)  # a product's N is at least 16
    order, node_ptr, block_ptr, programs = element_blocks(species, s, BLOCK_N, grouping)
    grid = (programs, c, (o + block_o - 1) // block_o)
    interpret = a.device.type != "cuda"
    dot = DOT_DTYPES.get(a.dtype, 0) if dot is None else dot
    dot = 3 if dot == 1 and interpret else dot
    with launch_context(a.device):
        _kernel(interpret)[grid](
            a.contiguous(), order, node_ptr, block_ptr, index.to(torch.int32).contiguous(), rows, table.contiguous(),
            g.contiguous(), out, c, d, r, o, q, S=s, P=prefixes, NU=max(int(index.shape[1]), 1), DP=d_pad,
            BLOCK_N=BLOCK_N, BLOCK_O=block_o, QP=q_pad, SPLIT_X=a.dtype != torch.bfloat16,
            DOT=dot, UNROLL=UNROLL if dot == 0 else 1, num_warps=NUM_WARPS, num_stages=NUM_STAGES)
    return out
