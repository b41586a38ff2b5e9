"""The gradient of the polynomial contraction's coefficient table: a sum over each element's nodes.

For the contraction out[i, c, o] = Σ_r m_r(A[i, c]) Σ_q T[s_i, c, r, o, q] G[i, c, q] of
`lpmace.kernels.polynomial` and a gradient ∂L/∂out, with h[i, c, (o, q)] = ∂L/∂out[i, c, o] G[i, c, q]:

    ∂L/∂T[z, c, r, p] = Σ_{i: s_i = z} m_r(A[i, c]) h[i, c, p]

The reference forms the monomials [n, C, R] and contracts them with a one-hot [n, S] of the species:
S times the work and an [n, C, R] tensor in memory (for MACE-MP-0's 89 elements, an 89-element
one-hot and 0.4 GB of monomials per layer and training step). The Triton kernel walks each element's
nodes (sorted by element, `launch.element_blocks`): one program per (element, run of its nodes, block
of rows and of p, block of channels) forms the monomials of its rows in registers, node by node, and
keeps the sums there; every entry is written once, by one program, in node order, and the runs' sums
are added in a fixed order (no atomics; the same result every run). Elements with no nodes get zeros.
Sums in float32, or float64 where h is float64.
Float32 sums of bf16 features go to `table_gradient_dot` instead by default (`BY_PREFIX` 1), on CUDA,
where it takes them (`table_gradient_dot.supports`: a whole-degree table, P ≤ 128): the same sums as
small products by prefix on tensor cores.

The kernel's result is not differentiable: `table_gradient` takes it only where autograd records
nothing (`torch.is_grad_enabled()` false, as in a backward pass without create_graph, which is how
training's parameter gradients are formed), and the reference everywhere else.
"""

from __future__ import annotations

import torch

from lpmace.kernels import table_gradient_dot
from lpmace.kernels.launch import element_blocks, launch_context, next_power_of_2, require_interpreter

__all__ = ["table_gradient", "table_gradient_reference"]


def table_gradient_reference(a: torch.Tensor, species: torch.Tensor, index: torch.Tensor, h: torch.Tensor,
                             elements: int) -> torch.Tensor:
    """∂L/∂T [S, C, R, P] in h's dtype, in differentiable PyTorch (monomials [n, C, R] in memory)."""
    from lpmace.kernels.polynomial import monomial_values

    values = monomial_values(a.to(h.dtype), index)  # [n, C, R]
    onehot = torch.nn.functional.one_hot(species, elements).to(h.dtype)
    return torch.einsum("iz,icr,icp->zcrp", onehot, values, h)


_KERNELS: dict = {}
# Few elements leave few programs, each walking many nodes one after another (a medium model's 4
# elements: 256 programs of ~216 nodes for a W1 batch). Each element's nodes are then cut into runs, one
# program each, until there are about PROGRAMS programs or runs of NODES nodes on average; the runs' sums
# are added afterwards, in a fixed order.
PROGRAMS = 4096
NODES = 32
# A program's tile: up to MAX_BLOCK_C channels, 16 of p, and rows up to ~SUMS sums in all (32 per thread
# of NUM_WARPS = 4 warps). Module constants: `benchmarks/contraction_kernels.py --table-gradient` sweeps them;
# H200, the four calls of a `medium` W1 step (contraction_in_dot_h200_mp_2026-12-03, calls B and C): 32
# channels and 8,192 sums 1.01 ms, 16 channels 0.89, 16 and 4,096 sums 0.84 (bf16 A; fp32 alike). Since
# BY_PREFIX 1 these tiles serve the sums of fp32, fp16 and float64 features (bf16 ones go by prefix).
SUMS = 4096
MAX_BLOCK_C = 16
NUM_WARPS = 4
# Which float32 sums go to `table_gradient_dot` (the same sums as products U @ X by prefix) where it takes
# them: 0 none, 1 those of bf16 features (their products on tensor cores), 2 all (float32 features' products
# in float32 on the CUDA cores). H200, the four calls of a `medium` W1 step (contraction_kernels.py
# --table-gradient, table_by_prefix_h200_mp_2026-12-03 call A), ms row by row → by prefix: bf16 features
# 0.845 → 0.576 (energy 0.252 → 0.124, 0.158 → 0.135; ∂A 0.335 → 0.253, 0.100 → 0.064); float32
# features 0.874 → 1.954, so they stay row by row.
BY_PREFIX = 1


def _kernel(interpret: bool):
    """The kernel, compiled for the GPU or wrapped for the CPU interpreter (triton.jit reads
    TRITON_INTERPRET when it wraps, so one of each, made on first use)."""
    if interpret not in _KERNELS:
        import triton
        import triton.language as tl

        @triton.jit
        def table_gradient_kernel(a_ptr, order_ptr, node_ptr, index_ptr, h_ptr, out_ptr, C, D, R, P, S,
                                  NU: tl.constexpr, CHUNKS, BLOCK_R: tl.constexpr,
                                  BLOCK_P: tl.constexpr, BLOCK_C: tl.constexpr, ACC: tl.constexpr):
            blocks_p = tl.cdiv(P, BLOCK_P)
            r = (tl.program_id(0) // blocks_p) * BLOCK_R + tl.arange(0, BLOCK_R)
            p = (tl.program_id(0) % blocks_p) * BLOCK_P + tl.arange(0, BLOCK_P)
            c = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
            z = tl.program_id(2) // CHUNKS
            chunk = tl.program_id(2) % CHUNKS
            r_ok, p_ok, c_ok = r < R, p < P, c < C
            first = tl.load(node_ptr + z)
            last = tl.load(node_ptr + z + 1)
            length = (last - first + CHUNKS - 1) // CHUNKS  # the element's nodes cut into CHUNKS runs
            start = first + chunk * length
            end = tl.minimum(start + length, last)
            acc = tl.zeros((BLOCK_R, BLOCK_P, BLOCK_C), ACC)
            for j in tl.range(start, end):
                node = tl.load(order_ptr + j).to(tl.int64)
                row = node * C + c  # [BLOCK_C]
                mono = tl.full((BLOCK_R, BLOCK_C), 1.0, ACC)
                for k in tl.static_range(NU):  # the row's variables; D (padding) is the constant 1
                    var = tl.load(index_ptr + r * NU + k, mask=r_ok, other=D)
                    real = (var < D)[:, None] & c_ok[None, :]
                    mono = mono * tl.load(a_ptr + row[None, :] * D + var[:, None], mask=real, other=1.0).to(ACC)
                h = tl.load(h_ptr + row[None, :] * P + p[:, None], mask=p_ok[:, None] & c_ok[None, :],
                            other=0.0).to(ACC)  # [BLOCK_P, BLOCK_C]
                acc += mono[:, None, :] * h[None, :, :]
            cell = (chunk.to(tl.int64) * S + z) * C + c[None, None, :]  # of [CHUNKS, S, C, R, P]
            offset = (cell * R + r[:, None, None]) * P + p[None, :, None]
            tl.store(out_ptr + offset, acc, mask=r_ok[:, None, None] & p_ok[None, :, None] & c_ok[None, None, :])

        _KERNELS[interpret] = table_gradient_kernel
    return _KERNELS[interpret]


def _triton(a: torch.Tensor, species: torch.Tensor, index: torch.Tensor, h: torch.Tensor,
            elements: int, grouping: torch.Tensor | None = None) -> torch.Tensor:
    import triton.language as tl

    n, c, d = a.shape
    r, p = index.shape[0], h.shape[2]
    if n == 0 or elements * c * r * p == 0:
        return h.new_zeros(elements, c, r, p)
    require_interpreter(a.device)
    if (BY_PREFIX == 2 or (BY_PREFIX == 1 and a.dtype == torch.bfloat16)) and table_gradient_dot.supports(a, index, h):
        return table_gradient_dot.table_gradient_by_prefix(a, species, index, h, elements, grouping)
    block_p = min(next_power_of_2(p), 16)
    block_c = min(max(next_power_of_2(c), 2), MAX_BLOCK_C)
    block_r = max(1, min(64, SUMS // (block_p * block_c)))  # [R, P, C] sums of one program
    block_r = 1 << (block_r.bit_length() - 1)
    order, node_ptr, _, _ = element_blocks(species, elements, 1, grouping)
    programs = _cdiv(r, block_r) * _cdiv(p, block_p) * _cdiv(c, block_c) * elements
    chunks = max(1, min(_cdiv(PROGRAMS, programs), n // (elements * NODES)))
    parts = h.new_empty(chunks, elements, c, r, p)
    grid = (_cdiv(r, block_r) * _cdiv(p, block_p), _cdiv(c, block_c), elements * chunks)
    with launch_context(a.device):
        kernel = _kernel(a.device.type != "cuda")
        kernel[grid](a.contiguous(), order, node_ptr, index.to(torch.int32).contiguous(), h.contiguous(), parts,
                     c, d, r, p, elements, NU=index.shape[1], CHUNKS=chunks, BLOCK_R=block_r, BLOCK_P=block_p,
                     BLOCK_C=block_c, ACC=tl.float64 if h.dtype == torch.float64 else tl.float32,
                     num_warps=NUM_WARPS)
    return parts[0] if chunks == 1 else parts.sum(0)


def _cdiv(x: int, y: int) -> int:
    return (x + y - 1) // y


@torch.library.custom_op("lpmace::table_gradient", mutates_args=())
def _table_gradient(a: torch.Tensor, species: torch.Tensor, index: torch.Tensor, h: torch.Tensor,
                    elements: int, grouping: torch.Tensor) -> torch.Tensor:
    return _triton(a, species, index, h, elements, grouping)


@_table_gradient.register_fake
def _(a, species, index, h, elements, grouping):
    return h.new_empty(elements, a.shape[1], index.shape[0], h.shape[2])


def table_gradient(a: torch.Tensor, species: torch.Tensor, index: torch.Tensor, h: torch.Tensor, elements: int,
                   impl: str = "reference", grouping: torch.Tensor | None = None) -> torch.Tensor:
    """∂L/∂T [S, C, R, P] (h's dtype: float32 or float64) from A [n, C, D] (any float dtype, widened to
    h's), species [n] in [0, S), monomial rows index [R, ν] (padded with D) and h [n, C, P]. impl
    "triton" runs the kernel where autograd records nothing (see the module's docstring), else the
    reference. `grouping`: `launch.element_grouping(species, elements)` if the caller has it (the
    kernel's order of the nodes; None or empty: formed here)."""
    if impl == "triton" and not torch.is_grad_enabled():
        if grouping is None:
            grouping = species.new_zeros(0, dtype=torch.int64)
        return _table_gradient(a, species, index, h, elements, grouping)
    return table_gradient_reference(a, species, index, h, elements)
