"""The conv tensor product's Triton kernels alone, at a foundation model's size, against their byte floor.

Inputs of the MACE-MP-0-medium-shaped model's two interactions on the W2 box (4096 atoms of random
elements at 0.1 atoms/Å³, r_max 6 Å: ~356k edges, 128 channels, max_ell 3; layer 1: L = 0 features,
4 paths, 16 columns; layer 2: L = 1 features, 10 paths, 40 columns), per operand dtype:

    message   the forward, ∂L/∂G
    grads     ∂X, ∂Y and ∂W at once (the backward of a force)

Each is timed (triton.testing.do_bench, median) and checked against the PyTorch reference (relative
max difference). The byte floor counts what a kernel must move at least once: its per-edge inputs
and outputs (Y, W, ∂Y, ∂W, the edge indices) and each node tensor once; achieved bandwidth = floor /
time, against the H200's 4.8 TB/s (NVIDIA's data sheet).

--old PATH times the previous kernels (a convolution.py with node_triton/edge_triton on T = Y·CG
[E, I, O]) on the same inputs: message = node, grads = node(to_src) + edge.

    python benchmarks/conv_kernels.py --out DIR [--old PATH] [--sweep]
    python benchmarks/conv_kernels.py --out DIR --runs     # paths cut into runs (TILES' last entry)
    python benchmarks/conv_kernels.py --out DIR --ahead    # what each loop step loads for the next (AHEAD)
    python benchmarks/conv_kernels.py --out DIR --butterfly  # ∂Y's sums over channels: butterfly or tl.sum
    python benchmarks/conv_kernels.py --out DIR --layers [--atoms 864]   # settings per layer and operand width
    ncu --clock-control none --launch-skip 2 ... python benchmarks/conv_kernels.py --out DIR --once
"""

from __future__ import annotations

import argparse
import importlib.util
import itertools
import json
import pathlib

import numpy as np
import torch

from lpmace.bench.workloads import random_bulk
from lpmace.data.batching import graph_from_configuration
from lpmace.kernels import convolution, convolution_triton

HBM = 4.8e12


def problem(graph, lmax_in, channels, dtype, seed=0):
    gen = torch.Generator(device="cuda").manual_seed(seed)
    _, pcol, table = convolution.layout(lmax_in, 3)
    n, e = graph.positions.shape[0], graph.edge_index.shape[1]
    seg = convolution.edge_segments(graph.edge_index.cuda(), n)
    x = torch.randn(n, channels, table.shape[0], device="cuda", generator=gen).to(dtype)
    y = torch.randn(e, table.shape[1], device="cuda", generator=gen)
    w = torch.randn(e, max(pcol) + 1, channels, device="cuda", generator=gen).to(dtype)
    g = torch.randn(n, channels, table.shape[2], device="cuda", generator=gen)
    return x, y, w, g, seg


def floor_bytes(kind, x, y, w, g):
    e = y.shape[0]
    index = e * 8 * 3  # src, dst, perm (int64)
    edge_in = y.numel() * 4 + w.numel() * w.element_size()
    if kind == "message":
        return index + x.numel() * x.element_size() + edge_in + g.numel() * 4
    d_out = y.numel() * 4 + w.numel() * w.element_size() + x.numel() * x.element_size()  # ∂Y, ∂W, ∂X
    return index + g.numel() * g.element_size() + x.numel() * x.element_size() + edge_in + d_out


def rel_diff(a, b):
    return max(float((p.double() - q.double()).abs().max() / q.double().abs().max().clamp_min(1e-30))
               for p, q in zip(a, b))


def time_ms(fn):
    import triton.testing

    return float(triton.testing.do_bench(fn, warmup=5, rep=50, return_mode="median"))


def old_calls(old, lmax_in, x, y, w, g, seg):
    """The previous kernels on T = Y·CG (formed once, outside the timing)."""
    _, pcol, table = convolution.layout(lmax_in, 3)
    t = torch.einsum("eb,ibo->eio", y, table.float().cuda()).contiguous()
    pcol = torch.tensor(pcol, device="cuda")
    return {"message": lambda: old.node_triton(x, t, w, pcol, seg, False, torch.float32),
            "grads": lambda: (old.node_triton(g, t, w, pcol, seg, True, torch.float32),
                              old.edge_triton(g, x, t, w, pcol, seg, True, True, torch.float32))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=pathlib.Path, required=True)
    parser.add_argument("--old", help="a previous convolution.py to time beside (its node_triton/edge_triton)")
    parser.add_argument("--sweep", action="store_true", help="also time layer 2 (bf16, fp32) over channels per program, "
                        "pipeline stages and edges per loop step")
    parser.add_argument("--registers", action="store_true", help="only time each kernel (layers 1 and 2, bf16 "
                        "and float32) at its tiles under register caps (Triton's maxnreg)")
    parser.add_argument("--runs", action="store_true", help="only time each kernel (layers 2 and 1, bf16 and "
                        "float32) with its paths cut into 1-3 runs (TILES' last entry), at one and two channels "
                        "per lane for 16-bit operands, with registers and spills per compiled kernel")
    parser.add_argument("--ahead", action="store_true", help="only time each kernel (layers 2 and 1, bf16 and "
                        "float32) at one and two edges per step, at each level of AHEAD (what a step loads for "
                        "the next)")
    parser.add_argument("--butterfly", action="store_true", help="only time grads (layers 2 and 1, bf16 and "
                        "float32) with each edge's ∂Y summed over channels in one butterfly and in one tl.sum per "
                        "harmonic (BUTTERFLY)")
    parser.add_argument("--layers", action="store_true", help="only time the kernels of layers 2 and 1 at each of "
                        "CANDIDATES' settings (tiles, AHEAD, register caps, grads split)")
    parser.add_argument("--atoms", type=int, default=4096, help="atoms in the box (default 4096, the W2 box; 864: "
                        "a W1 batch's count, where every program is resident at once)")
    parser.add_argument("--once", action="store_true", help="only run each layer's kernels once per operand dtype "
                        "(bf16, fp32), after one warm-up call: for a profiler such as ncu")
    args = parser.parse_args()
    if args.atoms < 2:
        parser.error(f"--atoms {args.atoms}: a box needs at least 2 atoms")
    args.out.mkdir(parents=True, exist_ok=True)
    graph = graph_from_configuration(random_bulk(args.atoms, list(range(1, 90)), np.random.default_rng(0)), 6.0)
    if args.once:
        for lmax_in, dtype in itertools.product((1, 0), (torch.bfloat16, torch.float32)):
            x, y, w, g, seg = problem(graph, lmax_in, 128, dtype)
            g = g.to(dtype)
            for _ in range(2):
                convolution_triton.message_triton(x, y, w, seg, lmax_in, 3)
                convolution_triton.grads_triton(g, x, y, w, seg, lmax_in, 3, True, True, True)
            torch.cuda.synchronize()
        return
    print(f"{torch.cuda.get_device_name()} torch {torch.__version__}; mp box of {args.atoms} atoms: "
          f"{graph.edge_index.shape[1]} edges")
    if args.registers:
        (args.out / "conv_registers.json").write_text(json.dumps(registers(graph), indent=1) + "\n")
        return
    if args.runs:
        (args.out / "conv_runs.json").write_text(json.dumps(path_runs(graph), indent=1) + "\n")
        return
    if args.butterfly:
        (args.out / "conv_butterfly.json").write_text(json.dumps(butterfly_rows(graph), indent=1) + "\n")
        return
    if args.layers:
        (args.out / "conv_layers.json").write_text(json.dumps(tile_rows(graph, layer_candidates), indent=1) + "\n")
        return
    if args.ahead:
        (args.out / "conv_ahead.json").write_text(json.dumps(edge_indices_ahead(graph), indent=1) + "\n")
        return
    old = None
    if args.old:
        spec = importlib.util.spec_from_file_location("old_convolution", args.old)
        old = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(old)
    rows = []
    for lmax_in, dtype in itertools.product((0, 1), (torch.float32, torch.bfloat16)):
        x, y, w, g, seg = problem(graph, lmax_in, 128, dtype)
        calls = {"message": lambda: (convolution_triton.message_triton(x, y, w, seg, lmax_in, 3),),
                 "grads": lambda: convolution_triton.grads_triton(g, x, y, w, seg, lmax_in, 3, True, True, True)}
        refs = {"message": (convolution.message_reference(x, y, w, seg, lmax_in, 3, torch.float32),),
                "grads": convolution.grads_reference(g, x, y, w, seg, lmax_in, 3, True, True, True, torch.float32)}
        for kind, fn in calls.items():
            row = dict(layer=lmax_in + 1, dtype=str(dtype).split(".")[-1], kernel=kind,
                       floor_mb=floor_bytes(kind, x, y, w, g) / 1e6, check=rel_diff(fn(), refs[kind]), ms=time_ms(fn))
            row["floor_ms"] = row["floor_mb"] * 1e6 / HBM * 1e3
            row["bandwidth_tb_s"] = row["floor_mb"] * 1e6 / (row["ms"] * 1e-3) / 1e12
            if old is not None:
                row["old_ms"] = time_ms(old_calls(old, lmax_in, x, y, w, g, seg)[kind])
            rows.append(row)
            print(json.dumps(row), flush=True)
        del x, y, w, g, seg, refs
        torch.cuda.empty_cache()
    if args.sweep:
        rows += sweep(graph)
    (args.out / "conv_kernels.json").write_text(json.dumps(rows, indent=1) + "\n")


def registers(graph):
    """Each kernel at its tiles under register caps: does more occupancy beat spills?"""
    found = []
    caps = {"message": (None, 128, 96, 80, 64), "grads": (None, 192, 160, 128)}
    for lmax_in, dtype in itertools.product((1, 0), (torch.bfloat16, torch.float32)):
        x, y, w, g, seg = problem(graph, lmax_in, 128, dtype)
        calls = {"message": lambda: (convolution_triton.message_triton(x, y, w, seg, lmax_in, 3),),
                 "grads": lambda: convolution_triton.grads_triton(g, x, y, w, seg, lmax_in, 3, True, True, True)}
        for kind, fn in calls.items():
            key = convolution_triton._key(kind, dtype, lmax_in)
            ref = fn()
            for cap in caps[kind]:
                convolution_triton.MAXNREG.clear()
                if cap:
                    convolution_triton.MAXNREG[key] = cap
                try:
                    row = dict(layer=lmax_in + 1, dtype=str(dtype).split(".")[-1], kernel=kind, maxnreg=cap,
                               check=rel_diff(fn(), ref), ms=time_ms(fn))
                    row["bandwidth_tb_s"] = floor_bytes(kind, x, y, w, g) / (row["ms"] * 1e-3) / 1e12
                except Exception as err:  # a cap the compiler refuses: say so
                    row = dict(layer=lmax_in + 1, kernel=kind, maxnreg=cap, error=f"{type(err).__name__}: {err}"[:200])
                print(json.dumps(row), flush=True)
                found.append(row)
        convolution_triton.MAXNREG.clear()
        del x, y, w, g, seg
        torch.cuda.empty_cache()
    return found


def _binaries(fn) -> dict:
    """{cache key: (registers, spills)} of each binary Triton compiled for a JIT function; {} if its cache
    is not where Triton 3.6 keeps it."""
    found = {}
    try:
        for device, cache in getattr(fn, "device_caches", {}).items():
            for key, kernel in (cache[0] if isinstance(cache, tuple) else cache).items():
                found[(device, key)] = (getattr(kernel, "n_regs", None), getattr(kernel, "n_spills", None))
    except Exception:  # another Triton's layout: no registers, the timing stays
        return {}
    return found


def path_runs(graph):
    """Each kernel with its paths cut into runs (one program per run: fewer registers per program),
    layer 2 then layer 1, bf16 (one and two channels per lane) and float32 operands."""
    def settings(lmax_in, kind, narrow, base):
        for per_lane, runs in itertools.product((2, 1) if narrow else (1,), (1, 2, 3) if lmax_in == 1 else (1, 2)):
            channels = max(base[0], 32 * per_lane)
            yield (dict(runs=runs, channels_per_lane=per_lane, channels_per_program=channels),
                   (channels, base[1], base[2], per_lane, runs), None)
    return tile_rows(graph, settings)


def edge_indices_ahead(graph):
    """Each kernel at one and two edges per loop step, what each step loads for the next
    (`convolution_triton.AHEAD`: 0 nothing, 1 the edge and node indices, 2 for the message also X, Y and
    W), layers 2 and 1, bf16 and float32."""
    def settings(lmax_in, kind, narrow, base):
        for unroll, ahead in itertools.product((1, 2), (0, 1, 2) if kind == "message" else (0, 1)):
            yield dict(unroll=unroll, ahead=ahead), base[:2] + (unroll,) + base[3:], ahead
    return tile_rows(graph, settings)


# Settings to time per (layer, kernel, operand width): ((channels per program, stages, edges per step, channels
# per lane, runs), AHEAD level, options: maxnreg (MAXNREG), split (SPLIT)). The first of each: the entry the
# layers shared at session 36's start.
# (Session 36's call b_first also timed the message with Y contracted with the CG first, commit 1971942's
# Y_FIRST: no faster, removed.)
CANDIDATES = {
    (2, "message", True): [((64, 1, 2, 2, 1), 1, {}), ((64, 1, 1, 2, 1), 2, {}), ((128, 1, 2, 2, 1), 1, {}),
                           ((64, 1, 2, 1, 1), 1, {}), ((64, 1, 2, 2, 2), 1, {}), ((64, 1, 3, 2, 1), 1, {})],
    (1, "message", True): [((64, 1, 2, 2, 1), 1, {}), ((128, 1, 1, 4, 1), 1, {}), ((128, 1, 2, 4, 1), 1, {}),
                           ((64, 1, 1, 2, 1), 1, {}), ((64, 1, 3, 2, 1), 1, {}), ((128, 1, 1, 2, 1), 1, {})],
    (2, "message", False): [((64, 1, 2, 1, 1), 1, {}), ((64, 1, 2, 2, 1), 1, {}), ((128, 1, 1, 4, 1), 1, {})],
    (1, "message", False): [((64, 1, 2, 1, 1), 1, {}), ((64, 1, 1, 1, 1), 1, {}), ((128, 1, 1, 4, 1), 1, {}),
                            ((64, 1, 1, 2, 1), 1, {})],
    (2, "grads", True): [((64, 1, 1, 2, 1), 0, {}), ((64, 1, 1, 2, 1), 1, {}), ((32, 1, 1, 1, 1), 1, {}),
                         ((64, 1, 1, 2, 1), 1, {"split": True}), ((32, 1, 1, 1, 1), 1, {"split": True}),
                         ((64, 1, 1, 2, 1), 1, {"split": True, "maxnreg": 168}),
                         ((64, 1, 1, 2, 1), 1, {"split": True, "maxnreg": 128})],
    (1, "grads", True): [((64, 1, 1, 2, 1), 1, {}), ((128, 1, 1, 4, 1), 1, {}), ((128, 1, 1, 4, 1), 0, {}),
                         ((64, 1, 1, 2, 1), 1, {"maxnreg": 72}), ((128, 1, 1, 4, 1), 1, {"split": True})],
    (2, "grads", False): [((32, 1, 1, 1, 1), 0, {}), ((32, 1, 1, 1, 1), 1, {}), ((32, 1, 1, 1, 1), 0, {"split": True})],
    (1, "grads", False): [((32, 1, 1, 1, 1), 0, {}), ((32, 1, 1, 1, 1), 1, {}), ((128, 1, 1, 4, 1), 1, {}),
                          ((64, 1, 1, 2, 1), 1, {})],
}


def layer_candidates(lmax_in, kind, narrow, base):
    """`tile_rows` settings: CANDIDATES of this layer, kernel and operand width."""
    for tile, ahead, options in CANDIDATES[(lmax_in + 1, kind, narrow)]:
        label = dict(channels_per_program=tile[0], unroll=tile[2], channels_per_lane=tile[3], runs=tile[4], ahead=ahead,
                     **options)
        yield label, tile, ahead


def butterfly_rows(graph):
    """grads with `BUTTERFLY` on and off at its default tiles, layers 2 and 1, bf16 and float32."""
    found = []
    for lmax_in, dtype in itertools.product((1, 0), (torch.bfloat16, torch.float32)):
        x, y, w, g, seg = problem(graph, lmax_in, 128, dtype)
        g = g.to(dtype)
        ref = convolution.grads_reference(g, x, y, w, seg, lmax_in, 3, True, True, True, torch.float32)
        for on in (False, True):
            convolution_triton.BUTTERFLY = on
            call = lambda: convolution_triton.grads_triton(g, x, y, w, seg, lmax_in, 3, True, True, True)  # noqa: E731
            try:
                row = dict(layer=lmax_in + 1, dtype=str(dtype).split(".")[-1], kernel="grads", butterfly=on,
                           check=rel_diff(call(), ref), ms=time_ms(call))
            finally:
                convolution_triton.BUTTERFLY = True
            row["bandwidth_tb_s"] = floor_bytes("grads", x, y, w, g) / (row["ms"] * 1e-3) / 1e12
            print(json.dumps(row), flush=True)
            found.append(row)
        del x, y, w, g, seg, ref
        torch.cuda.empty_cache()
    return found


def tile_rows(graph, settings):
    """Time each kernel, layer 2 then layer 1, bf16 and float32 operands, at the (label, TILES entry,
    AHEAD level; None: the default) of `settings(lmax_in, kind, narrow, saved entry)`, with registers and
    spills per compiled kernel; ∂L/∂message in the operand dtype, as the model hands it back."""
    saved, saved_ahead = dict(convolution_triton.TILES), dict(convolution_triton.AHEAD)
    saved_caps, saved_split = dict(convolution_triton.MAXNREG), dict(convolution_triton.SPLIT)

    def restore():
        convolution_triton.TILES.update(saved)
        for table, kept in ((convolution_triton.AHEAD, saved_ahead), (convolution_triton.MAXNREG, saved_caps),
                            (convolution_triton.SPLIT, saved_split)):
            table.clear()
            table.update(kept)

    found = []
    for lmax_in, dtype in itertools.product((1, 0), (torch.bfloat16, torch.float32)):
        x, y, w, g, seg = problem(graph, lmax_in, 128, dtype)
        g = g.to(dtype)
        refs = {"message": (convolution.message_reference(x, y, w, seg, lmax_in, 3, torch.float32),),
                "grads": convolution.grads_reference(g, x, y, w, seg, lmax_in, 3, True, True, True, torch.float32)}
        calls = {"message": lambda: (convolution_triton.message_triton(x, y, w, seg, lmax_in, 3),),
                 "grads": lambda: convolution_triton.grads_triton(g, x, y, w, seg, lmax_in, 3, True, True, True)}
        narrow = dtype.itemsize == 2
        for kind in ("message", "grads"):
            key = convolution_triton._key(kind, dtype, lmax_in)  # the entry this layer's kernels take
            for label, tile, ahead in settings(lmax_in, kind, narrow, saved[key]):
                restore()
                convolution_triton.TILES[key] = tile
                if ahead is not None:
                    convolution_triton.AHEAD[key] = ahead
                if "split" in label:  # (a label's options: grads in two launches, a register cap)
                    convolution_triton.SPLIT[key] = label["split"]
                if "maxnreg" in label:
                    convolution_triton.MAXNREG[key] = label["maxnreg"]
                row = dict(layer=lmax_in + 1, dtype=str(dtype).split(".")[-1], kernel=kind, **label)
                try:
                    fn = convolution_triton.kernels(lmax_in, 3, dtype)[0 if kind == "message" else 1]
                    before = _binaries(fn)
                    row["check"] = rel_diff(calls[kind](), refs[kind])
                    row["ms"] = time_ms(calls[kind])
                    row["bandwidth_tb_s"] = floor_bytes(kind, x, y, w, g) / (row["ms"] * 1e-3) / 1e12
                    # the binaries this row compiled (a binary another row compiled is not this row's)
                    row["registers_spills"] = [v for k, v in _binaries(fn).items() if k not in before]
                except Exception as err:  # a tile that does not compile: say so
                    row["error"] = f"{type(err).__name__}: {err}"[:300]
                print(json.dumps(row), flush=True)
                found.append(row)
        restore()
        del x, y, w, g, seg, refs
        torch.cuda.empty_cache()
    return found


def sweep(graph):
    """Each kernel over channels per program × pipeline stages × edges per loop step × channels per lane,
    layer 2, bf16 and float32 operands."""
    saved = dict(convolution_triton.TILES)
    grid = {kind: [t for t in itertools.product(channels, (1,), (1, 2), (1, 2, 4), (1,)) if t[0] >= 32 * t[3]]
            for kind, channels in (("message", (64, 128)), ("grads", (32, 64, 128)))}
    found = []
    for dtype in (torch.bfloat16, torch.float32):
        x, y, w, g, seg = problem(graph, 1, 128, dtype)
        calls = {"message": lambda: convolution_triton.message_triton(x, y, w, seg, 1, 3),
                 "grads": lambda: convolution_triton.grads_triton(g, x, y, w, seg, 1, 3, True, True, True)}
        for kind, tiles in grid.items():
            for tile in tiles:
                convolution_triton.TILES.update(saved)
                convolution_triton.TILES[kind] = tile
                if f"{kind} 16-bit" in saved:  # the sweep's tile for either operand width
                    convolution_triton.TILES[f"{kind} 16-bit"] = tile
                try:
                    ms = time_ms(calls[kind])
                except Exception as err:  # a tile that does not compile (registers, shared memory): say so
                    ms = f"{type(err).__name__}: {err}"[:200]
                row = dict(sweep=kind, dtype=str(dtype).split(".")[-1], channels_per_program=tile[0], stages=tile[1],
                           unroll=tile[2], channels_per_lane=tile[3], ms=ms)
                print(json.dumps(row), flush=True)
                found.append(row)
        # ∂L/∂message in the operand dtype (what a 16-bit linear after the conv would hand back): the
        # grads kernel's per-edge gather of G[dst] in half the bytes.
        convolution_triton.TILES.update(saved)
        g16 = g.to(dtype)
        row = dict(sweep="grads, G in the operand dtype", dtype=str(dtype).split(".")[-1],
                   ms=time_ms(lambda: convolution_triton.grads_triton(g16, x, y, w, seg, 1, 3, True, True, True)),
                   ms_as_given=time_ms(calls["grads"]))
        print(json.dumps(row), flush=True)
        found.append(row)
        # The same edges stored in receiver order (the message's perm is then the identity): what the
        # message's indirection (perm -> edge -> sender) costs at the default tiles.
        convolution_triton.TILES.update(saved)
        order = torch.argsort(seg.dst, stable=True)
        by_dst = convolution.edge_segments(torch.stack([seg.src[order], seg.dst[order]]), x.shape[0])
        y_d, w_d = y[order].contiguous(), w[order].contiguous()
        row = dict(sweep="message, edges stored by receiver", dtype=str(dtype).split(".")[-1],
                   ms=time_ms(lambda: convolution_triton.message_triton(x, y_d, w_d, by_dst, 1, 3)),
                   ms_as_given=time_ms(calls["message"]))
        print(json.dumps(row), flush=True)
        found.append(row)
        del x, y, w, g, g16, seg, y_d, w_d, by_dst
        torch.cuda.empty_cache()
    convolution_triton.TILES.update(saved)
    return found


if __name__ == "__main__":
    main()
