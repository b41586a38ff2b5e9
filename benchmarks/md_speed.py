"""Seconds per MD step of the W2 box (4,096 atoms, medium model) through `lpmace.Calculator`, per
backend, in one process: NVE with ASE's velocity Verlet, the edge count changing at every step.

Each run first does `--warmup` steps (compiling, CUDA-graph recording), then times `--steps` steps
(median and total), and reports the energy drift over the timed steps.

    python benchmarks/md_speed.py --out DIR [--precision bf16-mixed] [--steps 100] [--warmup 10]

Runs: triton; compiled (LPMACE_COMPILE_MODE=default); compiled with CUDA graphs and padded shapes
(LPMACE_COMPILE_MODE=reduce-overhead). Writes DIR/md_speed.json and prints one line per run.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import pathlib
import statistics
import sys
import time

import numpy as np
import torch

from lpmace.bench.workloads import build_model, random_bulk
from lpmace.calculator import Calculator

RUNS = (("triton", "default"), ("compiled", "default"), ("compiled", "reduce-overhead"))


def one_run(model, atoms, backend, mode, precision, steps, warmup, dt_fs):
    from ase import units
    from ase.md.velocitydistribution import MaxwellBoltzmannDistribution
    from ase.md.verlet import VelocityVerlet

    os.environ["LPMACE_COMPILE_MODE"] = mode
    atoms = atoms.copy()
    atoms.calc = Calculator(copy.deepcopy(model), device="cuda", precision=precision, backend=backend)
    MaxwellBoltzmannDistribution(atoms, temperature_K=300, rng=np.random.default_rng(0))
    dyn = VelocityVerlet(atoms, dt_fs * units.fs)
    first = atoms.get_potential_energy()  # the same structure for every run: the backends must agree
    times, energies = [], []
    for i in range(warmup + steps):
        torch.cuda.synchronize()
        start = time.perf_counter()
        dyn.run(1)
        torch.cuda.synchronize()
        if i >= warmup:
            times.append(time.perf_counter() - start)
            energies.append(atoms.get_total_energy())
    drift = (energies[-1] - energies[0]) / len(atoms)
    return {"backend": backend, "mode": mode, "precision": precision, "median_step_ms": 1e3 * statistics.median(times),
            "total_s": sum(times), "steps": steps, "warmup": warmup, "energy_drift_eV_per_atom": drift,
            "first_potential_energy_eV": first}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=pathlib.Path, required=True)
    parser.add_argument("--precision", default="bf16-mixed")
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--dt", type=float, default=0.5, help="fs")
    args = parser.parse_args()
    from ase import Atoms

    model = build_model("medium")
    config = random_bulk(4096, model.config.atomic_numbers, np.random.default_rng(0))
    atoms = Atoms(numbers=config.numbers, positions=config.positions, cell=config.cell, pbc=True)
    args.out.mkdir(parents=True, exist_ok=True)
    rows = []
    for backend, mode in RUNS:
        start = time.perf_counter()
        row = one_run(model, atoms, backend, mode, args.precision, args.steps, args.warmup, args.dt)
        row["wall_s_with_warmup"] = time.perf_counter() - start
        rows.append(row)
        print(json.dumps(row), flush=True)
        (args.out / "md_speed.json").write_text(json.dumps({"device": torch.cuda.get_device_name(), "rows": rows},
                                                           indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
