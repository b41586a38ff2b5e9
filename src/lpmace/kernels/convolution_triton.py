"""The conv tensor product's Triton kernels: channels across lanes, Clebsch–Gordan non-zeros as literals.

For features X [N, C, I], spherical harmonics Y [E, B], radial weights W [E, P, C] and the coupling
table CG [I, B, O] of `lpmace.o3.clebsch_gordan.conv_coupling_table` (paths (l1, l2, l3), output
column o in path p(o)), the 4-linear form

    L(G, X, Y, W) = Σ_e Σ_c Σ_{i,b,o} G[dst_e, c, o] X[src_e, c, i] Y[e, b] CG[i, b, o] W[e, p(o), c]

has two kernels, generated per (lmax_in, max_ell) so that every CG non-zero is a float32 literal in
the code (86 of the 4·16·40 entries for L = 1 features and max_ell 3), and compiled per channel count
C (a compile-time constant: each edge has one row pointer and every load within the row takes its
offset as an immediate, with no integer arithmetic per load):

    message  ∂L/∂G[n]: one program per (receiver n, block of channels), one or two adjacent channels
             per lane; it walks the receiver's edges (CSR), keeps the O outputs in registers and
             writes them once, in the dtype asked (the fp32 sums rounded once).
    grads    ∂L/∂X, ∂L/∂Y, ∂L/∂W at once (any subset): one program per (sender s, block of channels);
             X[s] is loaded once, each outgoing edge loads G[dst] (receiver-major copy [N, O, C], so
             the lanes read consecutive channels) and forms every CG product once:
                 s[i,b,p] = Σ_{o in p} CG[i,b,o] G_o        ∂W_p  = Σ_{i,b} X_i Y_b s[i,b,p]
                 t[i,b]   = Σ_p W_p s[i,b,p]                ∂X_i += Σ_b Y_b t[i,b]
                                                            ∂Y_b  = Σ_c Σ_i X_i t[i,b]
             It writes the edge's ∂W row and ∂Y row (a sum over the block's channels; blocks add up in
             a [blocks, E, B] buffer), and ∂X[s] is summed in registers and written once. Where a
             program is one warp on a GPU, the 16 sums over channels of ∂Y run as one `butterfly`
             (16 shuffles, not 16 trees of 5 each). With `SPLIT`, ∂W runs in a launch of its own.

Each step of the message (and of grads, per `AHEAD`) loads the next step's edge and node indices, so
that its gathers wait on no index load. Either kernel may split the paths into runs (`path_groups`, TILES),
one program per (node, channel block, run), each keeping only its run's outputs and products in registers; grads
then writes ∂X and ∂Y per run, summed after it.

No atomics: every output is written by one program, in a fixed order; the same result every run.
Sums run in float32 (the literals are float32); `convolution` sends float64 work to its reference.
The generated source is written under the kernel cache (``$LPMACE_CACHE_DIR`` or
``~/.cache/lpmace``) and imported from there, since Triton compiles a function from its source file.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
from functools import lru_cache

import numpy as np
import torch

from lpmace.cache import cache_dir
from lpmace.kernels.launch import launch_context, next_power_of_2, require_interpreter
from lpmace.o3.clebsch_gordan import conv_coupling_table, conv_paths, path_of_column

__all__ = ["AHEAD", "BUTTERFLY", "SPLIT", "TILES", "butterfly", "grads_triton", "layout", "message_triton",
           "path_groups", "sizes", "source"]

# (channels per program, pipeline stages, edges per loop step, adjacent channels per lane, runs of paths)
# per kernel and operand width, from sweeps on the H200 (benchmarks/conv_kernels.py --sweep, MACE-MP-0-medium
# layer 2, the last in benchmarks/results/conv_lanes_h200_2026-12-02): no software pipelining anywhere; the
# message takes two edges per step at 64 channels per program, one per lane for fp32 operands and two for
# 16-bit ones (0.79 / 0.72 ms fp32 / bf16 against 0.82 / 0.78 at 128 and one per lane); grads one warp per
# program (its ∂Y sums over channels are warp shuffles without a block-wide barrier) and one edge per step,
# 32 channels for fp32 operands, 64 at two per lane for 16-bit ones (1.98 / 1.81 ms against 2.11 / 1.94).
# Runs of paths (`path_groups`): one program per run, each holding only its run's outputs and products.
# A key ending ", L = l" holds for features of L = l only (`_key`). The kernels of scalar features (layer 1:
# 16 columns, 4 paths, 64-80 registers at the layers' common tiles) take 128 channels per program at four
# per lane (one warp), one edge per step, indices a step ahead: `mp` W2 shapes (H200, benchmarks/conv_kernels.py
# --layers, conv_layers_h200_mp_2026-12-03), message fp32 0.376 → 0.276 ms, bf16 0.284 → 0.233; grads bf16
# 0.485 → 0.459 (its ∂Y butterfly at four channels per lane); fp32 grads (session 37, conv_split_h200_mp_2026-12-03)
# 0.847 → 0.571 ms (0.215 → 0.165 in a box of 864 atoms).
TILES = {"message": (64, 1, 2, 1, 1), "message 16-bit": (64, 1, 2, 2, 1), "message, L = 0": (128, 1, 1, 4, 1),
         "message 16-bit, L = 0": (128, 1, 1, 4, 1), "grads": (32, 1, 1, 1, 1), "grads 16-bit": (64, 1, 1, 2, 1),
         "grads, L = 0": (128, 1, 1, 4, 1), "grads 16-bit, L = 0": (128, 1, 1, 4, 1)}
# Register cap per thread (Triton's `maxnreg`) per TILES key; absent: the compiler's choice. A lower cap
# lets more warps share an SM (the message's occupancy is limited by its registers) at the risk of spills.
MAXNREG: dict = {}
# Per TILES key, what each loop step loads for the next (`source`'s `ahead`): 1, the next step's edge and node
# indices, so that a step's gathers wait on no index load (perm → edge → node → row is three dependent loads
# otherwise); 2 (the message only; grads takes it as 1), also the next step's X, Y and W, a two-deep pipeline.
# H200, `mp` W2 layer 2 (benchmarks/conv_kernels.py --ahead, results in conv_ahead_h200_mp_2026-12-03): the
# message 0.743 → 0.638 ms with 16-bit operands, 0.799 → 0.765 fp32; grads gains 2 % (1.69 → 1.65, 1.98 →
# 1.95 ms: its time is in the gathers of G[dst] and the arithmetic, not the indices) and stays as it was.
# Level 2 pays only for the bf16 message at one edge per step (0.808 → 0.684 ms) and loses at two (0.728 ms:
# 242 registers against 168). With the butterfly (session 36, --layers), level 1 pays for 16-bit grads:
# 1.587 → 1.546 ms layer 2, 0.551 → 0.483 layer 1.
AHEAD: dict = {"message": 1, "message 16-bit": 1, "message, L = 0": 1, "message 16-bit, L = 0": 1, "grads 16-bit": 1,
               "grads, L = 0": 1, "grads 16-bit, L = 0": 1}
# grads sums each edge's ∂Y over a program's channels in one warp-wide butterfly (`butterfly`: 16 shuffles)
# where a program is one warp on a GPU, instead of one tl.sum (a tree of 5 shuffles) per harmonic.
BUTTERFLY = True
# Per TILES key of grads: ∂W in one launch, ∂X and ∂Y in another (the kernel's WANT flags), each compiled with
# fewer live registers (layer 2, bf16 operands, Triton 3.9 for sm_90 on the CPU: 204 registers for all three,
# 134 for ∂W, 162 for ∂X and ∂Y: more warps per SM) at the cost of gathering G, X and Y twice and forming the
# CG sums s twice (1,408 → 792 + 1,048 SASS instructions). Off: slower on the H200 (session 37, `mp` W2 layer 2
# bf16, conv_split_h200_mp_2026-12-03: 1.545 ms in one launch, 1.674 split, 1.596 split under a cap of 128 registers).
SPLIT: dict = {}


def sizes(lmax_in: int, max_ell: int) -> tuple[int, int, int, int]:
    """(I, B, O, P): feature components, harmonics, output columns and paths, in plain Python. Shape
    checks and shape functions use it, never `layout`: they run while torch.compile traces, where the
    first call of `layout` would make its table as a traced tensor (then cached for every later call)."""
    paths = conv_paths(lmax_in, max_ell, max_ell)
    return (lmax_in + 1) ** 2, (max_ell + 1) ** 2, len(path_of_column(paths)), len(paths)


@lru_cache(maxsize=None)
def layout(lmax_in: int, max_ell: int):
    """(paths, path of each column [O], CG table [I, B, O] float64) of the conv of L = lmax_in features."""
    paths = conv_paths(lmax_in, max_ell, max_ell)
    return paths, path_of_column(paths), conv_coupling_table(paths, lmax_in, max_ell)


def _literal(v: float) -> str:
    return repr(float(np.float32(v)))


def _terms(table):
    """[(i, b, o, value)] of the non-zeros."""
    found = torch.nonzero(table.abs() > 1e-14).tolist()
    return [(i, b, o, float(table[i, b, o])) for i, b, o in found]


@lru_cache(maxsize=None)
def path_groups(lmax_in: int, max_ell: int, count: int) -> tuple:
    """The paths cut into at most `count` runs of adjacent paths of about equal work (CG terms plus
    output columns), one per program of a kernel's third grid axis: each program keeps only its
    run's outputs, weights and products in registers (fewer registers, more warps per SM); what every
    run needs again (X, Y) is gathered again, from L2 mostly."""
    _, pcol, table = layout(lmax_in, max_ell)
    n_paths = max(pcol) + 1
    cost = [0] * n_paths
    for _, _, o, _ in _terms(table):
        cost[pcol[o]] += 1
    for o in range(len(pcol)):
        cost[pcol[o]] += 1
    count = max(1, min(count, n_paths))
    prefix = np.cumsum([0] + cost)
    cuts = [0]
    for k in range(1, count):  # the cut whose work before it is nearest k/count of the whole
        allowed = range(cuts[-1] + 1, n_paths - (count - k) + 1)
        cuts.append(min(allowed, key=lambda j: abs(prefix[j] - prefix[-1] * k / count)))
    cuts.append(n_paths)
    return tuple(tuple(range(a, b)) for a, b in zip(cuts, cuts[1:]))


def butterfly(pack: int) -> tuple[str, str]:
    """(PTX, constraints) of `tl.inline_asm_elementwise` summing 16 values over the channels of one warp,
    `pack` channels per lane, for 16 inputs [BLOCK_C] (BLOCK_C = 32·pack): each lane first adds its own
    channels, then five butterfly steps, each halving what a lane holds (xor 16: a lane keeps the 8 sums
    whose index has bit 3 equal to its lane's bit 4 and hands the other 8 to its partner; xor 8, 4, 2 the
    same on bits 2, 1, 0; xor 1 adds the last pair): 16 shuffles instead of 16 trees of 5. Lane l ends with
    the sum of value (l >> 1) & 15; outputs (per channel of the lane) that sum and its index, -1 except on
    the even lane's first channel, so that each sum is stored once."""
    out_v, out_i = [f"${k}" for k in range(pack)], [f"${pack + k}" for k in range(pack)]
    inputs = [[f"${2 * pack + b * pack + k}" for k in range(pack)] for b in range(16)]
    lines = ["{", ".reg .pred %bp;", ".reg .b32 %bl, %bt;", ".reg .f32 %bs, %br;"]
    lines.append(".reg .f32 " + ", ".join(f"%ba{b}" for b in range(16)) + ";")
    lines.append("mov.u32 %bl, %laneid;")
    for b in range(16):
        lines.append(f"mov.b32 %ba{b}, {inputs[b][0]};")
        lines += [f"add.f32 %ba{b}, %ba{b}, {v};" for v in inputs[b][1:]]
    half = 8
    for bit in (16, 8, 4, 2):
        lines += [f"and.b32 %bt, %bl, {bit};", "setp.ne.u32 %bp, %bt, 0;"]
        for k in range(half):  # keep a[k + half] where the lane's bit is set, else a[k]; hand the other on
            lines += [f"selp.f32 %bs, %ba{k}, %ba{k + half}, %bp;", f"selp.f32 %br, %ba{k + half}, %ba{k}, %bp;",
                      f"shfl.sync.bfly.b32 %bs, %bs, {bit}, 0x1f, 0xffffffff;", f"add.f32 %ba{k}, %br, %bs;"]
        half //= 2
    lines += ["shfl.sync.bfly.b32 %bs, %ba0, 1, 0x1f, 0xffffffff;", "add.f32 %ba0, %ba0, %bs;"]
    lines += [f"mov.b32 {v}, %ba0;" for v in out_v]
    lines += ["and.b32 %bt, %bl, 1;", "setp.ne.u32 %bp, %bt, 0;", "shr.u32 %bl, %bl, 1;", "and.b32 %bl, %bl, 15;",
              f"selp.b32 {out_i[0]}, -1, %bl, %bp;"]
    lines += [f"mov.b32 {v}, -1;" for v in out_i[1:]]
    lines.append("}")
    return "\n".join(lines), ",".join(["=r"] * (2 * pack) + ["r"] * (16 * pack))


def source(lmax_in: int, max_ell: int, unroll: tuple[int, int] = (1, 1), groups: tuple[int, int] = (1, 1),
           ahead: tuple[int, int] = (0, 0)) -> str:
    """Python source of the two kernels of this (lmax_in, max_ell), CG non-zeros written as literals.

    unroll = (message, grads): edges per loop step. With u > 1 the loads of u edges are issued before
    any of their arithmetic (more loads in flight per lane); edges past the segment's end load zeros
    (masked) and store nothing. groups = (message, grads): runs of paths (`path_groups`), one per
    program along grid axis 2 (`grp`); with more than one, grads writes ∂X per run ([runs, N, C, I])
    and ∂Y per (run, channel block), summed by the caller. ahead = (message, grads), `AHEAD`'s levels:
    1, each step loads the next step's edge and node indices (the first step's before the loop); 2
    (message), also the next step's values, with the indices two steps ahead."""
    _, pcol, table = layout(lmax_in, max_ell)
    n_in, n_sh, n_out = table.shape
    n_paths = max(pcol) + 1
    terms = _terms(table)
    by_ibp: dict = {}  # (i, b, path) -> [(o, CG value)]
    for i, b, o, v in terms:
        by_ibp.setdefault((i, b, pcol[o]), []).append((o, v))
    lines = [f'"""Generated by lpmace.kernels.convolution_triton for lmax_in={lmax_in}, max_ell={max_ell}, '
             f'unroll={tuple(unroll)}, groups={tuple(groups)}, ahead={tuple(ahead)}."""', "import triton", "import triton.language as tl", ""]

    def emit(indent, text):
        lines.append(" " * indent + text)

    def run_parts(run):  # a run's columns, terms, (i, b) pairs, components i and harmonics b
        cols = [o for o in range(n_out) if pcol[o] in run]
        found = [t for t in terms if pcol[t[2]] in run]
        pairs = sorted({(i, b) for i, b, _, _ in found})
        return cols, found, pairs, sorted({i for i, _ in pairs}), sorted({b for _, b in pairs})

    def runs_of(count, kernel_indent):  # (indent of the run's code, run) after its `if grp == k:` line
        runs = path_groups(lmax_in, max_ell, count)
        for k, run in enumerate(runs):
            if len(runs) > 1:
                emit(kernel_indent, f"if grp == {k}:")
            yield kernel_indent + (4 if len(runs) > 1 else 0), run

    def edge_loop(indent, u_max, other_end, node_ptr, node, ahead):
        """`for` over the segment [start, end) in steps of u_max, then each step's edges e{u}, their nodes
        and masks; returns the masks' text for the edges' loads. With `ahead` the next step's edge and
        node indices are loaded during this step (`next_edges`), so no gather waits on an index load."""
        step = "" if u_max == 1 else f", {u_max}"
        first = f"tl.load(ptr_ptr + {other_end})"
        if ahead:
            emit(indent, f"j_first = {first}")
            first = "j_first"
            for u in range(u_max):
                emit(indent, f"e{u} = tl.load(perm_ptr + j_first + {u}, mask=j_first + {u} < end, other=0).to(tl.int64)")
                emit(indent, f"{node}{u} = tl.load({node_ptr} + e{u}, mask=j_first + {u} < end, other=0).to(tl.int64)")
        emit(indent, f"for j0 in tl.range({first}, end{step}, num_stages=STAGES):")
        return [edge_index(indent + 4, u, u_max, node_ptr, node, ahead) for u in range(u_max)]

    def next_edges(indent, u_max, node_ptr, node, base="j0", ahead=1, to="n"):
        """The indices of the step `ahead` steps after the one at `base` (in `to`in{u}, `to`e{u}, `to`{node}{u}),
        handed on at the step's end."""
        for u in range(u_max):
            j = f"{base} + {ahead * u_max + u}"
            emit(indent, f"{to}in{u} = {j} < end")
            emit(indent, f"{to}e{u} = tl.load(perm_ptr + {j}, mask={to}in{u}, other=0).to(tl.int64)")
            emit(indent, f"{to}{node}{u} = tl.load({node_ptr} + {to}e{u}, mask={to}in{u}, other=0).to(tl.int64)")

    def hand_on(indent, u_max, node):
        for u in range(u_max):
            emit(indent, f"e{u} = ne{u}")
            emit(indent, f"{node}{u} = n{node}{u}")

    def edge_index(indent, u, u_max, node_ptr, node, ahead):  # e{u} and its node (unless loaded ahead), masks
        if u_max == 1:
            if not ahead:
                emit(indent, f"e{u} = tl.load(perm_ptr + j0).to(tl.int64)")
                emit(indent, f"{node}{u} = tl.load({node_ptr} + e{u}).to(tl.int64)")
            emit(indent, f"ok{u} = c_ok")
            return ""
        emit(indent, f"in{u} = j0 + {u} < end")
        if not ahead:
            emit(indent, f"e{u} = tl.load(perm_ptr + j0 + {u}, mask=in{u}, other=0).to(tl.int64)")
            emit(indent, f"{node}{u} = tl.load({node_ptr} + e{u}, mask=in{u}, other=0).to(tl.int64)")
        emit(indent, f"ok{u} = c_ok & (j0 + {u} + 0 * c < end)")  # (a scalar & a block fails in the interpreter)
        return f", mask=in{u}"

    def load_edge(indent, u, edge_mask, harmonics, paths, edge="e", ok="ok", to=""):
        # Row pointers once per edge (int64), then compile-time offsets within the row (C is constexpr):
        # the loads take them as immediates, with no integer arithmetic per load. Values go to `to`y{b}_{u}
        # and `to`w{q}_{u}, in float32 (with `to`: as stored, converted when used, so that no conversion
        # waits on the load early); the edge is `edge`{u}, the channels' mask `ok`{u}.
        cvt = "" if to else ".to(tl.float32)"
        emit(indent, f"y_row{u} = y_ptr + {edge}{u} * {n_sh}")
        for b in harmonics:
            other = ", other=0.0" if edge_mask else ""
            emit(indent, f"{to}y{b}_{u} = tl.load(y_row{u} + {b}{edge_mask}{other}){cvt}")
        if paths:
            emit(indent, f"w_row{u} = w_ptr + {edge}{u} * ({n_paths} * C) + c")
            for q in paths:
                emit(indent, f"{to}w{q}_{u} = tl.load(w_row{u} + {q} * C, mask={ok}{u}, other=0.0){cvt}")

    def message_loads(indent, u, edge_mask, comps, harmonics, paths, edge="e", node="s", ok="ok", to=""):
        emit(indent, f"x_row{u} = x_ptr + {node}{u} * ({n_in} * C) + c")
        for i in comps:
            emit(indent, f"{to}x{i}_{u} = tl.load(x_row{u} + {i} * C, mask={ok}{u}, other=0.0)" + ("" if to else ".to(tl.float32)"))
        load_edge(indent, u, edge_mask, harmonics, paths, edge, ok, to)

    def message_data_ahead(indent, u_max, comps, harmonics, paths):
        """The message's edge loop with the next step's loads (X, Y, W) issued before this step's
        arithmetic and the indices two steps ahead: a two-deep software pipeline, at twice the
        registers of the loaded values. Edges past the segment load zeros, which add nothing."""
        emit(indent, "j_first = tl.load(ptr_ptr + n)")
        for u in range(u_max):  # step 0's indices and values
            emit(indent, f"in{u} = j_first + {u} < end")
            emit(indent, f"ok{u} = c_ok & (j_first + {u} + 0 * c < end)")
            emit(indent, f"e{u} = tl.load(perm_ptr + j_first + {u}, mask=in{u}, other=0).to(tl.int64)")
            emit(indent, f"s{u} = tl.load(src_ptr + e{u}, mask=in{u}, other=0).to(tl.int64)")
            message_loads(indent, u, f", mask=in{u}", comps, harmonics, paths)
        next_edges(indent, u_max, "src_ptr", "s", base="j_first")  # step 1's indices
        step = "" if u_max == 1 else f", {u_max}"
        emit(indent, f"for j0 in tl.range(j_first, end{step}, num_stages=STAGES):")
        body = indent + 4
        for u in range(u_max):  # the next step's values
            emit(body, f"nok{u} = c_ok & (j0 + {u_max + u} + 0 * c < end)")
            message_loads(body, u, f", mask=nin{u}", comps, harmonics, paths, "ne", "ns", "nok", "n")
        next_edges(body, u_max, "src_ptr", "s", ahead=2, to="nn")  # the indices of the step after it
        return body

    def hand_on_data(indent, u_max, comps, harmonics, paths):
        for u in range(u_max):
            for name in [f"x{i}" for i in comps] + [f"y{b}" for b in harmonics] + [f"w{q}" for q in paths]:
                emit(indent, f"{name}_{u} = n{name}_{u}.to(tl.float32)")
            for name in ("in", "e", "s"):
                emit(indent, f"n{name}{u} = nn{name}{u}")

    def store_dy(at, u, sums, mask):
        """Edge u's ∂Y row: sums[b] summed over the program's channels, one butterfly where LANES > 0 (a
        program of one warp on a GPU), else one tl.sum per harmonic."""
        if 1 < n_sh <= 16:
            emit(at, "if LANES > 0:")
            for b in range(16):
                emit(at + 4, f"vy{b} = " + (sums[b] if b < n_sh and sums[b] else "tl.zeros((BLOCK_C,), tl.float32)"))
            for pack in (1, 2, 4):
                emit(at + 4, {1: "if LANES == 1:", 2: "elif LANES == 2:", 4: "else:"}[pack])
                asm, constraints = butterfly(pack)
                emit(at + 8, f"r{u}, ix{u} = tl.inline_asm_elementwise({asm!r}, {constraints!r}, ["
                             + ", ".join(f"vy{b}" for b in range(16)) + f"], dtype=(tl.float32, tl.int32), "
                             f"is_pure=False, pack={pack})")
            edge_ok = f" & in{u}" if mask else ""  # (unrolled steps: the edge's flag past the segment's end)
            emit(at + 4, f"tl.store(dy_row{u} + tl.maximum(ix{u}, 0), r{u}, mask=(ix{u} >= 0) & (ix{u} < {n_sh}){edge_ok})")
            emit(at, "else:")
            at += 4
        for b in range(n_sh):
            value = f"tl.sum({sums[b]}, axis=0)" if sums[b] else "0.0"
            emit(at, f"tl.store(dy_row{u} + {b}, {value}{mask})")

    # message: out[n, c, o] = Σ_{e: dst=n} W[e, p(o), c] Σ CG X[src, c, i] Y[e, b]
    um, ug = unroll
    emit(0, "@triton.jit")
    emit(0, "def message(x_ptr, y_ptr, w_ptr, src_ptr, ptr_ptr, perm_ptr, out_ptr, C: tl.constexpr, BLOCK_C: tl.constexpr, "
            "STAGES: tl.constexpr):")
    emit(4, "n = tl.program_id(0).to(tl.int64)")
    emit(4, "c = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)")
    emit(4, "grp = tl.program_id(2)")
    emit(4, "c_ok = c < C")
    emit(4, "end = tl.load(ptr_ptr + n + 1)")
    for ind, run in runs_of(groups[0], 4):
        cols, found, pairs, comps, harmonics = run_parts(run)
        by_out = {o: [(i, b, v) for i, b, oo, v in found if oo == o] for o in cols}
        for o in cols:
            emit(ind, f"a{o} = tl.zeros((BLOCK_C,), tl.float32)")
        if ahead[0] >= 2:
            message_data_ahead(ind, um, comps, harmonics, run)
        else:
            masks = edge_loop(ind, um, "n", "src_ptr", "s", ahead[0])
            for u in range(um):  # every load of the step's edges first
                message_loads(ind + 4, u, masks[u], comps, harmonics, run)
            if ahead[0]:
                next_edges(ind + 4, um, "src_ptr", "s")
        for u in range(um):  # tp{o} = Σ CG x_i y_b, then a{o} += W tp{o}
            for i, b in pairs:
                emit(ind + 4, f"xy{i}_{b} = x{i}_{u} * y{b}_{u}")
            for o in cols:
                expr = " + ".join(f"{_literal(v)} * xy{i}_{b}" for i, b, v in by_out[o]) or f"0.0 * x{comps[0]}_{u}"
                emit(ind + 4, f"a{o} += w{pcol[o]}_{u} * ({expr})")
        if ahead[0] >= 2:
            hand_on_data(ind + 4, um, comps, harmonics, run)
        elif ahead[0]:
            hand_on(ind + 4, um, "s")
        emit(ind, f"out_row = out_ptr + n * (C * {n_out}) + c * {n_out}")
        for o in cols:
            emit(ind, f"tl.store(out_row + {o}, a{o}.to(out_ptr.dtype.element_ty), mask=c_ok)")
    emit(0, "")

    # grads: ∂X[s] (summed over s's outgoing edges), ∂Y[e] (per channel block), ∂W[e]
    many = len(path_groups(lmax_in, max_ell, groups[1])) > 1
    emit(0, "@triton.jit")
    emit(0, "def grads(g_ptr, x_ptr, y_ptr, w_ptr, dst_ptr, ptr_ptr, perm_ptr, dx_ptr, dy_ptr, dw_ptr, C: tl.constexpr, N, "
            "E, BLOCK_C: tl.constexpr, WANT_X: tl.constexpr, WANT_Y: tl.constexpr, WANT_W: tl.constexpr, "
            "STAGES: tl.constexpr, LANES: tl.constexpr):")
    emit(4, "s = tl.program_id(0).to(tl.int64)")
    emit(4, "block = tl.program_id(1).to(tl.int64)")
    emit(4, "grp = tl.program_id(2)")
    emit(4, "c = block * BLOCK_C + tl.arange(0, BLOCK_C)")
    emit(4, "c_ok = c < C")
    emit(4, "end = tl.load(ptr_ptr + s + 1)")
    # a run's partial sums: ∂Y rows of (run, block) in [runs * blocks, E, B], ∂X in [runs, N, C, I]
    dy_base = "(grp.to(tl.int64) * tl.num_programs(1) + block)" if many else "block"
    dx_base = "(grp.to(tl.int64) * N + s)" if many else "s"
    for ind, run in runs_of(groups[1], 4):
        cols, found, pairs, comps, harmonics = run_parts(run)
        ibp = {key: entries for key, entries in by_ibp.items() if key[2] in run}
        for i in comps:
            emit(ind, f"x{i} = tl.load(x_ptr + s * ({n_in} * C) + ({i} * C) + c, mask=c_ok, other=0.0).to(tl.float32)")
            emit(ind, f"dx{i} = tl.zeros((BLOCK_C,), tl.float32)")
        masks = edge_loop(ind, ug, "s", "dst_ptr", "d", ahead[1])
        body = ind + 4
        for u in range(ug):
            emit(body, f"g_row{u} = g_ptr + d{u} * ({n_out} * C) + c")  # G^T [N, O, C]
            for o in cols:
                emit(body, f"g{o}_{u} = tl.load(g_row{u} + {o} * C, mask=ok{u}, other=0.0).to(tl.float32)")
            load_edge(body, u, masks[u], harmonics, run)
        if ahead[1]:
            next_edges(body, ug, "dst_ptr", "d")
        for u in range(ug):
            # s[i,b,p] = Σ_{o in p} CG[i,b,o] G_o: shared by ∂W (with X·Y) and by t[i,b] = Σ_p W_p s[i,b,p],
            # which ∂X (with Y) and ∂Y (with X) share: every CG product is formed once per edge and channel.
            for (i, b, q), entries in ibp.items():
                emit(body, f"s{i}_{b}_{q} = " + " + ".join(f"{_literal(v)} * g{o}_{u}" for o, v in entries))
            emit(body, "if WANT_W:")
            emit(body + 4, f"dw_row{u} = dw_ptr + e{u} * ({n_paths} * C) + c")
            for i, b in pairs:
                emit(body + 4, f"xy{i}_{b} = x{i} * y{b}_{u}")
            for q in run:
                expr = " + ".join(f"xy{i}_{b} * s{i}_{b}_{q}" for (i, b, qq) in ibp if qq == q) or f"0.0 * x{comps[0]}"
                emit(body + 4, f"tl.store(dw_row{u} + {q} * C, ({expr}).to(dw_ptr.dtype.element_ty), mask=ok{u})")
            emit(body, "if WANT_X or WANT_Y:")
            for i, b in pairs:
                emit(body + 4, f"t{i}_{b} = " + " + ".join(f"w{q}_{u} * s{i}_{b}_{q}" for (ii, bb, q) in ibp
                                                         if (ii, bb) == (i, b)))
            emit(body, "if WANT_X:")
            for i in comps:
                emit(body + 4, f"dx{i} += " + " + ".join(f"y{b}_{u} * t{i}_{b}" for ii, b in pairs if ii == i))
            emit(body, "if WANT_Y:")
            emit(body + 4, f"dy_row{u} = dy_ptr + ({dy_base} * E + e{u}) * {n_sh}")
            store_dy(body + 4, u, [" + ".join(f"x{i} * t{i}_{b}" for i, bb in pairs if bb == b) for b in range(n_sh)],
                     masks[u])
        if ahead[1]:
            hand_on(body, ug, "d")
        emit(ind, "if WANT_X:")
        for i in range(n_in):
            value = f"dx{i}" if i in comps else "tl.zeros((BLOCK_C,), tl.float32)"
            emit(ind + 4, f"tl.store(dx_ptr + {dx_base} * (C * {n_in}) + c * {n_in} + {i}, "
                          f"{value}.to(dx_ptr.dtype.element_ty), mask=c_ok)")
    return "\n".join(lines) + "\n"


_LOADED: dict = {}


def _key(kernel: str, dtype: torch.dtype, lmax_in: int | None = None) -> str:
    """The TILES (AHEAD, MAXNREG) key of `kernel` for operands of `dtype` and features of L = lmax_in: the
    first in TILES of "{kernel} 16-bit, L = {lmax_in}" and "{kernel} 16-bit" (16-bit operands only),
    "{kernel}, L = {lmax_in}" and `kernel`."""
    names = [kernel + " 16-bit", kernel] if dtype.itemsize == 2 else [kernel]
    found = [n for name in names for n in ((f"{name}, L = {lmax_in}",) if lmax_in is not None else ()) + (name,)]
    return next(k for k in found if k in TILES)


def _tile(kernel: str, dtype: torch.dtype, lmax_in: int | None = None) -> tuple[int, int, int, int, int]:
    """TILES of `kernel` for operands of `dtype` and features of L = lmax_in."""
    return TILES[_key(kernel, dtype, lmax_in)]


def kernels(lmax_in: int, max_ell: int, dtype: torch.dtype = torch.float32):
    """(message, grads) Triton kernels for this (lmax_in, max_ell) and operand dtype, generated on first use."""
    message, grads = _tile("message", dtype, lmax_in), _tile("grads", dtype, lmax_in)
    unroll, groups = (message[2], grads[2]), (message[4], grads[4])
    ahead = (int(AHEAD.get(_key("message", dtype, lmax_in), 0)), int(AHEAD.get(_key("grads", dtype, lmax_in), 0)))
    key = (lmax_in, max_ell, unroll, groups, ahead, os.environ.get("TRITON_INTERPRET") == "1")
    if key not in _LOADED:
        text = source(lmax_in, max_ell, unroll, groups, ahead)
        digest = hashlib.sha256(text.encode()).hexdigest()[:16]
        path = cache_dir("kernels") / f"conv_l{lmax_in}_sh{max_ell}_{digest}.py"
        if not path.is_file():
            tmp = path.with_suffix(f".{os.getpid()}.tmp")
            tmp.write_text(text)
            os.replace(tmp, path)  # atomic: a concurrent process sees the whole file or none
        spec = importlib.util.spec_from_file_location(f"lpmace_conv_l{lmax_in}_sh{max_ell}_{digest}", path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        _LOADED[key] = (module.message, module.grads)
    return _LOADED[key]


def _registers(kernel: str, dtype: torch.dtype, lmax_in: int | None = None) -> dict:
    """Launch options capping registers (`MAXNREG`) for this kernel, operand width and L; {} if uncapped."""
    cap = MAXNREG.get(_key(kernel, dtype, lmax_in))
    return {"maxnreg": cap} if cap else {}


def _channels(c: int, kernel: str, dtype: torch.dtype = torch.float32,
              lmax_in: int | None = None) -> tuple[int, int, int]:
    """(channels per program, warps, stages): at most TILES[kernel][0] channels per program, TILES[kernel][3]
    adjacent channels per lane (a lane's loads of them are one vector load); the entry is `_key`'s (16-bit
    operands and features of L = lmax_in take theirs where there is one)."""
    most, stages, _, per_lane, _ = _tile(kernel, dtype, lmax_in)
    block = max(32, min(next_power_of_2(c), most))
    return block, max(1, block // (32 * per_lane)), stages


def _lanes(block: int, warps: int, dtype: torch.dtype, device: torch.device, lmax_in: int | None = None) -> int:
    """grads' LANES: its channels per lane where one warp holds a program's channels on a GPU (then each
    edge's ∂Y sums over channels run as one `butterfly`), else 0 (one tl.sum per harmonic; always in
    the interpreter, which runs no PTX)."""
    per_lane = _tile("grads", dtype, lmax_in)[3]
    one_warp = warps == 1 and block == 32 * per_lane and per_lane in (1, 2, 4)
    nvidia = device.type == "cuda" and torch.version.hip is None  # (the butterfly is PTX)
    return per_lane if BUTTERFLY and one_warp and nvidia and os.environ.get("TRITON_INTERPRET") != "1" else 0


def _runs(kernel: str, dtype: torch.dtype, lmax_in: int, max_ell: int) -> int:
    """Programs per (node, channel block): the runs of paths of `path_groups` for this kernel's tiles."""
    return len(path_groups(lmax_in, max_ell, _tile(kernel, dtype, lmax_in)[4]))


def message_triton(x, y, w, seg, lmax_in: int, max_ell: int, out_dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """out [N, C, O] = Σ_{e: dst=n} W[e, p(o), c] Σ CG X[src, c, i] Y[e, b], summed in float32 and stored
    once in out_dtype."""
    n, c = seg.dst_ptr.shape[0] - 1, x.shape[1]
    n_out = sizes(lmax_in, max_ell)[2]
    if n == 0 or c == 0 or y.shape[0] == 0:
        return torch.zeros(n, c, n_out, dtype=out_dtype, device=x.device)
    require_interpreter(x.device)
    # Every node's program stores its rows. Triton's interpreter casts to bfloat16 by truncation: on the
    # CPU the kernel stores float32 and torch rounds (to nearest even, as the GPU's conversion does).
    stored = out_dtype if x.device.type == "cuda" else torch.float32
    out = torch.empty(n, c, n_out, dtype=stored, device=x.device)
    block, warps, stages = _channels(c, "message", w.dtype, lmax_in)
    message, _ = kernels(lmax_in, max_ell, w.dtype)
    with launch_context(x.device):
        message[(n, (c + block - 1) // block, _runs("message", w.dtype, lmax_in, max_ell))](
            x.transpose(1, 2).contiguous(), y.contiguous(), w.contiguous(), seg.src, seg.dst_ptr, seg.dst_perm, out,
            c, BLOCK_C=block, STAGES=stages, num_warps=warps, **_registers("message", w.dtype, lmax_in))
    return out.to(out_dtype)


def grads_triton(g, x, y, w, seg, lmax_in: int, max_ell: int, want_x: bool, want_y: bool, want_w: bool):
    """(∂L/∂X [N, C, I], ∂L/∂Y [E, B], ∂L/∂W [E, P, C]), each summed in float32 and stored once in its
    input's dtype (a 16-bit ∂W never exists in float32); an unwanted one is empty. With the paths cut
    into runs (TILES), each run's ∂X and ∂Y are partial sums in float32, added here."""
    n, c, n_in = x.shape
    e, n_sh = y.shape
    n_paths = w.shape[1]
    block, warps, stages = _channels(c, "grads", w.dtype, lmax_in)
    blocks = (c + block - 1) // block
    runs = _runs("grads", w.dtype, lmax_in, max_ell)
    launch = n > 0 and c > 0 and e > 0 and (want_x or want_y or want_w)
    if not want_x:
        d_x = x.new_zeros(0)
    elif runs > 1 and launch:
        d_x = torch.empty(runs, n, c, n_in, dtype=torch.float32, device=x.device)
    else:
        d_x = (torch.zeros if not launch else torch.empty)(n, c, n_in, dtype=x.dtype, device=x.device)
    d_y = torch.empty(runs * blocks, e, n_sh, dtype=torch.float32, device=x.device) if want_y else y.new_zeros(0)
    d_w = torch.empty(e, n_paths, c, dtype=w.dtype, device=x.device) if want_w else w.new_zeros(0)
    if launch:
        require_interpreter(x.device)
        _, grads = kernels(lmax_in, max_ell, w.dtype)
        operands = (g.transpose(1, 2).contiguous(), x.transpose(1, 2).contiguous(), y.contiguous(), w.contiguous(),
                    seg.dst, seg.src_ptr, seg.src_perm, d_x, d_y, d_w, c, n, e)
        options = dict(BLOCK_C=block, STAGES=stages, LANES=_lanes(block, warps, w.dtype, x.device, lmax_in),
                       num_warps=warps, **_registers("grads", w.dtype, lmax_in))
        split = SPLIT.get(_key("grads", w.dtype, lmax_in)) and want_w and (want_x or want_y)
        with launch_context(x.device):
            for wants in ((want_x, want_y, False), (False, False, True)) if split else ((want_x, want_y, want_w),):
                grads[(n, blocks, runs)](*operands, WANT_X=wants[0], WANT_Y=wants[1], WANT_W=wants[2], **options)
    if want_x and d_x.dim() == 4:  # the runs' partial sums
        d_x = d_x.sum(0).to(x.dtype)
    if want_y:  # the channel blocks' (and runs') partial sums (none: no channels, zeros)
        d_y = (d_y[0] if d_y.shape[0] == 1 else d_y.sum(0)).to(y.dtype)
    return d_x, d_y, d_w

