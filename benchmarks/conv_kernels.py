"""The conv tensor product's Triton kernels alone, at a foundation model's size, against their byte floor.

Inputs of the MACE-MP-0-medium-shaped model's two interactions on the W2 box (4096 atoms of random
elements at 0.1 atoms/Å³, r_max 6 Å: ~356k edges, 128 channels; layer 1: L = 0 features, 4 paths,
16 columns; layer 2: L = 1 features, 10 paths, 40 columns), per operand dtype:

    node      the message (forward)
    to_src    ∂X (a force's backward)
    edge      ∂T and ∂W (a force's backward)

Each is timed (triton.testing.do_bench, median) and checked against the PyTorch reference (relative
max difference). The byte floor counts what a kernel must move at least once: its per-edge inputs
and outputs (T, W, ∂T, ∂W), node tensors once and the edge indices; achieved bandwidth = floor / time.

    python benchmarks/conv_kernels.py --out DIR [--sweep] [--old PATH_TO_OLD_SRC]
"""

from __future__ import annotations

import argparse
import importlib.util
import itertools
import json
import pathlib
import time

import numpy as np
import torch

from lpmace.bench.workloads import random_bulk
from lpmace.data.batching import graph_from_configuration
from lpmace.kernels import convolution, convolution_tiles
from lpmace.nn.interaction import conv_paths

HBM = 4.8e12  # H200 HBM3e peak, bytes/s (NVIDIA's data sheet); the 4.3 TB/s is the measured copy rate


def problem(graph, lmax_in, channels, dtype, seed=0):
    gen = torch.Generator(device="cuda").manual_seed(seed)
    paths = conv_paths(lmax_in, 3, 3)
    pcol = torch.tensor([p for p, (_, _, l3) in enumerate(paths) for _ in range(2 * l3 + 1)], device="cuda")
    n, e = graph.positions.shape[0], graph.edge_index.shape[1]
    i, o = (lmax_in + 1) ** 2, int(pcol.numel())
    seg = convolution.edge_segments(graph.edge_index.cuda(), n)
    x = torch.randn(n, channels, i, device="cuda", generator=gen).to(dtype)
    t = torch.randn(e, i, o, device="cuda", generator=gen)
    w = torch.randn(e, len(paths), channels, device="cuda", generator=gen).to(dtype)
    g = torch.randn(n, channels, o, device="cuda", generator=gen)
    return x, t, w, g, pcol, seg


def floor_bytes(kind, x, t, w, g):
    n, c, i = x.shape
    e, _, o = t.shape
    index = e * 8 * 3  # src, dst, perm (int64)
    t_b, w_b = t.numel() * 4, w.numel() * w.element_size()
    if kind == "node":
        return index + n * c * i * x.element_size() + t_b + w_b + n * c * o * 4
    if kind == "to_src":
        return index + g.numel() * 4 + t_b + w_b + n * c * i * 4
    return index + g.numel() * 4 + n * c * i * x.element_size() + t_b + w_b + t_b + e * w.shape[1] * c * 4


def calls(mod, x, t, w, g, pcol, seg):
    return {"node": lambda: mod.node_triton(x, t, w, pcol, seg, False, torch.float32),
            "to_src": lambda: mod.node_triton(g, t, w, pcol, seg, True, torch.float32),
            "edge": lambda: mod.edge_triton(g, x, t, w, pcol, seg, True, True, torch.float32)}


def references(x, t, w, g, pcol, seg):
    return {"node": lambda: convolution.node_reference(x, t, w, pcol, seg, False, torch.float32),
            "to_src": lambda: convolution.node_reference(g, t, w, pcol, seg, True, torch.float32),
            "edge": lambda: convolution.edge_reference(g, x, t, w, pcol, seg, True, True, torch.float32)}


def rel_diff(a, b):
    a = a if isinstance(a, tuple) else (a,)
    b = b if isinstance(b, tuple) else (b,)
    return max(float((p.double() - q.double()).abs().max() / q.double().abs().max().clamp_min(1e-30))
               for p, q in zip(a, b))


def time_ms(fn):
    import triton.testing

    return float(triton.testing.do_bench(fn, warmup=5, rep=40, return_mode="median"))


def load_old(path):
    spec = importlib.util.spec_from_file_location("old_convolution", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=pathlib.Path, required=True)
    parser.add_argument("--sweep", action="store_true", help="time a grid of tile sizes for each kernel")
    parser.add_argument("--old", help="a previous convolution.py to time beside (its node_triton/edge_triton)")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    box = random_bulk(4096, list(range(1, 90)), rng)
    graph = graph_from_configuration(box, 6.0)
    print(f"{torch.cuda.get_device_name()} torch {torch.__version__}; W2 mp box: {graph.edge_index.shape[1]} edges")
    old = load_old(args.old) if args.old else None
    rows = []
    for lmax_in, dtype in itertools.product((0, 1), (torch.float32, torch.bfloat16)):
        inputs = problem(graph, lmax_in, 128, dtype)
        refs = {k: f() for k, f in references(*inputs).items()}
        x, t, w, g = inputs[:4]
        for kind, fn in calls(convolution_tiles, *inputs).items():
            if kind == "to_src" and lmax_in == 0:
                continue  # layer 1's features do not depend on positions
            row = dict(layer=lmax_in + 1, dtype=str(dtype).split(".")[-1], kernel=kind,
                       floor_mb=floor_bytes(kind, x, t, w, g) / 1e6, check=rel_diff(fn(), refs[kind]),
                       ms=time_ms(fn), tiles=dict(convolution_tiles.TILES["node_to_src" if kind == "to_src" else kind]))
            row["floor_ms"] = row["floor_mb"] * 1e6 / HBM * 1e3
            row["bandwidth_tb_s"] = row["floor_mb"] * 1e6 / (row["ms"] * 1e-3) / 1e12
            if old is not None:
                old_fn = calls(old, *inputs)[kind]
                row["old_ms"], row["old_check"] = time_ms(old_fn), rel_diff(old_fn(), refs[kind])
            rows.append(row)
            print(json.dumps(row), flush=True)
    if args.sweep:
        rows += sweep(graph)
    (args.out / "conv_kernels.json").write_text(json.dumps(rows, indent=1) + "\n")


def sweep(graph):
    """Median time of each kernel (layer 2, bf16 operands) over a grid of tile sizes."""
    found = []
    grid = {"node": itertools.product((8, 16, 32), (16, 32, 64), (4, 8), (2,)),
            "node_to_src": itertools.product((4, 8, 16), (8, 16, 32), (4, 8), (1, 2)),
            "edge": itertools.product((4, 8, 16), (8, 16, 32), (4, 8), (1,))}
    saved = {k: dict(v) for k, v in convolution_tiles.TILES.items()}
    for dtype in (torch.bfloat16,):
        inputs = problem(graph, 1, 128, dtype)
        refs = {k: f() for k, f in references(*inputs).items()}
        fns = calls(convolution_tiles, *inputs)
        for name, configs in grid.items():
            kind = "to_src" if name == "node_to_src" else name
            for edges, channels, warps, stages in configs:
                convolution_tiles.TILES[name] = dict(edges=edges, channels=channels, warps=warps, stages=stages,
                                                     elements=1 << 20)
                start = time.time()
                try:
                    check = rel_diff(fns[kind](), refs[kind])
                    ms = time_ms(fns[kind])
                except Exception as err:  # a tile too large for the registers / shared memory
                    check, ms = None, None
                    print(f"{name} {edges} {channels} {warps} {stages}: {type(err).__name__}: {str(err)[:200]}")
                row = dict(sweep=name, dtype=str(dtype).split(".")[-1], edges=edges, channels=channels, warps=warps,
                           stages=stages, ms=ms, check=check, seconds=time.time() - start)
                print(json.dumps(row), flush=True)
                found.append(row)
            convolution_tiles.TILES[name] = dict(saved[name])
    return found


if __name__ == "__main__":
    main()
