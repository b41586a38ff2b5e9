"""A committee's evaluation: members one after another (what `lpmace.Committee` runs) against one
batched pass over stacked weights (torch.func.stack_module_state + vmap), on the CPU by default.

    PYTHONPATH=src python benchmarks/committee_eval.py [--members 3] [--repeat 20] [--device cpu]

Prints the loop's time per committee call (fcc Cu 2x2x2, 32 atoms, tiny random fp32 members), and
for the batched pass either its time or why it cannot run.
"""

from __future__ import annotations

import argparse
import copy
import time

import torch
from ase.build import bulk

from lpmace.committee import Committee
from lpmace.model import MACE, MACEConfig


def tiny_member(seed: int) -> MACE:
    torch.manual_seed(seed)
    config = MACEConfig(atomic_numbers=(29,), E0s=(-0.0,), r_max=4.0, num_bessel=6, max_ell=2, channels=8, max_L=0,
                        correlation=(2, 2), radial_mlp=(16,), avg_num_neighbors=18.0)
    return MACE(config).float()


def timed(call, repeat: int, device) -> float:
    call()  # warm-up
    sync = torch.cuda.synchronize if torch.device(device).type == "cuda" else (lambda: None)
    sync()
    start = time.perf_counter()
    for _ in range(repeat):
        call()
    sync()
    return (time.perf_counter() - start) / repeat


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--members", type=int, default=3)
    parser.add_argument("--repeat", type=int, default=20)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    members = [tiny_member(seed) for seed in range(args.members)]
    committee = Committee(members, device=args.device, precision="fp32", backend="reference")
    graph = committee.graph(bulk("Cu", "fcc", a=3.61, cubic=True).repeat(2)).to(args.device)
    loop = timed(lambda: committee.evaluate(graph), args.repeat, args.device)
    print(f"loop over {args.members} members: {loop * 1e3:.2f} ms per committee call")

    params, buffers = torch.func.stack_module_state(committee.models)
    base = copy.deepcopy(committee.models[0]).to("meta")

    def one(p, b):
        return torch.func.functional_call(base, (p, b), (graph,), {"precision": "fp32"})["forces"]

    try:
        batched = timed(lambda: torch.vmap(one)(params, buffers), args.repeat, args.device)
        print(f"batched pass (vmap): {batched * 1e3:.2f} ms per committee call")
    except Exception as err:  # noqa: BLE001 - the measurement reports why the batched pass cannot run
        print(f"batched pass (vmap): cannot run: {type(err).__name__}: {' '.join(str(err).split())[:200]}")


if __name__ == "__main__":
    main()
