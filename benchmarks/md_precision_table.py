"""NVE energy conservation per precision policy: the table of docs/experiments/md_precision.md.

Reads every run folder RESULTS/runs/LABEL_sSEED/ written by RESULTS/run_nve.sh (md.csv, traj.xyz,
command.txt) and reports, per run,

- drift: the slope of a linear fit of the total energy (the policy's own potential energy plus the
  kinetic energy) against time, meV/atom/ps (`lpmace.md.energy_drift`, what `lpmace md` prints);
- std: the standard deviation of that total energy, meV/atom;
- drift64 and std64: the same with the potential energy of each sampled frame re-evaluated in fp64
  with the same weights. A 16-bit readout rounds the site energies it reports (bf16 keeps 8 bits:
  up to ~4 meV on a 1 eV site energy) without that rounding reaching the forces, so the policy's own total
  energy can fluctuate while the trajectory conserves the fp64 energy, and the reverse: this column
  tells noise in the energy the policy reports from work done by forces that are no gradient;
- wander and wander64: the range (max - min) of the total energy averaged over 8 equal blocks of the
  run (0.25 ps for 2 ps), meV/atom. Rounding errors in the forces make the energy random-walk: the
  slope of a 2 ps fit then has either sign and can be near 0 by chance (a walk that came back), while
  the block averages still show how far the energy went, with the per-sample noise averaged out.

It also writes RESULTS/force_errors.json: per policy of the runs, the relative force RMSE against
the fp64 evaluation of the same weights on the first 20 configurations of the held-out test file
(how far each policy's forces are from a gradient's, before any dynamics).

    python benchmarks/md_precision_table.py RESULTS   # writes RESULTS/results.json, prints Markdown
"""

from __future__ import annotations

import csv
import json
import pathlib
import sys

import numpy as np
import torch


def read_run(folder: pathlib.Path) -> dict:
    with open(folder / "md.csv") as handle:
        rows = list(csv.DictReader(handle))
    return {key: np.array([float(r[key]) for r in rows]) for key in rows[0]}


def fp64_potentials(model, trajectory: pathlib.Path) -> np.ndarray:
    """Potential energy (eV) of every frame of `trajectory` under the fp64 policy (same weights)."""
    import ase.io

    from lpmace.calculator import Calculator

    calc = Calculator(model, device="cpu", precision="fp64", backend="reference")
    return np.array([calc.get_potential_energy(atoms) for atoms in ase.io.iread(trajectory, index=":")])


def wander(total_eV: np.ndarray, n_atoms: int, blocks: int = 8) -> float:
    """Range of the block means of the total energy after step 0, meV/atom (see the docstring)."""
    samples = total_eV[1:][: (len(total_eV) - 1) // blocks * blocks]
    means = samples.reshape(blocks, -1).mean(axis=1)
    return float((means.max() - means.min()) / n_atoms * 1000)


def summarise(folder: pathlib.Path, model) -> dict:
    from lpmace.md import energy_drift

    run = read_run(folder)
    stdout = (folder / "stdout.txt").read_text()
    n_atoms = int(stdout.split(" atoms,")[0].split()[-1])  # "..., nve, 9 atoms, dt 0.5 fs"
    total = run["total_eV"]
    out = {
        "run": folder.name, "command": (folder / "command.txt").read_text().strip(),
        "steps": int(run["step"][-1]), "ps": float(run["time_fs"][-1] / 1000),
        "drift": energy_drift(run["time_fs"], total, n_atoms),
        "std": float(np.std(total) / n_atoms * 1000),
        "mean_T": float(run["temperature_K"].mean()),
    }
    for line in stdout.splitlines():
        if line.startswith("wall time"):
            out["ms_per_step"] = float(line.split()[2])
    saved = folder / "fp64_potential_eV.txt"  # the re-evaluation, kept beside the run
    potential64 = np.loadtxt(saved) if saved.exists() else np.array([])
    if potential64.shape != run["kinetic_eV"].shape:
        potential64 = fp64_potentials(model, folder / "traj.xyz")
        np.savetxt(saved, potential64, fmt="%.10f")
    total64 = potential64 + run["kinetic_eV"]
    out["drift64"] = energy_drift(run["time_fs"], total64, n_atoms)
    out["std64"] = float(np.std(total64) / n_atoms * 1000)
    out["wander"], out["wander64"] = wander(total, n_atoms), wander(total64, n_atoms)
    return out


def force_errors(model, results: pathlib.Path, structure: str, precisions: list) -> dict:
    """Relative force RMSE against fp64 per precision, on the first 20 frames of `structure` (the
    file the runs start from: the held-out test set)."""
    from lpmace.data import collate, graph_from_configuration, read_configurations

    configs = read_configurations(structure, index=":20")
    graph = collate([graph_from_configuration(c, model.config.r_max) for c in configs])
    ref = model(graph, precision="fp64")["forces"]
    out = {}
    for name in precisions:
        spec = results / name if name.endswith(".yaml") else name
        got = model(graph, precision=spec)["forces"].double()
        out[name] = float(((got - ref) ** 2).mean().sqrt() / (ref**2).mean().sqrt())
    return out


def main(results: pathlib.Path) -> None:
    torch.set_num_threads(1)
    from lpmace.io import load

    model = load(results / "model.safetensors", device="cpu")
    cache = results / "results.json"
    done = {r["run"]: r for r in json.loads(cache.read_text())} if cache.exists() else {}
    rows = []
    for folder in sorted((results / "runs").iterdir()):
        if not (folder / "md.csv").exists():
            continue
        key = folder.name
        cached = done.get(key, {})
        rows.append(cached if cached.get("steps") == _last_step(folder) and "wander" in cached else
                    summarise(folder, model))
    cache.write_text(json.dumps(rows, indent=1) + "\n")
    precisions = sorted({r["command"].split("--precision ")[1].split()[0] for r in rows})
    structure = rows[0]["command"].split()[2]  # lpmace md STRUCTURE ...
    errors = force_errors(model, results, structure, precisions)
    (results / "force_errors.json").write_text(json.dumps(errors, indent=1) + "\n")
    for name, err in errors.items():
        print(f"relative force RMSE vs fp64, {name}: {err:.2e}")
    print("| run | steps | drift | std | wander | drift (fp64 E) | std (fp64 E) | wander (fp64 E) | T K | ms/step |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for r in rows:
        print(f"| {r['run']} | {r['steps']} | {r['drift']:+.4f} | {r['std']:.3f} | {r['wander']:.3f} | "
              f"{r['drift64']:+.4f} | {r['std64']:.3f} | {r['wander64']:.3f} | {r['mean_T']:.0f} | "
              f"{r.get('ms_per_step', float('nan')):.3g} |")


def _last_step(folder: pathlib.Path) -> int:
    lines = (folder / "md.csv").read_text().strip().splitlines()
    return int(lines[-1].split(",")[0])


if __name__ == "__main__":
    main(pathlib.Path(sys.argv[1]))
