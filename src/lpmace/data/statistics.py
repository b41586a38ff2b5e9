"""Dataset statistics a MACE model is built with: E0s, average neighbour count, energy shift, scale.

Semantics follow mace-torch 0.3 (`mace/data/utils.py: compute_average_E0s`,
`mace/modules/utils.py: compute_avg_num_neighbors, compute_mean_rms_energy_forces`) so that a model
trained here and one trained there from the same data start from the same constants.
"""

from __future__ import annotations

import warnings
from typing import Mapping, Sequence

import numpy as np
import torch
from ase.data import chemical_symbols

from lpmace.data.extxyz import Configuration, isolated_atom_energies
from lpmace.data.graph import Graph
from lpmace.elements import check_known_elements
from lpmace.errors import InputError

__all__ = ["fit_e0s", "e0s_from_isolated_atoms", "average_num_neighbours", "energy_shift_and_force_scale"]


def _element_counts(configs: Sequence[Configuration], atomic_numbers: Sequence[int]) -> np.ndarray:
    """[n_configs, n_elements] float64 number of atoms of each element in each configuration."""
    column = {int(z): k for k, z in enumerate(atomic_numbers)}
    counts = np.zeros((len(configs), len(column)))
    for row, config in enumerate(configs):
        check_known_elements(config.numbers, atomic_numbers, config.source, "atomic_numbers")
        z, n = np.unique(config.numbers, return_counts=True)
        counts[row, [column[int(v)] for v in z]] = n
    return counts


def fit_e0s(configs: Sequence[Configuration], atomic_numbers: Sequence[int]) -> dict[int, float]:
    """Per-element reference energies by least squares: E_config ≈ Σ_z count_z · E0_z.

    Configurations without energy are skipped. If the compositions do not determine every E0 (e.g. all
    configurations share one stoichiometry), the minimum-norm solution is returned with a warning, as
    mace-torch does; its total for the training compositions is still right.

    Returns:
        {atomic number: E0 in eV} for every entry of `atomic_numbers`.

    Raises:
        InputError: no configuration has an energy, an element of `atomic_numbers` appears in none of
            them, or a configuration has an element not in `atomic_numbers`.
    """
    labelled = [c for c in configs if c.energy is not None]
    if not labelled:
        raise InputError("cannot fit E0s: no configuration has an energy")
    counts = _element_counts(labelled, atomic_numbers)
    absent = [int(z) for z, seen in zip(atomic_numbers, counts.any(axis=0)) if not seen]
    if absent:
        names = ", ".join(chemical_symbols[z] for z in absent)
        raise InputError(f"cannot fit E0s: element(s) {names} appear in no configuration with an energy")
    energies = np.array([c.energy for c in labelled], dtype=np.float64)
    e0s, _, rank, _ = np.linalg.lstsq(counts, energies, rcond=None)
    if rank < counts.shape[1]:
        warnings.warn(
            f"E0 fit is underdetermined (composition rank {rank} < {counts.shape[1]} elements); "
            "using the minimum-norm solution — prefer isolated-atom energies",
            stacklevel=2,
        )
    return {int(z): float(e) for z, e in zip(atomic_numbers, e0s)}


def e0s_from_isolated_atoms(configs: Sequence[Configuration], atomic_numbers: Sequence[int]) -> dict[int, float]:
    """E0s read from isolated-atom frames (see `isolated_atom_energies`), one for each element asked.

    Raises:
        InputError: an element of `atomic_numbers` has no isolated-atom frame.
    """
    found = isolated_atom_energies(configs)
    missing = [int(z) for z in atomic_numbers if int(z) not in found]
    if missing:
        names = ", ".join(chemical_symbols[z] for z in missing)
        have = ", ".join(chemical_symbols[z] for z in sorted(found)) or "none"
        raise InputError(f"no isolated-atom energy for {names} (isolated atoms found: {have})")
    return {int(z): found[int(z)] for z in atomic_numbers}


def average_num_neighbours(graphs: Sequence[Graph]) -> float:
    """Mean number of incoming edges per atom, over atoms that have at least one.

    This is mace-torch's `compute_avg_num_neighbors` (it averages the counts of
    ``torch.unique(receivers)``, so atoms without neighbours do not lower the mean); with no isolated
    atoms it equals n_edges / n_atoms. The interaction block divides its neighbour sum by it.
    """
    if len(graphs) == 0:
        raise InputError("cannot average neighbours over no graphs")
    edges = sum(g.num_edges for g in graphs)
    receiving = sum(int(torch.unique(g.edge_index[1]).numel()) for g in graphs)
    if receiving == 0:
        raise InputError("no atom has a neighbour within r_max: average number of neighbours undefined")
    return edges / receiving


def energy_shift_and_force_scale(
    configs: Sequence[Configuration], e0s: Mapping[int, float]
) -> tuple[float, float]:
    """mace-torch's ``mean_rms`` scaling: (shift, scale) of the site energies.

    shift = mean over configurations of (E - Σ_atoms E0(z)) / n_atoms (configurations with energy);
    scale = sqrt(mean of squared force components) over all atoms of configurations with forces.
    A zero scale is replaced by 1 with a warning (no scaling), as in mace-torch.

    Raises:
        InputError: no energies or no forces, or an element without an E0.
    """
    labelled = [c for c in configs if c.energy is not None]
    with_forces = [c.forces for c in configs if c.forces is not None]
    if not labelled or not with_forces:
        raise InputError(
            f"need energies and forces for shift/scale; have {len(labelled)} energies, {len(with_forces)} force sets"
        )
    per_atom = []
    for config in labelled:
        try:
            reference = sum(e0s[int(z)] for z in config.numbers)
        except KeyError as err:
            raise InputError(f"{config.source}: no E0 for element {chemical_symbols[err.args[0]]}") from None
        per_atom.append((config.energy - reference) / config.num_atoms)
    shift = float(np.mean(per_atom))
    scale = float(np.sqrt(np.mean(np.square(np.concatenate(with_forces)))))
    if scale == 0.0:
        warnings.warn("RMS of forces is zero; using scale 1 (no scaling)", stacklevel=2)
        scale = 1.0
    return shift, scale
