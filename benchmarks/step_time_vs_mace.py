"""Training-step and inference speed of lpmace per precision against mace-torch, same weights, one run.

A random mace-torch ScaleShiftMACE (ANCHORS.md's model: L=1, 128 channels, max_ell 3, correlation 3,
H C N O) is built in float32 and converted with lpmace.interop.from_mace_torch, so both run the
identical function. Workloads (ANCHORS.md): W3 batch (5 bundled 3BPA molecules, 135 atoms), W1
(32 random 27-atom molecules, 864 atoms), W2 (one 4096-atom periodic box, inference only).
A training step = energy + forces (create_graph) + loss + backward + Adam step. Median of 20 after
5 warm-up, CUDA-synchronised. Also: relative force RMSE against an fp64 evaluation of the same
weights on W2 (lpmace per precision; mace-torch fp32 vs its own fp64 copy).

    python benchmarks/step_time_vs_mace.py --out DIR [--device cuda] [--repeats 20]
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

from lpmace import datasets
from lpmace.data import Configuration, collate, graph_from_configuration, read_configurations
from lpmace.interop import from_mace_torch, mace_torch_inputs

Z = [1, 6, 7, 8]


def random_molecules(count, n, rng, box=7.0, dmin=1.0):
    out = []
    for _ in range(count):
        pos = []
        while len(pos) < n:
            p = rng.uniform(0, box, 3)
            if all(np.linalg.norm(p - q) > dmin for q in pos):
                pos.append(p)
        out.append(Configuration(numbers=rng.choice(Z, n), positions=np.array(pos), cell=np.zeros((3, 3)),
                                 pbc=np.zeros(3, bool), energy=0.0, forces=np.zeros((n, 3))))
    return out


def random_bulk(n, rng, density=0.1):
    length = (n / density) ** (1 / 3)
    m = math.ceil(n ** (1 / 3))
    grid = np.stack(np.meshgrid(*[np.arange(m)] * 3, indexing="ij"), -1).reshape(-1, 3)[:n]
    pos = (grid + 0.5 + rng.uniform(-0.2, 0.2, grid.shape)) * (length / m)
    return Configuration(numbers=rng.choice(Z, n), positions=pos, cell=np.eye(3) * length, pbc=np.ones(3, bool))


def build_mace(dtype):
    from e3nn import o3
    from mace import modules

    old = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        torch.manual_seed(0)
        return modules.ScaleShiftMACE(
            r_max=5.0, num_bessel=8, num_polynomial_cutoff=5, max_ell=3,
            interaction_cls=modules.interaction_classes["RealAgnosticResidualInteractionBlock"],
            interaction_cls_first=modules.interaction_classes["RealAgnosticResidualInteractionBlock"],
            num_interactions=2, num_elements=4, hidden_irreps=o3.Irreps("128x0e+128x1o"),
            MLP_irreps=o3.Irreps("16x0e"), atomic_energies=np.zeros(4), avg_num_neighbors=15.0,
            atomic_numbers=Z, correlation=3, gate=torch.nn.functional.silu, radial_MLP=[64, 64, 64],
            atomic_inter_scale=1.0, atomic_inter_shift=0.0)
    finally:
        torch.set_default_dtype(old)


def timed(fn, device, repeats):
    for _ in range(5):
        fn()
    times = []
    for _ in range(repeats):
        if device == "cuda":
            torch.cuda.synchronize()
        t = time.perf_counter()
        fn()
        if device == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t)
    return 1000 * statistics.median(times)


def peak(device, fn):
    if device != "cuda":
        return None
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    fn()
    torch.cuda.synchronize()
    return torch.cuda.max_memory_allocated() / 2**30


def lpmace_step(model, graph, precision, opt):
    def step():
        opt.zero_grad(set_to_none=True)
        out = model(graph, precision=precision, training=True)
        loss = (out["energy"] ** 2).mean() + 1000 * (out["forces"].double() ** 2).mean()
        loss.backward()
        opt.step()
    return step


def mace_step(model, inputs, opt):
    def step():
        opt.zero_grad(set_to_none=True)
        out = model(dict(inputs), training=True, compute_force=True)
        loss = (out["energy"] ** 2).mean() + 1000 * (out["forces"] ** 2).mean()
        loss.backward()
        opt.step()
    return step


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--repeats", type=int, default=20)
    ap.add_argument("--precisions", default="fp32,bf16-mixed,fp16-mixed")
    args = ap.parse_args()
    dev = args.device
    rng = np.random.default_rng(0)
    w3 = collate([graph_from_configuration(c, 5.0) for c in read_configurations(datasets.path("3bpa/train_300K.xyz"), index=":5")])
    w1 = collate([graph_from_configuration(c, 5.0) for c in random_molecules(32, 27, rng)])
    w2 = graph_from_configuration(random_bulk(4096, rng), 5.0)
    print(f"W3 {w3.num_atoms} atoms {w3.num_edges} edges; W1 {w1.num_atoms}/{w1.num_edges}; W2 {w2.num_atoms}/{w2.num_edges}", flush=True)
    mace32 = build_mace(torch.float32).to(dev)
    ours = from_mace_torch(mace32).float().to(dev)
    rows = []
    for name, graph in (("W3 train step", w3), ("W1 train step", w1)):
        g = graph.to(dev)
        inputs = {k: (v.float() if torch.is_floating_point(v) else v) for k, v in mace_torch_inputs(g, Z).items()}
        m = copy.deepcopy(mace32)
        ms = timed(mace_step(m, inputs, torch.optim.Adam(m.parameters())), dev, args.repeats)
        rows.append({"workload": name, "code": "mace-torch e3nn fp32", "ms": ms})
        print(json.dumps(rows[-1]), flush=True)
        for p in args.precisions.split(","):
            o = copy.deepcopy(ours)
            ms = timed(lpmace_step(o, g, p, torch.optim.Adam(o.parameters())), dev, args.repeats)
            rows.append({"workload": name, "code": f"lpmace {p}", "ms": ms})
            print(json.dumps(rows[-1]), flush=True)
    g = w2.to(dev)
    ref = ours.cpu()(w2, precision="fp64")["forces"].detach().to(dev)  # fp64 reference on the host
    ours.to(dev)
    inputs = {k: (v.float() if torch.is_floating_point(v) else v) for k, v in mace_torch_inputs(g, Z).items()}
    mace_f = mace32(dict(inputs), compute_force=True)["forces"].detach().double()
    rel = lambda f: float(((f.double() - ref) ** 2).mean().sqrt() / (ref ** 2).mean().sqrt())  # noqa: E731
    infer = lambda: mace32(dict(inputs), compute_force=True)  # noqa: E731
    rows.append({"workload": "W2 inference", "code": "mace-torch e3nn fp32", "ms": timed(infer, dev, args.repeats),
                 "peak_gb": peak(dev, infer), "force_rel_error_vs_fp64": rel(mace_f)})
    print(json.dumps(rows[-1]), flush=True)
    for p in args.precisions.split(","):
        fn = lambda: ours(g, precision=p)  # noqa: E731
        try:
            f = ours(g, precision=p)["forces"].detach()
            rows.append({"workload": "W2 inference", "code": f"lpmace {p}", "ms": timed(fn, dev, args.repeats),
                         "peak_gb": peak(dev, fn), "force_rel_error_vs_fp64": rel(f)})
        except torch.OutOfMemoryError:
            torch.cuda.empty_cache()
            rows.append({"workload": "W2 inference", "code": f"lpmace {p}", "ms": float("nan"), "peak_gb": "OOM"})
        print(json.dumps(rows[-1]), flush=True)
    env = {"device": torch.cuda.get_device_name() if dev == "cuda" else "cpu", "torch": torch.__version__}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "step_time_vs_mace.json").write_text(json.dumps({"environment": env, "rows": rows}, indent=1))
    print("| workload | code | median ms | peak GB | F error vs fp64 |")
    for r in rows:
        print(f"| {r['workload']} | {r['code']} | {r['ms']:.1f} | {r.get('peak_gb') or ''} | {r.get('force_rel_error_vs_fp64', '')} |")


if __name__ == "__main__":
    sys.exit(main())
