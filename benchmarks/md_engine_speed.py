"""MD step time of the torch engine (`lpmace.dynamics`) against the ASE engine and the model alone, on CUDA.

    python benchmarks/md_engine_speed.py --out DIR [--backend auto] [--steps 60] [--warmup 10] [--quick]

Cases (medium model, random weights, NVE at 300 K, dt 0.5 fs), each in bf16-mixed and fp32:
  w2       the W2 box (4,096 atoms): torch-engine step, ASE-engine step (lpmace.Calculator + ASE's
           velocity Verlet), and the model alone (energy + forces on a fixed graph, CUDA graphs);
  molecule a 12-atom molecule (benzene): torch-engine step;
  batched  256 random 64-atom C/H/N/O cells: the torch engine on all of them at once against the ASE
           engine one system at a time (a few systems timed), in steps·systems per second.
Step times are the host's wall time over the steps after `--warmup` (first calls: eager, CUDA-graph
recording), taken at run_dynamics' / run_md's `should_stop` calls; model_ms_per_step is the engine's own
figure (CUDA events, warm-up included). Writes DIR/md_engine_speed.json and prints a table.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import statistics
import sys
import time

import numpy as np
import torch
from ase import Atoms
from ase.build import molecule

from lpmace.bench.workloads import build_model, random_bulk
from lpmace.calculator import Calculator
from lpmace.dynamics import run_dynamics
from lpmace.md import run_md

PRECISIONS = ("bf16-mixed", "fp32")


def _clock(times: list):
    """should_stop that records the host time of each call (before each step) and never stops."""
    def should_stop() -> bool:
        times.append(time.perf_counter())
        return False
    return should_stop


def _window_ms(times: list, end: float, warmup: int) -> float:
    """ms per step from the call before step warmup+1 to `end` (the last step done)."""
    steps = len(times) - warmup
    return 1e3 * (end - times[warmup]) / steps


def torch_engine(model, structures, precision, backend, steps, warmup) -> dict:
    times: list = []
    run = run_dynamics(model, structures, steps=warmup + steps, dt_fs=0.5, temperature_K=300.0, seed=0,
                       interval=warmup + steps, precision=precision, device="cuda", backend=backend,
                       max_energy_change_per_atom=1e9, should_stop=_clock(times))
    torch.cuda.synchronize()
    ms = _window_ms(times, time.perf_counter(), warmup)
    return {"ms_per_step": ms, "model_ms_per_step_incl_warmup": run.model_ms_per_step,
            "neighbour_list_builds": run.neighbour_list_builds, "blow_ups": run.summary()["blow_ups"],
            "steps_systems_per_s": 1e3 * len(structures) / ms}


def ase_engine(model, atoms, precision, backend, steps, warmup) -> dict:
    times: list = []
    calculator = Calculator(model, device="cuda", precision=precision, backend=backend)
    run_md(atoms.copy(), calculator, steps=warmup + steps, dt_fs=0.5, temperature_K=300.0, seed=0,
           interval=warmup + steps, max_energy_change_per_atom=1e9, should_stop=_clock(times))
    torch.cuda.synchronize()
    return {"ms_per_step": _window_ms(times, time.perf_counter(), warmup)}


def model_only(model, atoms, precision, backend, reps, warmup) -> dict:
    """Energy + forces of one fixed graph on the device, as the calculator calls the model (CUDA graphs)."""
    from lpmace.data.batching import graph_from_atoms

    calculator = Calculator(model, device="cuda", precision=precision, backend=backend)
    graph = graph_from_atoms(atoms, model.config.r_max).to("cuda")
    times = []
    for i in range(warmup + reps):
        torch.cuda.synchronize()
        start = time.perf_counter()
        calculator._evaluate(graph, compute_stress=False)
        torch.cuda.synchronize()
        if i >= warmup:
            times.append(1e3 * (time.perf_counter() - start))
    return {"ms_per_call": statistics.median(times)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=pathlib.Path, required=True)
    parser.add_argument("--backend", default="auto")
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--systems", type=int, default=256)
    parser.add_argument("--quick", action="store_true", help="W2 of 512 atoms, 16 systems: a smoke run")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    model = build_model("medium")
    box = random_bulk(512 if args.quick else 4096, model.config.atomic_numbers, rng)
    w2 = Atoms(numbers=box.numbers, positions=box.positions, cell=box.cell, pbc=True)
    benzene = molecule("C6H6")
    systems = 16 if args.quick else args.systems
    cells = [random_bulk(64, (1, 6, 7, 8), rng) for _ in range(systems)]
    cells = [Atoms(numbers=c.numbers, positions=c.positions, cell=c.cell, pbc=True) for c in cells]

    rows = []
    steps, warmup = args.steps, args.warmup
    cases = [
        ("w2", "torch engine", lambda p: torch_engine(model, [w2], p, args.backend, steps, warmup)),
        ("w2", "ase engine", lambda p: ase_engine(model, w2, p, args.backend, max(steps // 2, 5), warmup)),
        ("w2", "model only", lambda p: model_only(model, w2, p, args.backend, steps // 2, warmup)),
        ("molecule", "torch engine", lambda p: torch_engine(model, [benzene], p, args.backend, steps * 3, warmup)),
        ("batched", "torch engine", lambda p: torch_engine(model, cells, p, args.backend, steps, warmup)),
        # one at a time: a few systems timed stand for all of them (each costs the same)
        ("batched", "ase engine (1 system)", lambda p: ase_engine(model, cells[0], p, args.backend, steps, warmup)),
    ]
    for precision in PRECISIONS:
        for case, what, measure in cases:
            began = time.perf_counter()
            row = {"case": case, "engine": what, "precision": precision, **measure(precision),
                   "wall_s": time.perf_counter() - began}
            if what.startswith("ase engine (1"):
                row["steps_systems_per_s"] = 1e3 / row["ms_per_step"]
            rows.append(row)
            print(json.dumps(row), flush=True)
            (args.out / "md_engine_speed.json").write_text(json.dumps(
                {"device": torch.cuda.get_device_name(), "w2_atoms": len(w2), "systems": systems, "rows": rows},
                indent=1))
    print(_table(rows))
    return 0


def _table(rows) -> str:
    lines = [f"{'case':9} {'engine':22} {'precision':11} {'ms/step':>9} {'model ms':>9} {'steps·sys/s':>12} {'builds':>7}"]
    for r in rows:
        ms = r.get("ms_per_step", r.get("ms_per_call"))
        model_ms = r.get("model_ms_per_step_incl_warmup")
        rate = r.get("steps_systems_per_s")
        lines.append(f"{r['case']:9} {r['engine']:22} {r['precision']:11} {ms:9.2f} "
                     f"{'' if model_ms is None else f'{model_ms:9.2f}':>9} {'' if rate is None else f'{rate:12.0f}':>12} "
                     f"{r.get('neighbour_list_builds', ''):>7}")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
