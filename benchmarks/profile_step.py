"""Where the time goes: torch.profiler over the W1 training step and W2 inference of the medium model,
per backend, top CUDA kernels by total time (and the CPU time of the step, to see launch-bound steps).

    python benchmarks/profile_step.py --precisions fp32,bf16-mixed --backends triton --size mp --out DIR
    python benchmarks/profile_step.py --trainer-step --workloads train --backends compiled --out DIR

--trainer-step profiles W1 as the trainer runs it (`lpmace bench`'s train step: loss, backward, clipping,
fused Adam; on CUDA the whole step replayed as one CUDA graph) and writes, per precision, the wall
time per step against the GPU's busy time (the sum of kernel and copy durations).
"""

from __future__ import annotations

import argparse
import itertools
import pathlib

import torch
from torch.profiler import ProfilerActivity, profile

from lpmace.backends import use
from lpmace.bench.workloads import build_model, workloads


def step(model, graph, precision, backend, train: bool):
    out = use(model, backend)(graph, precision=precision, training=train)
    if train:
        loss = (out["energy"].double() ** 2).mean() + (out["forces"].double() ** 2).mean()
        loss.backward()


def trainer_step(model, graph, precision, backend, device):
    """W1 as the trainer steps it: `lpmace bench`'s train step (CUDA graph on CUDA), first calls done."""
    from lpmace.bench.engines import lpmace_engine

    engine = lpmace_engine(model, precision, backend, device)
    run = engine.train_step(engine.prepare(graph))
    for _ in range(3):  # eager, recorded, replayed
        run()
    return run


def busy_ms(prof, steps: int) -> float:
    """Device time of the kernels and copies per step (ms; overlapping ones would count twice)."""
    device = [e for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA]
    return sum(e.device_time for e in device) / 1e3 / steps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--precisions", default="bf16-mixed", help="comma-separated precision policies")
    parser.add_argument("--backends", default="reference,triton")
    parser.add_argument("--size", default="medium")
    parser.add_argument("--rows", type=int, default=15)
    parser.add_argument("--workloads", default="train,infer", help="W1 training step (train), W2 inference (infer)")
    parser.add_argument("--out", type=pathlib.Path, required=True)
    parser.add_argument("--trainer-step", action="store_true", help="W1 as the trainer runs it (see above)")
    parser.add_argument("--device", default="cuda")
    args = parser.parse_args()
    if args.trainer_step:
        return main_trainer_step(args)
    args.out.mkdir(parents=True, exist_ok=True)
    model = build_model(args.size).cuda()
    w1, w2 = workloads(model.config, quick=False)[:2]
    for backend, precision in itertools.product(args.backends.split(","), args.precisions.split(",")):
        for name, graph, train in (("W1-train", w1.graph.to("cuda"), True), ("W2-infer", w2.graph.to("cuda"), False)):
            if ("train" if train else "infer") not in args.workloads.split(","):
                continue
            for _ in range(3):
                step(model, graph, precision, backend, train)
            torch.cuda.synchronize()
            with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
                for _ in range(5):
                    step(model, graph, precision, backend, train)
                torch.cuda.synchronize()
            table = prof.key_averages().table(sort_by="cuda_time_total", row_limit=args.rows)
            text = f"# {name} {backend} {precision} {args.size} (5 steps)\n{table}\n"
            (args.out / f"profile_{name}_{backend}_{precision}.txt").write_text(text)
            print(text, flush=True)


def main_trainer_step(args) -> None:
    import time

    args.out.mkdir(parents=True, exist_ok=True)
    model = build_model(args.size)
    w1 = workloads(model.config, quick=False)[0]
    cuda = args.device.startswith("cuda")
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    for backend, precision in itertools.product(args.backends.split(","), args.precisions.split(",")):
        run = trainer_step(model, w1.graph, precision, backend, args.device)
        sync()
        start, steps = time.perf_counter(), 20
        for _ in range(steps):
            run()
        sync()
        wall = (time.perf_counter() - start) * 1e3 / steps
        activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
        with profile(activities=activities) as prof:
            for _ in range(5):
                run()
            sync()
        busy = busy_ms(prof, 5) if cuda else float("nan")
        table = prof.key_averages().table(sort_by="cuda_time_total" if cuda else "cpu_time_total", row_limit=args.rows)
        text = (f"# W1-train trainer step {backend} {precision} {args.size}: wall {wall:.2f} ms per step "
                f"(20 steps), GPU busy {busy:.2f} ms per step (5 profiled steps)\n{table}\n")
        (args.out / f"profile_W1-trainer-step_{backend}_{precision}.txt").write_text(text)
        print(text.splitlines()[0], flush=True)


if __name__ == "__main__":
    main()
