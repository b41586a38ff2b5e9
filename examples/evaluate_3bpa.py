"""Evaluate energies and forces of the bundled 3BPA test molecules with an untrained lpmace model.

A stand-in for `lpmace demo` (train a small model on the bundled data, then evaluate it), which
replaces this script once training exists. It runs the whole inference path — bundled extxyz →
graphs → MACE → energies and forces, and the ASE calculator — with randomly initialised weights.
E0s come from the isolated atoms and the energy shift and force scale from the training set, as
mace-torch sets them up before training, so the energies land near the DFT values while the
forces are noise: the errors printed are those of an UNTRAINED model, not of MACE.
"""

from __future__ import annotations

import time

import ase.io
import numpy as np
import torch

import lpmace
from lpmace import datasets
from lpmace.data import (
    average_num_neighbours,
    collate,
    e0s_from_isolated_atoms,
    energy_shift_and_force_scale,
    graph_from_configuration,
    read_configurations,
)

N_TEST = 50  # of the 300 bundled test molecules; keeps the run to seconds on a laptop CPU
R_MAX = 5.0


def main() -> None:
    torch.manual_seed(0)
    train = read_configurations(datasets.path("3bpa/train_300K.xyz"))
    test = read_configurations(datasets.path("3bpa/test_300K.xyz"))[:N_TEST]
    elements = (1, 6, 7, 8)
    e0s = e0s_from_isolated_atoms(read_configurations(datasets.path("3bpa/iso_atoms.xyz"), forces_key=None), elements)
    shift, scale = energy_shift_and_force_scale(train, e0s)
    avg_neighbours = average_num_neighbours([graph_from_configuration(c, R_MAX) for c in train])
    config = lpmace.MACEConfig(
        atomic_numbers=elements, E0s=tuple(e0s[z] for z in elements), r_max=R_MAX, channels=32, max_L=1,
        avg_num_neighbors=avg_neighbours, scale=scale, shift=shift,
    )
    model = lpmace.MACE(config).double()
    n_parameters = sum(p.numel() for p in model.parameters())
    print(f"untrained MACE, {n_parameters:,} parameters, float64; 3BPA: {len(train)} training, {len(test)} test molecules")

    start = time.perf_counter()
    graph = collate([graph_from_configuration(c, R_MAX) for c in test])
    out = model(graph)
    seconds = time.perf_counter() - start
    energy_error = out["energy"].detach().numpy() - np.array([c.energy for c in test])
    force_error = out["forces"].detach().numpy() - np.concatenate([c.forces for c in test])
    n_atoms = graph.num_atoms // len(test)
    print(f"evaluated {len(test)} molecules in {seconds:.1f} s")
    print(f"energy RMSE {1e3 * np.sqrt(np.mean(energy_error**2)) / n_atoms:.1f} meV/atom, "
          f"force RMSE {1e3 * np.sqrt(np.mean(force_error**2)):.0f} meV/Å (untrained: expect large errors)")

    atoms = ase.io.read(datasets.path("3bpa/test_300K.xyz"), index=0)
    atoms.calc = lpmace.Calculator(model)
    print(f"ASE calculator, first test molecule: E = {atoms.get_potential_energy():.4f} eV "
          f"(DFT {atoms.info['REF_energy']:.4f} eV), max |F| = {np.abs(atoms.get_forces()).max():.3f} eV/Å")


if __name__ == "__main__":
    main()
