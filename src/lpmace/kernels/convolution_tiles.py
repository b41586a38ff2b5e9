"""The Triton kernels of the conv tensor product (`convolution`): tiles of edges, receiver-ordered.

With X [N, C, I], T [E, I, O], W [E, P, C], G [N, C, O] and p(o) the path of output column o, the
4-linear form L = Σ_e Σ_c Σ_{i,o} G[dst_e, c, o] X[src_e, c, i] T[e, i, o] W[e, p(o), c] has three
kinds of partial derivative, and each is one kernel here:

    node (to_src=False)  ∂L/∂G[n] = Σ_{e: dst=n} W[e, p(o), c] Σ_i X[src, c, i] T[e, i, o]   (the message)
    node (to_src=True)   ∂L/∂X[n] = Σ_{e: src=n} Σ_o G[dst, c, o] W[e, p(o), c] T[e, i, o]
    edge                 ∂L/∂T[e] and ∂L/∂W[e], one row per edge

`node` runs one program per (node, block of channels). It walks the node's edges (CSR segment) in
tiles of BLOCK_E edges with a pipelined `tl.range`: the edge ids, gathered rows and weights of a tile
are loaded as [BLOCK_E, BLOCK_C(, BLOCK_K)] blocks, so the dependent chain segment → edge → row is
paid once per tile, not once per edge, and the next tile's loads overlap this tile's arithmetic. The
sum over the tile's edges is a reduction in registers; each output is written once (no atomics:
the same result every run).

`edge` runs one program per tile of BLOCK_E edges taken in receiver order (`dst_perm`), so the edges
of a tile share their receiver's row G[dst] (one HBM read, the rest from L1/L2), and loops over the
channels in blocks of BLOCK_C; ∂T sums over all channels in registers and is written once.

Every load is widened to ACC (float32 or float64) before it is used; T is at least float32.

Block sizes live in `TILES` (per kernel: edges per tile, channels per block, warps, pipeline stages);
benchmarks may change them, results do not depend on them beyond summation order.
"""

from __future__ import annotations

import torch

from lpmace.kernels.launch import launch_context, require_interpreter
from lpmace.kernels.launch import next_power_of_2 as _next_power_of_2

__all__ = ["TILES", "edge_triton", "node_triton"]

# kernel: (BLOCK_E edges per tile, BLOCK_C channels per block, num_warps, pipeline stages); BLOCK_E and
# BLOCK_C are capped so one [BLOCK_E, BLOCK_C, columns] block stays within `elements`.
TILES = {"node": dict(edges=16, channels=32, warps=4, stages=2, elements=8192),
         "node_to_src": dict(edges=8, channels=32, warps=4, stages=2, elements=8192),
         "edge": dict(edges=8, channels=32, warps=4, stages=1, elements=8192)}

_KERNELS: dict = {}


def _kernels():
    """(node kernel, edge kernel), made on first use (triton.jit gives the interpreter under TRITON_INTERPRET=1)."""
    if not _KERNELS:
        import triton
        import triton.language as tl

        # No tl.dot: the contractions here have a dimension of 1-16 (inputs, paths) and need fp32
        # or fp64 sums; a per-edge tl.dot was measured slower (H100, ../shared/KERNELS.md).

        def node(f_ptr, t_ptr, w_ptr, pcol_ptr, gather_ptr, seg_ptr, perm_ptr, out_ptr, C, P, st_e, st_in, st_out,
                 K_IN: tl.constexpr, K_OUT: tl.constexpr, BLOCK_IN: tl.constexpr, BLOCK_K: tl.constexpr,
                 BLOCK_C: tl.constexpr, BLOCK_E: tl.constexpr, W_ON_IN: tl.constexpr, STAGES: tl.constexpr,
                 ACC: tl.constexpr):
            n = tl.program_id(0).to(tl.int64)
            c = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
            c_ok = c < C
            k = tl.arange(0, BLOCK_K)
            k_ok = k < K_OUT
            acc = tl.zeros((BLOCK_C, BLOCK_K), ACC)
            start = tl.load(seg_ptr + n)
            end = tl.load(seg_ptr + n + 1)
            for j0 in tl.range(start, end, BLOCK_E, num_stages=STAGES):
                jj = j0 + tl.arange(0, BLOCK_E)
                e_ok = jj < end
                e = tl.load(perm_ptr + jj, mask=e_ok, other=0).to(tl.int64)
                g = tl.load(gather_ptr + e, mask=e_ok, other=0).to(tl.int64)
                ec_ok = e_ok[:, None] & c_ok[None, :]
                if W_ON_IN:  # ∂X: Σ_o (G[dst] W[e, p(o)])[c, o] T[e, k, o], with o the long axis
                    o = tl.arange(0, BLOCK_IN)
                    o_ok = o < K_IN
                    p_in = tl.load(pcol_ptr + o, mask=o_ok, other=0).to(tl.int64)
                    eco_ok = ec_ok[:, :, None] & o_ok[None, None, :]
                    gw = tl.load(f_ptr + (g[:, None, None] * C + c[None, :, None]) * K_IN + o[None, None, :],
                                 mask=eco_ok, other=0.0).to(ACC)
                    gw = gw * tl.load(w_ptr + (e[:, None, None] * P + p_in[None, None, :]) * C + c[None, :, None],
                                      mask=eco_ok, other=0.0).to(ACC)
                    for kk in tl.static_range(K_OUT):
                        t = tl.load(t_ptr + e[:, None] * st_e + kk * st_out + o[None, :] * st_in,
                                    mask=e_ok[:, None] & o_ok[None, :], other=0.0).to(ACC)
                        col = tl.sum(tl.sum(gw * t[:, None, :], axis=2), axis=0)  # [BLOCK_C]
                        acc += tl.where(k[None, :] == kk, col[:, None], 0.0)
                else:  # the message: W[e, p(k), c] Σ_i X[src, c, i] T[e, i, k], with k the long axis
                    p_out = tl.load(pcol_ptr + k, mask=k_ok, other=0).to(tl.int64)
                    eck_ok = ec_ok[:, :, None] & k_ok[None, None, :]
                    z = tl.zeros((BLOCK_E, BLOCK_C, BLOCK_K), ACC)
                    for i in tl.static_range(K_IN):
                        x = tl.load(f_ptr + (g[:, None] * C + c[None, :]) * K_IN + i, mask=ec_ok, other=0.0).to(ACC)
                        t = tl.load(t_ptr + e[:, None] * st_e + i * st_in + k[None, :] * st_out,
                                    mask=e_ok[:, None] & k_ok[None, :], other=0.0).to(ACC)
                        z += x[:, :, None] * t[:, None, :]
                    w = tl.load(w_ptr + (e[:, None, None] * P + p_out[None, None, :]) * C + c[None, :, None],
                                mask=eck_ok, other=0.0).to(ACC)
                    acc += tl.sum(z * w, axis=0)
            tl.store(out_ptr + (n * C + c[:, None]) * K_OUT + k[None, :], acc, mask=c_ok[:, None] & k_ok[None, :])

        def edge(g_ptr, x_ptr, t_ptr, w_ptr, pcol_ptr, src_ptr, dst_ptr, perm_ptr, dt_ptr, dw_ptr, C, E,
                 P: tl.constexpr, I: tl.constexpr, O: tl.constexpr, BLOCK_I: tl.constexpr, BLOCK_O: tl.constexpr,
                 BLOCK_C: tl.constexpr, BLOCK_E: tl.constexpr, WANT_T: tl.constexpr, WANT_W: tl.constexpr,
                 ACC: tl.constexpr):
            jj = tl.program_id(0).to(tl.int64) * BLOCK_E + tl.arange(0, BLOCK_E)
            e_ok = jj < E
            e = tl.load(perm_ptr + jj, mask=e_ok, other=0).to(tl.int64)
            s = tl.load(src_ptr + e, mask=e_ok, other=0).to(tl.int64)
            d = tl.load(dst_ptr + e, mask=e_ok, other=0).to(tl.int64)
            o = tl.arange(0, BLOCK_O)
            o_ok = o < O
            p_o = tl.load(pcol_ptr + o, mask=o_ok, other=0).to(tl.int64)
            ii = tl.arange(0, BLOCK_I)
            eo_ok = e_ok[:, None] & o_ok[None, :]
            d_t = tl.zeros((BLOCK_E, BLOCK_I, BLOCK_O), ACC)
            for c0 in range(0, C, BLOCK_C):
                c = c0 + tl.arange(0, BLOCK_C)
                ec_ok = e_ok[:, None] & (c < C)[None, :]
                eco_ok = ec_ok[:, :, None] & o_ok[None, None, :]
                gt = tl.load(g_ptr + (d[:, None, None] * C + c[None, :, None]) * O + o[None, None, :],
                             mask=eco_ok, other=0.0).to(ACC)
                if WANT_T:  # ∂T[e, i, o] = Σ_c X[s, c, i] G[d, c, o] W[e, p(o), c]
                    gw = gt * tl.load(w_ptr + (e[:, None, None] * P + p_o[None, None, :]) * C + c[None, :, None],
                                      mask=eco_ok, other=0.0).to(ACC)
                    for i in tl.static_range(I):
                        x = tl.load(x_ptr + (s[:, None] * C + c[None, :]) * I + i, mask=ec_ok, other=0.0).to(ACC)
                        row = tl.sum(x[:, :, None] * gw, axis=1)  # [BLOCK_E, BLOCK_O]
                        d_t += tl.where(ii[None, :, None] == i, row[:, None, :], 0.0)
                if WANT_W:  # ∂W[e, p, c] = Σ_{o: p(o)=p} G[d, c, o] Σ_i X[s, c, i] T[e, i, o]
                    z = tl.zeros((BLOCK_E, BLOCK_C, BLOCK_O), ACC)
                    for i in tl.static_range(I):
                        x = tl.load(x_ptr + (s[:, None] * C + c[None, :]) * I + i, mask=ec_ok, other=0.0).to(ACC)
                        t = tl.load(t_ptr + (e[:, None] * I + i) * O + o[None, :], mask=eo_ok, other=0.0).to(ACC)
                        z += x[:, :, None] * t[:, None, :]
                    v = z * gt
                    for p in tl.static_range(P):
                        total = tl.sum(tl.where((p_o == p)[None, None, :], v, 0.0), axis=2)  # [BLOCK_E, BLOCK_C]
                        tl.store(dw_ptr + (e[:, None] * P + p) * C + c[None, :], total, mask=ec_ok)
            if WANT_T:
                tl.store(dt_ptr + (e[:, None, None] * I + ii[None, :, None]) * O + o[None, None, :], d_t,
                         mask=e_ok[:, None, None] & (ii < I)[None, :, None] & o_ok[None, None, :])

        _KERNELS["node"], _KERNELS["edge"] = triton.jit(node), triton.jit(edge)
    return _KERNELS["node"], _KERNELS["edge"]


def _tl_dtype(dtype: torch.dtype):
    import triton.language as tl

    return tl.float64 if dtype == torch.float64 else tl.float32


def _blocks(tiles: dict, channels: int, columns: int) -> tuple[int, int]:
    """(BLOCK_E, BLOCK_C) of `tiles`, shrunk (channels first) so BLOCK_E·BLOCK_C·columns <= its elements."""
    block_c = max(2, min(_next_power_of_2(channels), tiles["channels"]))
    block_e = max(2, tiles["edges"])
    while block_e * block_c * columns > tiles["elements"] and block_c > 2:
        block_c //= 2
    while block_e * block_c * columns > tiles["elements"] and block_e > 2:
        block_e //= 2
    return block_e, block_c


def node_triton(f, t, w, pcol, seg, to_src: bool, acc: torch.dtype) -> torch.Tensor:
    """`convolution.conv_node` in Triton (shapes and meaning there)."""
    n, c = seg.dst_ptr.shape[0] - 1, f.shape[1]
    k_in, k_out = (t.shape[2], t.shape[1]) if to_src else (t.shape[1], t.shape[2])
    out = torch.zeros(n, c, k_out, dtype=acc, device=f.device)
    if n == 0 or c == 0 or k_out == 0 or t.shape[0] == 0:
        return out
    require_interpreter(f.device)
    st_e, st_i, st_o = t.stride()
    block_in, block_k = max(_next_power_of_2(k_in), 2), max(_next_power_of_2(k_out), 2)
    tiles = TILES["node_to_src" if to_src else "node"]
    block_e, block_c = _blocks(tiles, c, block_in if to_src else block_k)
    gather, ptr, perm = (seg.dst, seg.src_ptr, seg.src_perm) if to_src else (seg.src, seg.dst_ptr, seg.dst_perm)
    node_kernel, _ = _kernels()
    with launch_context(f.device):
        node_kernel[(n, (c + block_c - 1) // block_c)](
            f.contiguous(), t, w.contiguous(), pcol, gather, ptr, perm, out, c, w.shape[1], st_e,
            st_o if to_src else st_i, st_i if to_src else st_o, K_IN=k_in, K_OUT=k_out, BLOCK_IN=block_in,
            BLOCK_K=block_k, BLOCK_C=block_c, BLOCK_E=block_e, W_ON_IN=to_src, STAGES=tiles["stages"],
            ACC=_tl_dtype(acc), num_warps=tiles["warps"])
    return out


def edge_triton(g, x, t, w, pcol, seg, want_t: bool, want_w: bool, acc: torch.dtype):
    """`convolution.conv_edge` in Triton (shapes and meaning there)."""
    e, i, o = t.shape
    p, c = w.shape[1], w.shape[2]
    d_t = torch.zeros(e, i, o, dtype=acc, device=t.device) if want_t else g.new_zeros(0, dtype=acc)
    d_w = torch.zeros(e, p, c, dtype=acc, device=t.device) if want_w else g.new_zeros(0, dtype=acc)
    if e == 0 or c == 0 or o == 0 or not (want_t or want_w):
        return d_t, d_w
    require_interpreter(t.device)
    block_o = max(_next_power_of_2(o), 2)
    tiles = TILES["edge"]
    block_e, block_c = _blocks(tiles, c, block_o)
    _, edge_kernel = _kernels()
    with launch_context(t.device):
        edge_kernel[((e + block_e - 1) // block_e,)](
            g.contiguous(), x.contiguous(), t.contiguous(), w.contiguous(), pcol, seg.src, seg.dst, seg.dst_perm,
            d_t, d_w, c, e, P=p, I=i, O=o, BLOCK_I=max(_next_power_of_2(i), 2), BLOCK_O=block_o, BLOCK_C=block_c,
            BLOCK_E=block_e, WANT_T=want_t, WANT_W=want_w, ACC=_tl_dtype(acc), num_warps=tiles["warps"])
    return d_t, d_w
