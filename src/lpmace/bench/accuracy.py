"""What a precision costs: errors against an fp64 evaluation of the same weights, and equivariance.

Accuracy: every engine's energies, forces and stresses against lpmace's fp64 engine on the same
structures (real data and the synthetic W2 box), compared by `lpmace.evaluate.errors_against`; no
labels are involved, so the numbers isolate the arithmetic. Energies in meV/atom (RMSE and maximum
over structures), forces in meV/Å (RMSE, maximum component) and relative (RMSE(F − F64) / RMS(F64),
ANCHORS.md's measure), stress in meV/Å³.

Equivariance: forces must rotate with the structure, F(Rx) = R F(x), for rotations and for a
reflection (MACE's features carry parity). The error is RMSE(F(Rx) − F(x) Rᵀ) / RMS(F(x)) over
`rotations` random rotations (seeded), and the same for one improper rotation.
"""

from __future__ import annotations

import math
from typing import Callable, Sequence

import numpy as np
import torch

from lpmace.bench.engines import Engine
from lpmace.bench.workloads import rotate_graph
from lpmace.data import batches
from lpmace.data.graph import Graph
from lpmace.evaluate import errors_against

__all__ = ["accuracy_rows", "equivariance_row", "predictions", "random_rotation"]

@torch.no_grad()
def predictions(engine: Engine, graphs: Sequence[Graph], batch_size: int = 16) -> dict:
    """Float64 host arrays: energy [n_graphs] eV, atoms [n_graphs], forces [n_atoms, 3] eV/Å and, when
    every structure is periodic in 3 directions, stress [n_graphs, 3, 3] eV/Å³ (else None)."""
    periodic = all(bool(g.pbc.all()) for g in graphs)
    parts: dict = {"energy": [], "atoms": [], "forces": [], "stress": []}
    for batch in batches(graphs, batch_size):
        with torch.enable_grad():  # forces are autograd derivatives
            out = engine.infer_unrecorded(engine.prepare(batch), periodic)
        parts["energy"].append(out["energy"].detach().to("cpu", torch.float64).numpy())
        parts["atoms"].append((batch.ptr[1:] - batch.ptr[:-1]).numpy())
        parts["forces"].append(out["forces"].detach().to("cpu", torch.float64).numpy())
        if periodic:
            parts["stress"].append(out["stress"].detach().to("cpu", torch.float64).reshape(-1, 3, 3).numpy())
    result = {k: np.concatenate(v) if v else None for k, v in parts.items()}
    return result


def accuracy_rows(engines: Sequence[Engine], reference: Engine, datasets: Sequence[tuple[str, Sequence[Graph]]],
                  *, batch_size: int = 16, tick: Callable[[str], None] = lambda s: None) -> list[dict]:
    """One row per (dataset, engine): errors against `reference` (lpmace fp64) on that dataset."""
    rows = []
    for name, graphs in datasets:
        ref = predictions(reference, graphs, batch_size)
        for engine in engines:
            tick(f"accuracy {name} {engine.label}")
            pred = predictions(engine, graphs, batch_size)  # fp64 too: a second evaluation, not a copy
            rows.append({"dataset": name, "configs": len(graphs), "atoms": int(ref["atoms"].sum()), **engine.row(),
                         **errors_against(pred, ref)})
    return rows


def random_rotation(rng: np.random.Generator, proper: bool = True) -> torch.Tensor:
    """A uniformly random 3×3 rotation (float64); `proper=False` gives a reflection times a rotation."""
    q, r = np.linalg.qr(rng.normal(size=(3, 3)))
    q = q * np.sign(np.diag(r))  # Haar-uniform orthogonal
    if (np.linalg.det(q) > 0) != proper:
        q = -q
    return torch.from_numpy(q)


@torch.no_grad()
def equivariance_row(engine: Engine, graph: Graph, *, rotations: int = 3, seed: int = 0) -> dict:
    """Relative force error of `engine` under `rotations` random rotations and one reflection of `graph`."""
    rng = np.random.default_rng(seed)

    def forces_energy(g: Graph) -> tuple[torch.Tensor, torch.Tensor]:
        with torch.enable_grad():
            out = engine.infer_unrecorded(engine.prepare(g), False)
        return out["forces"].detach().to("cpu", torch.float64), out["energy"].detach().to("cpu", torch.float64)

    forces, energy = forces_energy(graph)
    scale = float(forces.pow(2).mean().sqrt())

    def errors(rotation: torch.Tensor) -> tuple[float, float]:
        rotated_forces, rotated_energy = forces_energy(rotate_graph(graph, rotation))
        diff = rotated_forces - forces @ rotation.T
        force_error = float(diff.pow(2).mean().sqrt()) / scale if scale > 0 else math.nan
        energy_error = float((rotated_energy - energy).abs().max() / energy.abs().max().clamp_min(1e-300))
        return force_error, energy_error

    proper = [errors(random_rotation(rng, proper=True)) for _ in range(rotations)]
    reflection, _ = errors(random_rotation(rng, proper=False))
    return {**engine.row(), "rotations": rotations, "force_rel_rmse_rotation": max(f for f, _ in proper),
            "force_rel_rmse_reflection": reflection, "energy_rel_rotation": max(e for _, e in proper)}
