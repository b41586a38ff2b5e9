"""Convolution tensor product: the neighbour sum of MACE Eq. 8 as one 4-linear form, and its kernels.

Edges e run from src_e to dst_e. With node features X [N, C, I], per-edge coupling tables
T [E, I, O] (T[e, i, o] = Σ_b Y_b(r̂_e) CG[i, b, o]: spherical harmonics contracted with the
Clebsch–Gordan table of every path) and radial weights W [E, P, C] (one per edge, path and channel;
output column o belongs to path p(o)), the interaction's message is

    M[n, c, o] = Σ_{e: dst_e = n} W[e, p(o), c] Σ_i X[src_e, c, i] T[e, i, o]                     (1)

(1) is ∂L/∂G of the 4-linear form

    L(G, X, T, W) = Σ_e Σ_c Σ_{i, o} G[dst_e, c, o] X[src_e, c, i] T[e, i, o] W[e, p(o), c]        (2)

and every derivative of (1), to any order, is a partial derivative of (2) with some arguments
replaced by cotangents:

    conv_node(to_src=False)   ∂L/∂G, node output summed over the edges into each node   (= (1))
    conv_node(to_src=True)    ∂L/∂X, node output summed over the edges out of each node
    conv_edge                 ∂L/∂T [E, I, O] and ∂L/∂W [E, P, C], one output row per edge

Each operator registers its backward in terms of the two (see `_node_backward`, `_edge_backward`),
so forces (first derivative) and the force loss's parameter gradients (second derivative) run
through the same kernels, and no [E, C, O] tensor is ever formed.

The node sums walk each node's edges in a fixed order (CSR segments, `EdgeSegments`): no atomics,
the same result every run.

Numerics: X and W may be 16-bit; every load is converted to the accumulation dtype `acc` (an argument:
float32 or float64; the block passes its policy's, see `PrecisionPolicy.block`), T is at least float32
(it holds the spherical harmonics and CG coefficients), and outputs come in `acc`.

Implementations: "reference" (PyTorch, forms [E, C, O] products; the definition the kernels are
tested against) and "triton" (`convolution_tiles`: node sums walk each node's edges in pipelined
tiles, edge outputs take tiles of receiver-ordered edges). The Triton kernels run on CUDA tensors,
or on CPU tensors under TRITON_INTERPRET=1 (slow; for tests).
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from lpmace.errors import InputError
from lpmace.kernels.convolution_tiles import edge_triton, node_triton

__all__ = ["EdgeSegments", "conv_edge", "conv_node", "conv_tensor_product", "edge_segments"]


class EdgeSegments(NamedTuple):
    """The edges of a graph grouped by receiving and by sending node (CSR): edge ids
    dst_perm[dst_ptr[n]:dst_ptr[n+1]] end at node n, src_perm[src_ptr[n]:src_ptr[n+1]] start there."""

    src: torch.Tensor
    dst: torch.Tensor
    dst_ptr: torch.Tensor
    dst_perm: torch.Tensor
    src_ptr: torch.Tensor
    src_perm: torch.Tensor


def _segments(index: torch.Tensor, num_nodes: int):
    perm = torch.argsort(index, stable=True)
    # ptr[n] = number of edges with index < n. searchsorted, not bincount: no host sync and no
    # data-dependent shape, so the backend "compiled" can trace it and CUDA graphs can capture it.
    nodes = torch.arange(num_nodes + 1, dtype=index.dtype, device=index.device)
    ptr = torch.searchsorted(torch.index_select(index, 0, perm), nodes)
    return ptr, perm


def edge_segments(edge_index: torch.Tensor, num_nodes: int) -> EdgeSegments:
    """CSR groupings of edge_index [2, E] (row 0 senders, row 1 receivers) over num_nodes nodes."""
    src, dst = edge_index[0].contiguous(), edge_index[1].contiguous()  # the kernels read them with stride 1
    return EdgeSegments(src, dst, *_segments(dst, num_nodes), *_segments(src, num_nodes))


ACCUMULATE = (torch.float32, torch.float64)


def _acc(acc, *tensors: torch.Tensor) -> torch.dtype:
    """`acc` checked, or when None the widest the inputs need: float64 if one is float64, else float32."""
    if acc is None:
        return torch.float64 if any(t.dtype == torch.float64 for t in tensors) else torch.float32
    if acc not in ACCUMULATE:
        raise InputError(f"the conv tensor product accumulates in float32 or float64, not {acc}")
    return acc


# ---- reference ---------------------------------------------------------------------------------------

def _expand(w: torch.Tensor, pcol: torch.Tensor) -> torch.Tensor:
    """W [E, P, C] -> [E, C, O]: the weight of each output column's path."""
    return torch.index_select(w, 1, pcol).transpose(1, 2)


def node_reference(f, t, w, pcol, seg: EdgeSegments, to_src: bool, acc: torch.dtype) -> torch.Tensor:
    """conv_node in plain PyTorch (differentiable; forms [E, C, ·] products)."""
    f, t, w = f.to(acc), t.to(acc), w.to(acc)
    n = seg.dst_ptr.shape[0] - 1
    if to_src:  # f = G [N, C, O]: out[n, c, i] = Σ_{e: src=n} Σ_o G[dst,c,o] W[e,p(o),c] T[e,i,o]
        gw = torch.index_select(f, 0, seg.dst) * _expand(w, pcol)
        per_edge = torch.bmm(gw, t.transpose(1, 2))
        return torch.zeros(n, f.shape[1], t.shape[1], dtype=acc, device=f.device).index_add(0, seg.src, per_edge)
    per_edge = torch.bmm(torch.index_select(f, 0, seg.src), t) * _expand(w, pcol)
    return torch.zeros(n, f.shape[1], t.shape[2], dtype=acc, device=f.device).index_add(0, seg.dst, per_edge)


def edge_reference(g, x, t, w, pcol, seg: EdgeSegments, want_t: bool, want_w: bool, acc: torch.dtype):
    """conv_edge in plain PyTorch: (∂L/∂T [E, I, O] or empty, ∂L/∂W [E, P, C] or empty)."""
    g, x, t, w = g.to(acc), x.to(acc), t.to(acc), w.to(acc)
    g_e, x_e = torch.index_select(g, 0, seg.dst), torch.index_select(x, 0, seg.src)
    d_t = d_w = g.new_zeros(0)
    if want_t:
        d_t = torch.einsum("eci,eco->eio", x_e, g_e * _expand(w, pcol))
    if want_w:
        v = g_e * torch.bmm(x_e, t)  # [E, C, O]
        d_w = torch.zeros(w.shape[0], w.shape[2], w.shape[1], dtype=acc, device=w.device)
        d_w = d_w.index_add(2, pcol, v).transpose(1, 2).contiguous()
    return d_t, d_w


# ---- the operators and their derivatives --------------------------------------------------------------

@torch.library.custom_op("lpmace::conv_node", mutates_args=())
def _conv_node(f: torch.Tensor, t: torch.Tensor, w: torch.Tensor, pcol: torch.Tensor, src: torch.Tensor,
               dst: torch.Tensor, dst_ptr: torch.Tensor, dst_perm: torch.Tensor, src_ptr: torch.Tensor,
               src_perm: torch.Tensor, to_src: bool, impl: str, acc: torch.dtype) -> torch.Tensor:
    seg = EdgeSegments(src, dst, dst_ptr, dst_perm, src_ptr, src_perm)
    if impl == "triton":
        return node_triton(f, t, w, pcol, seg, to_src, acc)
    with torch.no_grad():
        return node_reference(f, t, w, pcol, seg, to_src, acc)


@_conv_node.register_fake
def _(f, t, w, pcol, src, dst, dst_ptr, dst_perm, src_ptr, src_perm, to_src, impl, acc):
    k_out = t.shape[1] if to_src else t.shape[2]
    return f.new_empty(dst_ptr.shape[0] - 1, f.shape[1], k_out, dtype=acc)


@torch.library.custom_op("lpmace::conv_edge", mutates_args=())
def _conv_edge(g: torch.Tensor, x: torch.Tensor, t: torch.Tensor, w: torch.Tensor, pcol: torch.Tensor,
               src: torch.Tensor, dst: torch.Tensor, dst_ptr: torch.Tensor, dst_perm: torch.Tensor,
               src_ptr: torch.Tensor, src_perm: torch.Tensor, want_t: bool, want_w: bool,
               impl: str, acc: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    seg = EdgeSegments(src, dst, dst_ptr, dst_perm, src_ptr, src_perm)
    if impl == "triton":
        return edge_triton(g, x, t, w, pcol, seg, want_t, want_w, acc)
    with torch.no_grad():
        return edge_reference(g, x, t, w, pcol, seg, want_t, want_w, acc)


@_conv_edge.register_fake
def _(g, x, t, w, pcol, src, dst, dst_ptr, dst_perm, src_ptr, src_perm, want_t, want_w, impl, acc):
    d_t = t.new_empty(t.shape, dtype=acc) if want_t else t.new_empty(0, dtype=acc)
    d_w = w.new_empty(w.shape, dtype=acc) if want_w else w.new_empty(0, dtype=acc)
    return d_t, d_w


def _node_setup(ctx, inputs, output):
    f, t, w, pcol, *seg, to_src, impl, acc = inputs
    ctx.save_for_backward(f, t, w, pcol, *seg)
    ctx.to_src, ctx.impl, ctx.acc = to_src, impl, acc


def _node_backward(ctx, grad):
    f, t, w, pcol, *seg = ctx.saved_tensors
    d_f = d_t = d_w = None
    need_f, need_t, need_w = ctx.needs_input_grad[:3]
    if need_f:  # the other node output of (2), with the cotangent in this output's slot
        d_f = _conv_node(grad, t, w, pcol, *seg, not ctx.to_src, ctx.impl, ctx.acc).to(f.dtype)
    if need_t or need_w:
        g, x = (f, grad) if ctx.to_src else (grad, f)
        d_t, d_w = _conv_edge(g, x, t, w, pcol, *seg, need_t, need_w, ctx.impl, ctx.acc)
        d_t = d_t.to(t.dtype) if need_t else None
        d_w = d_w.to(w.dtype) if need_w else None
    return d_f, d_t, d_w, None, None, None, None, None, None, None, None, None, None


def _edge_setup(ctx, inputs, output):
    g, x, t, w, pcol, *seg, want_t, want_w, impl, acc = inputs
    ctx.save_for_backward(g, x, t, w, pcol, *seg)
    ctx.want_t, ctx.want_w, ctx.impl, ctx.acc = want_t, want_w, impl, acc


def _edge_backward(ctx, grad_t, grad_w):
    """(2) with T := grad_t (from the ∂T output) and W := grad_w (from the ∂W output)."""
    g, x, t, w, pcol, *seg = ctx.saved_tensors
    need_g, need_x, need_t, need_w = ctx.needs_input_grad[:4]
    terms = []  # (T, W) pairs whose forms are summed
    if ctx.want_t:
        terms.append((grad_t, w))
    if ctx.want_w:
        terms.append((t, grad_w))
    d_g = d_x = d_t = d_w = None
    if need_g:
        d_g = sum(_conv_node(x, tt, ww, pcol, *seg, False, ctx.impl, ctx.acc) for tt, ww in terms).to(g.dtype)
    if need_x:
        d_x = sum(_conv_node(g, tt, ww, pcol, *seg, True, ctx.impl, ctx.acc) for tt, ww in terms).to(x.dtype)
    if need_t and ctx.want_w:
        d_t = _conv_edge(g, x, t, grad_w, pcol, *seg, True, False, ctx.impl, ctx.acc)[0].to(t.dtype)
    if need_w and ctx.want_t:
        d_w = _conv_edge(g, x, grad_t, w, pcol, *seg, False, True, ctx.impl, ctx.acc)[1].to(w.dtype)
    if need_t and d_t is None:
        d_t = torch.zeros_like(t)
    if need_w and d_w is None:
        d_w = torch.zeros_like(w)
    return (d_g, d_x, d_t, d_w) + (None,) * 11


_conv_node.register_autograd(_node_backward, setup_context=_node_setup)
_conv_edge.register_autograd(_edge_backward, setup_context=_edge_setup)


def conv_node(f, t, w, pcol, seg: EdgeSegments, to_src: bool = False, impl: str = "reference",
              acc: torch.dtype | None = None) -> torch.Tensor:
    """A node output of form (2): ∂L/∂G [N, C, O] (to_src=False, f = X [N, C, I]) or ∂L/∂X [N, C, I]
    (to_src=True, f = G [N, C, O]); t [E, I, O], w [E, P, C], pcol [O] int64 path of each column;
    `acc` as in `conv_tensor_product`."""
    return _conv_node(f, t, w, pcol, *seg, to_src, impl, _acc(acc, f, t, w))


def conv_edge(g, x, t, w, pcol, seg: EdgeSegments, want_t: bool = True, want_w: bool = True,
              impl: str = "reference", acc: torch.dtype | None = None):
    """The edge outputs of form (2): (∂L/∂T [E, I, O], ∂L/∂W [E, P, C]); an unwanted one is empty."""
    return _conv_edge(g, x, t, w, pcol, *seg, want_t, want_w, impl, _acc(acc, g, x, t, w))


def conv_tensor_product(x: torch.Tensor, t: torch.Tensor, w: torch.Tensor, pcol: torch.Tensor,
                        seg: EdgeSegments, impl: str = "reference", acc: torch.dtype | None = None) -> torch.Tensor:
    """Equation (1): the message [N, C, O], differentiable to any order in x, t and w.

    Args:
        x: [N, C, I] sender features (16-bit allowed).
        t: [E, I, O] coupling tables (float32 or float64).
        w: [E, P, C] radial weights per path (16-bit allowed).
        pcol: [O] int64, the path of each output column.
        seg: `edge_segments(edge_index, N)`.
        impl: "reference" or "triton".
        acc: the accumulation dtype (float32 or float64): every load is widened to it and the sums run in
            it; None: float64 when an input is float64, else float32.

    Returns:
        [N, C, O] in `acc`.
    """
    if impl not in ("reference", "triton"):
        raise InputError(f"conv tensor product implementation must be 'reference' or 'triton', got {impl!r}")
    return _conv_node(x, t, w, pcol, *seg, False, impl, _acc(acc, x, t, w))


def flop_count(f_shape, t_shape, w_shape, *args, out_shape=None, **kwargs) -> int:
    """FLOPs of one conv_node call (2 per edge, channel, input and output column, plus the weight)."""
    e, i, o = t_shape
    return e * f_shape[1] * (2 * i * o + o)
