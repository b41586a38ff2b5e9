"""Where the time goes: torch.profiler over the W1 training step and W2 inference of the medium model,
per backend, top CUDA kernels by total time (and the CPU time of the step, to see launch-bound steps).

    python benchmarks/profile_step.py --precisions fp32,bf16-mixed --backends triton --size mp --out DIR
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--precisions", default="bf16-mixed", help="comma-separated precision policies")
    parser.add_argument("--backends", default="reference,triton")
    parser.add_argument("--size", default="medium")
    parser.add_argument("--rows", type=int, default=15)
    parser.add_argument("--workloads", default="train,infer", help="W1 training step (train), W2 inference (infer)")
    parser.add_argument("--out", type=pathlib.Path, required=True)
    args = parser.parse_args()
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


if __name__ == "__main__":
    main()
