"""Milliseconds per call of `lpmace.dynamics.neighbours.VerletList`: a full build, and a reuse (the skin
check plus the cut of the stored candidates to the cutoff), for the workloads of a GPU-resident MD run:

- one periodic box of 4,096 atoms at 0.1 atoms/Å^3 (34.5 Å across);
- 256 periodic cells of 64 atoms each (slightly triclinic, same density), in one batched call;

each with cutoff 5 and 6 Å and skin 1 Å, random positions (seeded). Prints one line per case: median ms
of a build and of a reuse, edges, stored candidates, and (CUDA) the peak memory of a build.

    python benchmarks/neighbour_list_speed.py [--device cuda|cpu] [--dtype float64|float32] [--repeats 20]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from lpmace.dynamics.neighbours import VerletList

DENSITY = 0.1  # atoms / Å^3


def one_box(n_atoms: int, generator: torch.Generator):
    side = (n_atoms / DENSITY) ** (1.0 / 3.0)
    cell = side * torch.eye(3, dtype=torch.float64)[None]
    positions = torch.rand(n_atoms, 3, generator=generator, dtype=torch.float64) * side
    return positions, cell, torch.ones(1, 3, dtype=torch.bool), torch.zeros(n_atoms, dtype=torch.long), \
        torch.tensor([0, n_atoms])


def many_cells(n_systems: int, n_atoms: int, generator: torch.Generator):
    side = (n_atoms / DENSITY) ** (1.0 / 3.0)
    tilt = (torch.rand(n_systems, 3, 3, generator=generator, dtype=torch.float64) - 0.5) * 0.2 * side
    cell = side * torch.eye(3, dtype=torch.float64) + tilt * torch.tril(torch.ones(3, 3, dtype=torch.float64), -1)
    fractional = torch.rand(n_systems, n_atoms, 3, generator=generator, dtype=torch.float64)
    positions = torch.einsum("san,snk->sak", fractional, cell).reshape(-1, 3)
    batch = torch.arange(n_systems).repeat_interleave(n_atoms)
    ptr = torch.arange(n_systems + 1) * n_atoms
    return positions, cell, torch.ones(n_systems, 3, dtype=torch.bool), batch, ptr


def timed(call, device, repeats):
    times = []
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        result = call()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return 1e3 * statistics.median(times), result


def measure(name, inputs, cutoff, skin, device, dtype, repeats):
    positions, cell, pbc, batch, ptr = (x.to(device) for x in inputs)
    positions, cell = positions.to(dtype), cell.to(dtype)
    verlet = VerletList(cutoff, skin)
    verlet(positions, cell, pbc, batch, ptr)  # warm-up (allocator, kernels)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)

    def build():
        verlet.reset()
        return verlet(positions, cell, pbc, batch, ptr)

    build_ms, _ = timed(build, device, repeats)
    peak = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else float("nan")
    moved = positions + 0.01 * skin  # well within skin / 2: every reuse call reuses
    builds = verlet.builds
    reuse_ms, (edge_index, _) = timed(lambda: verlet(moved, cell, pbc, batch, ptr), device, repeats)
    assert verlet.builds == builds, "a reuse call rebuilt"
    candidates = verlet._stored["sender"].shape[0]
    print(f"{name:<28} cutoff {cutoff:.0f} skin {skin:.0f}  build {build_ms:8.2f} ms  reuse {reuse_ms:7.3f} ms  "
          f"edges {edge_index.shape[1]:>9,}  candidates {candidates:>9,}  peak {peak:5.2f} GiB", flush=True)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", default="float64", choices=["float64", "float32"])
    parser.add_argument("--repeats", type=int, default=20)
    args = parser.parse_args()
    device, dtype = torch.device(args.device), getattr(torch, args.dtype)
    generator = torch.Generator().manual_seed(0)
    workloads = [("1 box x 4096 atoms", one_box(4096, generator)),
                 ("256 cells x 64 atoms", many_cells(256, 64, generator))]
    print(f"device {device} ({torch.cuda.get_device_name(device) if device.type == 'cuda' else 'cpu'}), "
          f"positions {args.dtype}, median of {args.repeats}")
    for name, inputs in workloads:
        for cutoff in (5.0, 6.0):
            measure(name, inputs, cutoff, 1.0, device, dtype, args.repeats)


if __name__ == "__main__":
    main()
