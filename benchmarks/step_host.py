"""Where a W1 training step's wall time goes: host or GPU.

`lpmace bench` times each training step between two device synchronisations; the trainer (and
`profile_step.py --trainer-step`) launches steps back to back. This script times `lpmace bench`'s
step (a CUDA-graph replay, `lpmace.train.cuda_graphs.StepGraphs`) both ways in one process, cuts the
host's part of a replayed step into its pieces (padding, the recordings' key, the copy into the static
batch, the replay call, the wait for the GPU), sums the GPU's busy time (torch.profiler), and prints the
host functions that take the most CPU time (cProfile) and the kernels that take the most GPU time:

    python benchmarks/step_host.py --size medium --precisions bf16-mixed,fp32 --out DIR
    python benchmarks/step_host.py --size medium --precisions bf16-mixed --set lpmace.kernels.table_gradient.PROGRAMS=0

``--set MODULE.NAME=INT`` sets a module constant before anything runs (A/B of launch settings).
"""

from __future__ import annotations

import argparse
import cProfile
import importlib
import io
import pathlib
import pstats
import statistics
import time

import torch
from torch.profiler import ProfilerActivity, profile

from lpmace.bench.workloads import build_model, workloads


def _median_ms(times) -> float:
    return 1e3 * statistics.median(times)


def pieces(graphs, graph) -> dict:
    """One replayed step's host pieces (s), as `StepGraphs.step` runs them, then the wait for the GPU."""
    from lpmace.data.padding import pad_graph

    sync = torch.cuda.synchronize
    sync()
    t0 = time.perf_counter()
    padded = pad_graph(graph, graphs.r_max)
    t1 = time.perf_counter()
    graphs._fixed()
    t2 = time.perf_counter()
    with torch.cuda.stream(graphs.stream):
        shape, _ = graphs._static(padded)
        t3 = time.perf_counter()
        recording = graphs.recordings[(shape, "bench")]
        recording.graph.replay()
    t4 = time.perf_counter()
    sync()
    t5 = time.perf_counter()
    return {"pad": t1 - t0, "key": t2 - t1, "copy": t3 - t2, "replay call": t4 - t3, "wait": t5 - t4, "total": t5 - t0}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", default="medium")
    parser.add_argument("--precisions", default="bf16-mixed,fp32")
    parser.add_argument("--backend", default="compiled")
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--rows", type=int, default=40, help="rows of the table of kernels (5 steps)")
    parser.add_argument("--set", action="append", default=[], help="MODULE.NAME=INT (a module constant)")
    parser.add_argument("--out", type=pathlib.Path, default=None)
    args = parser.parse_args()
    if not torch.cuda.is_available():
        parser.error("this script times CUDA-graph training steps: no CUDA device here")
    for item in args.set:
        name, _, value = item.partition("=")
        module, _, attr = name.rpartition(".")
        try:
            target = importlib.import_module(module) if module else None
        except ImportError:
            target = None
        if target is None or not hasattr(target, attr) or not value.lstrip("-").isdigit():
            parser.error(f"--set {item!r}: expected MODULE.NAME=INT naming an existing module constant")
        setattr(target, attr, int(value))
    from lpmace.bench.engines import lpmace_engine
    from lpmace.train.cuda_graphs import StepGraphs

    model = build_model(args.size)
    w1 = workloads(model.config, quick=False)[0]
    tag = ",".join(args.set) or "defaults"
    for precision in args.precisions.split(","):
        captured = {}
        original = StepGraphs.step

        def step(self, *a, **k):
            captured["graphs"] = self
            return original(self, *a, **k)
        StepGraphs.step = step
        engine = lpmace_engine(model, precision, args.backend, "cuda")
        graph = engine.prepare(w1.graph)
        run = engine.train_step(graph)
        for _ in range(3):  # eager, recorded, replayed
            run()
        StepGraphs.step = original
        graphs = captured["graphs"]
        torch.cuda.synchronize()
        start = time.perf_counter()
        for _ in range(args.steps):
            run()
        torch.cuda.synchronize()
        pipelined = (time.perf_counter() - start) * 1e3 / args.steps
        synced = []
        for _ in range(args.steps):
            torch.cuda.synchronize()
            t = time.perf_counter()
            run()
            torch.cuda.synchronize()
            synced.append(time.perf_counter() - t)
        parts = [pieces(graphs, graph) for _ in range(args.steps)]
        with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
            for _ in range(5):
                run()
            torch.cuda.synchronize()
        device = [e for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA]
        busy = sum(e.device_time for e in device) / 1e3 / 5
        kernels = len(device) / 5
        host = cProfile.Profile()
        host.enable()
        for _ in range(10):
            run()
        torch.cuda.synchronize()
        host.disable()
        text = io.StringIO()
        pstats.Stats(host, stream=text).sort_stats("tottime").print_stats(12)
        line = (f"# {args.size} W1 trainer step {args.backend} {precision} [{tag}]: pipelined {pipelined:.2f} ms, "
                f"synced {_median_ms(synced):.2f} ms (min {1e3 * min(synced):.2f}), GPU busy {busy:.2f} ms, "
                f"{kernels:.0f} device events per step; host pieces (median ms): "
                + ", ".join(f"{k} {_median_ms([p[k] for p in parts]):.3f}" for k in parts[0]))
        print(line, flush=True)
        cpu = prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=12)
        gpu = prof.key_averages().table(sort_by="cuda_time_total", row_limit=args.rows)
        if args.out:
            args.out.mkdir(parents=True, exist_ok=True)
            name = f"host_{args.size}_{precision}_{tag.replace('=', '-').replace(',', '+')}.txt"
            (args.out / name).write_text(f"{line}\n\n{cpu}\n\n{text.getvalue()}\n\n{gpu}\n")
        del run, engine, graphs
        captured.clear()
        torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
