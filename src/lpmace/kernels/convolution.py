"""Convolution tensor product: the neighbour sum of MACE Eq. 8 as one 4-linear form, and its kernels.

Edges e run from src_e to dst_e. With node features X [N, C, I], spherical harmonics Y [E, B] of the
edge directions, radial weights W [E, P, C] (one per edge, path and channel) and the Clebsch–Gordan
table CG [I, B, O] of the paths (l1, l2, l3) of features of degree <= lmax_in and harmonics of degree
<= max_ell (`lpmace.o3.clebsch_gordan.conv_coupling_table`; output column o belongs to path p(o)),
the interaction's message is

    M[n, c, o] = Σ_{e: dst_e = n} W[e, p(o), c] Σ_{i, b} X[src_e, c, i] Y[e, b] CG[i, b, o]           (1)

(1) is ∂L/∂G of the 4-linear form

    L(G, X, Y, W) = Σ_e Σ_c Σ_{i, b, o} G[dst_e, c, o] X[src_e, c, i] Y[e, b] CG[i, b, o] W[e, p(o), c]   (2)

and every derivative of (1), to any order, is a partial derivative of (2) with some arguments
replaced by cotangents. Two operators compute them:

    conv_message   ∂L/∂G [N, C, O]: the message (1), summed over the edges into each node
    conv_grads     ∂L/∂X [N, C, I] (summed over the edges out of each node), ∂L/∂Y [E, B] and
                   ∂L/∂W [E, P, C] (one row per edge): any subset, in one pass, each summed in `acc`
                   and rounded once to its input's dtype (as autograd would return it)

Each registers its backward in terms of the two (`_message_backward`, `_grads_backward`), so forces
(first derivative) and the force loss's parameter gradients (second derivative) run through the same
kernels, and no [E, C, O] tensor is ever formed.

Numerics: X and W may be 16-bit; every load is converted to the accumulation dtype `acc` (an argument:
float32 or float64; the block passes its policy's), Y is at least float32, CG is float64 in the
reference and float32 literals in the kernels; the message comes in `out` (default `acc`: a block
whose linear computes in 16 bits asks for that dtype, the sums rounded once), each derivative in the
dtype of its input.

Implementations: "reference" (PyTorch: forms T = Y·CG [E, I, O] and [E, C, O] products; the
definition the kernels are tested against) and "triton" (`convolution_triton`: channels across lanes,
CG non-zeros unrolled, nodes' edges walked in CSR order, no atomics: the same result every run). The
kernels sum in float32; a float64 `acc` runs the reference. They run on CUDA tensors, or on CPU
tensors under TRITON_INTERPRET=1 (slow; for tests).
"""

from __future__ import annotations

from functools import lru_cache
from typing import NamedTuple

import torch

from lpmace.errors import InputError
from lpmace.kernels import convolution_triton as _triton
from lpmace.kernels.convolution_triton import layout, sizes
from lpmace.kernels.launch import segments

__all__ = ["EdgeSegments", "conv_grads", "conv_message", "conv_tensor_product", "edge_segments", "layout"]


class EdgeSegments(NamedTuple):
    """The edges of a graph grouped by receiving and by sending node (CSR): edge ids
    dst_perm[dst_ptr[n]:dst_ptr[n+1]] end at node n, src_perm[src_ptr[n]:src_ptr[n+1]] start there."""

    src: torch.Tensor
    dst: torch.Tensor
    dst_ptr: torch.Tensor
    dst_perm: torch.Tensor
    src_ptr: torch.Tensor
    src_perm: torch.Tensor


def edge_segments(edge_index: torch.Tensor, num_nodes: int) -> EdgeSegments:
    """CSR groupings of edge_index [2, E] (row 0 senders, row 1 receivers) over num_nodes nodes."""
    src, dst = edge_index[0].contiguous(), edge_index[1].contiguous()  # the kernels read them with stride 1
    return EdgeSegments(src, dst, *segments(dst, num_nodes), *segments(src, num_nodes))


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
    """With T = Y·CG [E, I, O]: ∂L/∂G [N, C, O] (to_src=False, f = X) or ∂L/∂X [N, C, I] (to_src=True,
    f = G), in plain PyTorch (differentiable; forms [E, C, ·] products)."""
    f, t, w = f.to(acc), t.to(acc), w.to(acc)
    n = seg.dst_ptr.shape[0] - 1
    if to_src:  # f = G [N, C, O]: out[n, c, i] = Σ_{e: src=n} Σ_o G[dst,c,o] W[e,p(o),c] T[e,i,o]
        gw = torch.index_select(f, 0, seg.dst) * _expand(w, pcol)
        per_edge = torch.bmm(gw, t.transpose(1, 2))
        return torch.zeros(n, f.shape[1], t.shape[1], dtype=acc, device=f.device).index_add(0, seg.src, per_edge)
    per_edge = torch.bmm(torch.index_select(f, 0, seg.src), t) * _expand(w, pcol)
    return torch.zeros(n, f.shape[1], t.shape[2], dtype=acc, device=f.device).index_add(0, seg.dst, per_edge)


def edge_reference(g, x, t, w, pcol, seg: EdgeSegments, want_t: bool, want_w: bool, acc: torch.dtype):
    """With T = Y·CG: (∂L/∂T [E, I, O] or empty, ∂L/∂W [E, P, C] or empty) in plain PyTorch."""
    g, x, t, w = g.to(acc), x.to(acc), t.to(acc), w.to(acc)
    g_e, x_e = torch.index_select(g, 0, seg.dst), torch.index_select(x, 0, seg.src)
    d_t, d_w = g.new_zeros(0), g.new_zeros(0)
    if want_t:
        d_t = torch.einsum("eci,eco->eio", x_e, g_e * _expand(w, pcol))
    if want_w:
        v = g_e * torch.bmm(x_e, t)  # [E, C, O]
        d_w = torch.zeros(w.shape[0], w.shape[2], w.shape[1], dtype=acc, device=w.device)
        d_w = d_w.index_add(2, pcol, v).transpose(1, 2).contiguous()
    return d_t, d_w


@lru_cache(maxsize=None)
def _table(lmax_in: int, max_ell: int, dtype: torch.dtype, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """(CG [I, B, O] in dtype, path of each column [O] int64) on device, made once."""
    _, pcol, table = layout(lmax_in, max_ell)
    return table.to(device=device, dtype=dtype), torch.tensor(pcol, device=device)


def message_reference(x, y, w, seg: EdgeSegments, lmax_in: int, max_ell: int, acc: torch.dtype) -> torch.Tensor:
    """conv_message in plain PyTorch (differentiable)."""
    table, pcol = _table(lmax_in, max_ell, acc, y.device)
    t = torch.einsum("eb,ibo->eio", y.to(acc), table)
    return node_reference(x, t, w, pcol, seg, False, acc)


def grads_reference(g, x, y, w, seg: EdgeSegments, lmax_in: int, max_ell: int, want_x: bool, want_y: bool,
                    want_w: bool, acc: torch.dtype):
    """conv_grads in plain PyTorch: (∂L/∂X, ∂L/∂Y, ∂L/∂W) summed in acc, each returned in its input's
    dtype; an unwanted one empty."""
    table, pcol = _table(lmax_in, max_ell, acc, y.device)
    t = torch.einsum("eb,ibo->eio", y.to(acc), table)
    d_x = node_reference(g, t, w, pcol, seg, True, acc) if want_x else g.new_zeros(0, dtype=acc)
    d_t, d_w = edge_reference(g, x, t, w, pcol, seg, want_y, want_w, acc)
    d_y = torch.einsum("eio,ibo->eb", d_t, table) if want_y else g.new_zeros(0, dtype=acc)
    return d_x.to(x.dtype), d_y.to(y.dtype), d_w.to(w.dtype)


# ---- the operators and their derivatives --------------------------------------------------------------

def _fast(impl: str, acc: torch.dtype) -> bool:
    return impl == "triton" and acc == torch.float32


@torch.library.custom_op("lpmace::conv_message", mutates_args=())
def _conv_message(x: torch.Tensor, y: torch.Tensor, w: torch.Tensor, src: torch.Tensor, dst: torch.Tensor,
                  dst_ptr: torch.Tensor, dst_perm: torch.Tensor, src_ptr: torch.Tensor, src_perm: torch.Tensor,
                  lmax_in: int, max_ell: int, impl: str, acc: torch.dtype, out: torch.dtype) -> torch.Tensor:
    seg = EdgeSegments(src, dst, dst_ptr, dst_perm, src_ptr, src_perm)
    if _fast(impl, acc):
        return _triton.message_triton(x, y, w, seg, lmax_in, max_ell, out)
    with torch.no_grad():
        return message_reference(x, y, w, seg, lmax_in, max_ell, acc).to(out)


@_conv_message.register_fake
def _(x, y, w, src, dst, dst_ptr, dst_perm, src_ptr, src_perm, lmax_in, max_ell, impl, acc, out):
    return x.new_empty(dst_ptr.shape[0] - 1, x.shape[1], sizes(lmax_in, max_ell)[2], dtype=out)


@torch.library.custom_op("lpmace::conv_grads", mutates_args=())
def _conv_grads(g: torch.Tensor, x: torch.Tensor, y: torch.Tensor, w: torch.Tensor, src: torch.Tensor,
                dst: torch.Tensor, dst_ptr: torch.Tensor, dst_perm: torch.Tensor, src_ptr: torch.Tensor,
                src_perm: torch.Tensor, lmax_in: int, max_ell: int, want_x: bool, want_y: bool, want_w: bool,
                impl: str, acc: torch.dtype) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    seg = EdgeSegments(src, dst, dst_ptr, dst_perm, src_ptr, src_perm)
    if _fast(impl, acc):
        return _triton.grads_triton(g, x, y, w, seg, lmax_in, max_ell, want_x, want_y, want_w)
    with torch.no_grad():
        return grads_reference(g, x, y, w, seg, lmax_in, max_ell, want_x, want_y, want_w, acc)


@_conv_grads.register_fake
def _(g, x, y, w, src, dst, dst_ptr, dst_perm, src_ptr, src_perm, lmax_in, max_ell, want_x, want_y, want_w,
      impl, acc):
    return (x.new_empty(x.shape if want_x else (0,)), y.new_empty(y.shape if want_y else (0,)),
            w.new_empty(w.shape if want_w else (0,)))


def _message_setup(ctx, inputs, output):
    x, y, w, *seg, lmax_in, max_ell, impl, acc, _ = inputs
    ctx.save_for_backward(x, y, w, *seg)
    ctx.lmax_in, ctx.max_ell, ctx.impl, ctx.acc = lmax_in, max_ell, impl, acc


def _message_backward(ctx, grad):
    x, y, w, *seg = ctx.saved_tensors
    need_x, need_y, need_w = ctx.needs_input_grad[:3]
    d_x = d_y = d_w = None
    if need_x or need_y or need_w:
        d_x, d_y, d_w = _conv_grads(grad, x, y, w, *seg, ctx.lmax_in, ctx.max_ell, need_x, need_y, need_w,
                                    ctx.impl, ctx.acc)
        d_x, d_y, d_w = (d if need else None for d, need in zip((d_x, d_y, d_w), (need_x, need_y, need_w)))
    return (d_x, d_y, d_w) + (None,) * 11


def _grads_setup(ctx, inputs, output):
    g, x, y, w, *seg, lmax_in, max_ell, want_x, want_y, want_w, impl, acc = inputs
    ctx.save_for_backward(g, x, y, w, *seg)
    ctx.lmax_in, ctx.max_ell, ctx.impl, ctx.acc = lmax_in, max_ell, impl, acc
    ctx.wants = (want_x, want_y, want_w)


def _grads_backward(ctx, grad_x, grad_y, grad_w):
    """The backward of conv_grads' outputs ∂L/∂X, ∂L/∂Y, ∂L/∂W with cotangents (grad_x, grad_y, grad_w):
    by multilinearity it is the derivative of L(G, grad_x, Y, W) + L(G, X, grad_y, W) + L(G, X, Y, grad_w),
    one term per wanted output; each term is linear in the three arguments it keeps."""
    g, x, y, w, *seg = ctx.saved_tensors
    need_g, need_x, need_y, need_w = ctx.needs_input_grad[:4]
    args, cotangents = (x, y, w), (grad_x, grad_y, grad_w)
    terms = [k for k, (want, grad) in enumerate(zip(ctx.wants, cotangents)) if want and grad is not None]
    d_g = None
    found = [None, None, None]
    for k in terms:  # term k: slot k of (X, Y, W) replaced by its cotangent
        a = [cotangents[k] if j == k else args[j] for j in range(3)]
        if need_g:
            term = _conv_message(*a, *seg, ctx.lmax_in, ctx.max_ell, ctx.impl, ctx.acc, ctx.acc)
            d_g = term if d_g is None else d_g + term
        wants = [need and j != k for j, need in enumerate((need_x, need_y, need_w))]
        if any(wants):
            out = _conv_grads(g, *a, *seg, ctx.lmax_in, ctx.max_ell, *wants, ctx.impl, ctx.acc)
            for j in range(3):
                if wants[j]:
                    found[j] = out[j] if found[j] is None else found[j] + out[j]
    d_g = d_g.to(g.dtype) if d_g is not None else (torch.zeros_like(g) if need_g else None)
    result = []
    for j, (need, arg) in enumerate(zip((need_x, need_y, need_w), args)):
        result.append((found[j] if found[j] is not None else torch.zeros_like(arg)) if need else None)
    return (d_g, *result) + (None,) * 13


_conv_message.register_autograd(_message_backward, setup_context=_message_setup)
_conv_grads.register_autograd(_grads_backward, setup_context=_grads_setup)


def _check(impl: str, lmax_in: int, max_ell: int, x: torch.Tensor, y: torch.Tensor, w: torch.Tensor) -> None:
    if impl not in ("reference", "triton"):
        raise InputError(f"conv tensor product implementation must be 'reference' or 'triton', got {impl!r}")
    n_in, n_sh, _, n_paths = sizes(lmax_in, max_ell)
    want = (n_in, n_sh, n_paths)
    if (x.shape[-1], y.shape[-1], w.shape[1]) != want:
        raise InputError(f"conv tensor product of lmax_in={lmax_in}, max_ell={max_ell} needs features [N, C, {want[0]}], "
                         f"harmonics [E, {want[1]}] and weights [E, {want[2]}, C]; got {tuple(x.shape)}, "
                         f"{tuple(y.shape)}, {tuple(w.shape)}")


def conv_message(x, y, w, seg: EdgeSegments, lmax_in: int, max_ell: int, impl: str = "reference",
                 acc: torch.dtype | None = None, out: torch.dtype | None = None) -> torch.Tensor:
    """∂L/∂G of form (2): the message (1), differentiable to any order; summed in `acc` and rounded once
    to `out` (default: `acc`)."""
    _check(impl, lmax_in, max_ell, x, y, w)
    acc = _acc(acc, x, y, w)
    if out is not None and not (isinstance(out, torch.dtype) and out.is_floating_point):
        raise InputError(f"the conv tensor product's message dtype must be a floating dtype, not {out}")
    return _conv_message(x, y, w, *seg, lmax_in, max_ell, impl, acc, acc if out is None else out)


def conv_grads(g, x, y, w, seg: EdgeSegments, lmax_in: int, max_ell: int, want_x: bool = True, want_y: bool = True,
               want_w: bool = True, impl: str = "reference", acc: torch.dtype | None = None):
    """(∂L/∂X [N, C, I], ∂L/∂Y [E, B], ∂L/∂W [E, P, C]) of form (2), each in its input's dtype; an
    unwanted one is empty."""
    _check(impl, lmax_in, max_ell, x, y, w)
    return _conv_grads(g, x, y, w, *seg, lmax_in, max_ell, want_x, want_y, want_w, impl, _acc(acc, g, x, y, w))


def conv_tensor_product(x: torch.Tensor, y: torch.Tensor, w: torch.Tensor, seg: EdgeSegments, lmax_in: int,
                        max_ell: int, impl: str = "reference", acc: torch.dtype | None = None,
                        out: torch.dtype | None = None) -> torch.Tensor:
    """Equation (1): the message [N, C, O], differentiable to any order in x, y and w.

    Args:
        x: [N, C, (lmax_in+1)²] sender features (16-bit allowed).
        y: [E, (max_ell+1)²] spherical harmonics of the edge directions (float32 or float64).
        w: [E, P, C] radial weights per path (16-bit allowed), paths in `layout(lmax_in, max_ell)` order.
        seg: `edge_segments(edge_index, N)`.
        impl: "reference" or "triton".
        acc: the accumulation dtype (float32 or float64): every load is widened to it and the sums run in
            it; None: float64 when an input is float64, else float32.
        out: the message's dtype (default: `acc`), rounded once from the `acc` sums. A block whose next
            step rounds the message to 16 bits anyway (the linear after the conv) asks for that dtype:
            the same numbers, half the bytes stored, and its gradient comes back in 16 bits (the
            backward kernel's gather of it moves half the bytes).

    Returns:
        [N, C, O] in `out`.
    """
    return conv_message(x, y, w, seg, lmax_in, max_ell, impl, acc, out)


def flop_count(x_shape, y_shape, w_shape, *args, out_shape=None, **kwargs) -> int:
    """FLOPs of one conv_message call as the dense form counts them (2 per edge, channel, input and
    output column, plus the weight; the kernels skip the CG zeros)."""
    return y_shape[0] * x_shape[1] * (2 * x_shape[2] * out_shape[2] + out_shape[2])
