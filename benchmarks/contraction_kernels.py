"""Time the symmetric contraction's kernels at a model's sizes: the row-by-row kernel against the
prefix-product kernel (lpmace.kernels.polynomial_dot) in fp32 and with bf16 features, for each call
a training step makes (forward, ∂A, ∂G of ∂A, ∂²A), with their difference from the row kernel.

    python benchmarks/contraction_kernels.py [--nodes 864] [--elements 4] [--present 4] [--out DIR]
    python benchmarks/contraction_kernels.py --sweep     # prefix kernel tile settings, forward and ∂A
    python benchmarks/contraction_kernels.py --once      # each kernel once per call (for ncu)
    python benchmarks/contraction_kernels.py --table-gradient   # the ∂T kernel's calls, its settings swept
    python benchmarks/contraction_kernels.py --old PATH  # also a previous polynomial_dot.py's prefix kernel

Species follow 3BPA's composition (H 12, C 12, N 2, O 1 per molecule) over the present elements.

The `mp` shape: --nodes 4096 --elements 89 --present 4 (a W2 box of a few elements in an 89-element
model). Prints a markdown table; writes contraction_kernels.json under --out.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import pathlib

import torch

from lpmace.kernels import polynomial, polynomial_dot
from lpmace.kernels.launch import element_grouping
from lpmace.kernels.monomials import monomial_table

CALLS = {  # name: (degree of the table's rows, O, Q) for 16 components (max_ell 3): a training step's calls,
    # layer 1 (4 outputs: L ≤ 1) and the last layer (a scalar); ∂A runs twice per layer (forces, then the energy's
    # gradient in the loss's backward)
    "forward (L ≤ 1 out)": (3, 4, 1),
    "forward (scalar out)": (3, 1, 1),
    "∂A": (2, 16, 4),
    "∂A (scalar out)": (2, 16, 1),
    "∂G of ∂A": (2, 4, 16),
    "∂G of ∂A (scalar out)": (2, 1, 16),
    "∂²A": (1, 16, 64),
    "∂²A (scalar out)": (1, 16, 16),
}


def _time(fn, repeats: int, calls: int = 10) -> float:
    """Median GPU time of one call (ms): `calls` calls recorded in one CUDA graph, replayed `repeats` times,
    so that the host's launch time (Python, the launches' small torch ops) is not counted; a call that
    cannot be recorded is timed back to back instead."""
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for _ in range(3):
            fn()
    torch.cuda.current_stream().wait_stream(stream)
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    try:
        with torch.cuda.graph(graph):
            for _ in range(calls):
                fn()
        run = graph.replay
    except RuntimeError:
        graph = None

        def run():
            for _ in range(calls):
                fn()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    times = []
    for _ in range(repeats):
        start.record()
        run()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end) / calls)
    return sorted(times)[len(times) // 2]


def _inputs(args, dim, degree, o, q, gen):
    rows = monomial_table(dim, 3).rows_up_to[degree]
    index = monomial_table(dim, 3).index[:rows].cuda()
    table = torch.randn(args.elements, args.channels, rows, o, q, device="cuda", generator=gen)
    g = torch.randn(args.nodes, args.channels, q, device="cuda", generator=gen)
    a = torch.randn(args.nodes, args.channels, dim, device="cuda", generator=gen)
    return a, index, table, g


def _once_or_sweep(args, species, dim, gen) -> None:
    for name, (degree, o, q) in CALLS.items():
        a, index, table, g = _inputs(args, dim, degree, o, q, gen)
        if args.once:
            for a_ in (a, a.to(torch.bfloat16)):
                polynomial._triton_rows(a_, species, index, table, g, torch.float32, args.grouping)
                polynomial_dot.contraction_by_prefix(a_, species, index, table, g, grouping=args.grouping)
            torch.cuda.synchronize()
            continue
        timed = lambda fn: [_time(lambda: fn(x), args.repeats) for x in (a, a.to(torch.bfloat16))]  # noqa: E731
        if name.startswith("forward"):  # the row kernel's tile (the forward's kernel)
            kept = polynomial.ROWS_BLOCK_N, polynomial.ROWS_MAX_BLOCK_C, polynomial.ROWS_NUM_WARPS
            for block_n, block_c, warps in ((8, 32, 4), (8, 16, 2), (8, 16, 1), (4, 16, 2), (16, 16, 2), (8, 8, 1),
                                            (4, 8, 1), (16, 16, 4)):
                polynomial.ROWS_BLOCK_N, polynomial.ROWS_MAX_BLOCK_C, polynomial.ROWS_NUM_WARPS = block_n, block_c, warps
                times = timed(lambda x: polynomial._triton_rows(x, species, index, table, g, torch.float32, args.grouping))
                print(f"{name}: row kernel BLOCK_N {block_n} BLOCK_C {block_c} warps {warps}: fp32 {times[0]:.3f} ms "
                      f"bf16 {times[1]:.3f} ms", flush=True)
            polynomial.ROWS_BLOCK_N, polynomial.ROWS_MAX_BLOCK_C, polynomial.ROWS_NUM_WARPS = kept
            continue
        kept = polynomial_dot.BLOCK_N, polynomial_dot.NUM_WARPS, polynomial_dot.NUM_STAGES, polynomial_dot.UNROLL
        for block_n, warps, stages, unroll in ((64, 4, 1, 1), (64, 4, 1, 2), (64, 4, 1, 4), (64, 4, 1, 8),
                                               (64, 4, 2, 2), (128, 4, 1, 1), (128, 4, 1, 4), (64, 4, 3, 1)):
            polynomial_dot.BLOCK_N, polynomial_dot.NUM_WARPS, polynomial_dot.NUM_STAGES = block_n, warps, stages
            polynomial_dot.UNROLL = unroll
            times = timed(lambda x: polynomial_dot.contraction_by_prefix(x, species, index, table, g, grouping=args.grouping))
            print(f"{name}: BLOCK_N {block_n} warps {warps} stages {stages} unroll {unroll}: fp32 {times[0]:.3f} ms "
                  f"bf16 {times[1]:.3f} ms", flush=True)
        polynomial_dot.BLOCK_N, polynomial_dot.NUM_WARPS, polynomial_dot.NUM_STAGES, polynomial_dot.UNROLL = kept


# the table gradient's calls in a training step (lpmace.kernels.table_gradient): rows' degree and P = O·Q;
# layer 1 (4 outputs) and the last layer (a scalar): the energy's table and the derivative's (∂A, D = 16 of O)
TABLE_GRADIENT_CALLS = {"energy, 4 outputs": (3, 4), "energy, scalar": (3, 1), "∂A, 4 outputs": (2, 64),
                        "∂A, scalar": (2, 16)}
# (BY_PREFIX 0: every call row by row; 2: every call by prefix, float32 features too)
TABLE_GRADIENT_SETTINGS = [{}, {"BY_PREFIX": 0}, {"BY_PREFIX": 0, "PROGRAMS": 1024}, {"BY_PREFIX": 0, "NODES": 64},
                           {"BY_PREFIX": 0, "NUM_WARPS": 2}, {"BY_PREFIX": 0, "SUMS": 8192},
                           {"BY_PREFIX": 2}, {"BY_PREFIX": 2, "dot.ROWS": 64}, {"BY_PREFIX": 2, "dot.ROWS": 256},
                           {"BY_PREFIX": 2, "dot.BLOCK_K": 16}, {"BY_PREFIX": 2, "dot.BLOCK_K": 64},
                           {"BY_PREFIX": 2, "dot.NUM_WARPS": 8}, {"BY_PREFIX": 2, "dot.ROWS": 256, "dot.NUM_WARPS": 8}]


def _table_gradient(args, species, dim, gen) -> None:
    """Each ∂T call of a step (bf16-mixed: bf16 A, float32 h; and float32 A) under each setting of
    TABLE_GRADIENT_SETTINGS (module constants of lpmace.kernels.table_gradient; "dot.NAME": of
    lpmace.kernels.table_gradient_dot, the products by prefix that BY_PREFIX turns on), with the
    norm-relative difference from the row-by-row kernel's sums (bf16 A)."""
    from lpmace.kernels import table_gradient as module
    from lpmace.kernels import table_gradient_dot

    def place(name):  # (module, constant) of a setting's key
        return (table_gradient_dot, name[4:]) if name.startswith("dot.") else (module, name)

    defaults = {name: getattr(*place(name)) for setting in TABLE_GRADIENT_SETTINGS for name in setting}
    grouping = args.grouping
    a = torch.randn(args.nodes, args.channels, dim, device="cuda", generator=gen)
    print(f"# table gradient: {args.nodes} nodes, {args.channels} channels, {args.elements} elements "
          f"({args.present} present), {torch.cuda.get_device_name()}; defaults {defaults}; ms, A bf16 / fp32")
    inputs = {}
    for call, (degree, p) in TABLE_GRADIENT_CALLS.items():
        index = monomial_table(dim, 3).index[: monomial_table(dim, 3).rows_up_to[degree]].cuda()
        h = torch.randn(args.nodes, args.channels, p, device="cuda", generator=gen)
        module.BY_PREFIX = 0  # the difference is from the row-by-row kernel's sums
        inputs[call] = index, h, module._triton(a.to(torch.bfloat16), species, index, h, args.elements, grouping)
        module.BY_PREFIX = defaults["BY_PREFIX"]
    for setting in TABLE_GRADIENT_SETTINGS:
        for name, value in {**defaults, **setting}.items():
            setattr(*place(name), value)
        line = []
        for call, (index, h, reference) in inputs.items():
            got = module._triton(a.to(torch.bfloat16), species, index, h, args.elements, grouping)
            diff = ((got - reference).norm() / reference.norm()).item()
            times = [_time(lambda: module._triton(x, species, index, h, args.elements, grouping), args.repeats)
                     for x in (a.to(torch.bfloat16), a)]
            line.append(f"{call} {times[0]:.3f} / {times[1]:.3f} (bf16 diff {diff:.1e})")
        print(f"{setting or 'defaults'}: " + "; ".join(line), flush=True)
    for name, value in defaults.items():
        setattr(*place(name), value)


def _module(path: pathlib.Path):
    """A previous polynomial_dot.py, imported on its own (it imports lpmace's launch and monomials)."""
    spec = importlib.util.spec_from_file_location("polynomial_dot_old", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nodes", type=int, default=864)
    parser.add_argument("--channels", type=int, default=128)
    parser.add_argument("--elements", type=int, default=4)
    parser.add_argument("--present", type=int, default=4, help="elements that have nodes")
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--out", type=pathlib.Path, default=None)
    parser.add_argument("--sweep", action="store_true")
    parser.add_argument("--once", action="store_true")
    parser.add_argument("--table-gradient", action="store_true", help="time the ∂T kernel's calls and settings")
    parser.add_argument("--old", type=pathlib.Path, help="a previous polynomial_dot.py: its prefix kernel timed beside")
    args = parser.parse_args()
    if not 1 <= args.present <= args.elements:
        parser.error(f"--present {args.present} must be between 1 and --elements ({args.elements})")
    if not torch.cuda.is_available():
        parser.error("this benchmark times CUDA kernels: no CUDA device here")
    gen = torch.Generator(device="cuda").manual_seed(0)
    dim = 16
    weights = torch.tensor([12.0, 12.0, 2.0, 1.0] + [1.0] * max(args.present - 4, 0))[: args.present]
    species = torch.multinomial(weights, args.nodes, replacement=True).cuda()
    args.grouping = element_grouping(species, args.elements)  # once, as a model call forms it
    if args.table_gradient:
        return _table_gradient(args, species, dim, gen)
    if args.once or args.sweep:
        return _once_or_sweep(args, species, dim, gen)
    a32 = torch.randn(args.nodes, args.channels, dim, device="cuda", generator=gen)
    old = _module(args.old) if args.old else None
    if old:  # the same pipelining as the kernel of now
        old.NUM_STAGES = polynomial_dot.NUM_STAGES
    rows = [f"# contraction kernels: {args.nodes} nodes, {args.channels} channels, {args.elements} elements "
            f"({args.present} present), {torch.cuda.get_device_name()}",
            "", "| call | rows | O | Q | row kernel fp32 (ms) | row kernel bf16 (ms) | prefix fp32 (ms) | prefix bf16 (ms) | "
            "fp32 diff | bf16 diff |" + (" old prefix fp32 (ms) | old prefix bf16 (ms) |" if old else ""),
            "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |" + (" --- | --- |" if old else "")]
    results = []
    for name, (degree, o, q) in CALLS.items():
        table_rows = monomial_table(dim, 3).rows_up_to[degree]
        index = monomial_table(dim, 3).index[:table_rows].cuda()
        table = torch.randn(args.elements, args.channels, table_rows, o, q, device="cuda", generator=gen)
        g = torch.randn(args.nodes, args.channels, q, device="cuda", generator=gen)
        a16 = a32.to(torch.bfloat16)
        reference = polynomial._triton_rows(a32, species, index, table, g, torch.float32, args.grouping)
        reference16 = polynomial._triton_rows(a16, species, index, table, g, torch.float32, args.grouping)
        fast32 = polynomial_dot.contraction_by_prefix(a32, species, index, table, g, grouping=args.grouping)
        fast16 = polynomial_dot.contraction_by_prefix(a16, species, index, table, g, grouping=args.grouping)
        diff32 = ((fast32 - reference).norm() / reference.norm()).item()
        diff16 = ((fast16 - reference16).norm() / reference16.norm()).item()
        t_rows = _time(lambda: polynomial._triton_rows(a32, species, index, table, g, torch.float32, args.grouping), args.repeats)
        t_rows16 = _time(lambda: polynomial._triton_rows(a16, species, index, table, g, torch.float32, args.grouping), args.repeats)
        t32 = _time(lambda: polynomial_dot.contraction_by_prefix(a32, species, index, table, g, grouping=args.grouping), args.repeats)
        t16 = _time(lambda: polynomial_dot.contraction_by_prefix(a16, species, index, table, g, grouping=args.grouping), args.repeats)
        results.append(dict(call=name, rows=table_rows, o=o, q=q, row_kernel_fp32_ms=t_rows, row_kernel_bf16_ms=t_rows16, prefix_fp32_ms=t32,
                            prefix_bf16_ms=t16, diff_fp32=diff32, diff_bf16=diff16))
        rows.append(f"| {name} | {table_rows} | {o} | {q} | {t_rows:.3f} | {t_rows16:.3f} | {t32:.3f} | {t16:.3f} | {diff32:.1e} | {diff16:.1e} |")
        if old:
            times = [_time(lambda: old.contraction_by_prefix(x, species, index, table, g, grouping=args.grouping), args.repeats) for x in (a32, a16)]
            results[-1].update(old_prefix_fp32_ms=times[0], old_prefix_bf16_ms=times[1])
            rows[-1] += f" {times[0]:.3f} | {times[1]:.3f} |"
    print("\n".join(rows))
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "contraction_kernels.json").write_text(json.dumps(dict(args={k: str(v) for k, v in vars(args).items() if k != "grouping"},
                                                                            results=results), indent=1))


if __name__ == "__main__":
    main()
