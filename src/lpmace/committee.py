"""A committee of MACE models: the mean as the force field, the spread as the uncertainty.

Members must share their elements and cutoff (one graph serves all of them); they may differ in
anything else (seed, data subset, architecture, parameter dtype). Spreads are population standard
deviations over the M members (ddof = 0):

    energy_std_per_atom  = std_m(E_m) / n_atoms                          eV/atom, [n_graphs]
    forces_std           = sqrt(Σ_x std_m(F_m,ix)²) = |per-component std|  eV/Å,    [n_atoms]

i.e. the per-atom force spread is the norm of the per-component standard deviation (equivalently the
root of the mean squared distance of the members' force vectors from their mean), the "force
deviation" of DP-GEN-style active learning.

Members are evaluated one after another. A batched pass over stacked weights (torch.func
stack_module_state + vmap) does not run this model: vmap stops at the forward's data-dependent
control flow (element checks, autograd.grad for the forces). Measured with benchmarks/committee_eval.py
on the CPU (3 tiny fp32 members, 32 Cu atoms): the loop takes 12.8 ms per committee call.
"""

from __future__ import annotations

import os
from typing import Sequence

import ase
import numpy as np
import torch
from ase.calculators.calculator import Calculator as ASECalculator
from ase.calculators.calculator import all_changes

from lpmace.data.batching import atoms_source, graph_from_atoms
from lpmace.data.graph import Graph
from lpmace.elements import check_known_elements
from lpmace.errors import InputError
from lpmace.model import MACE
from lpmace.precision import PrecisionPolicy

__all__ = ["Committee", "load_members", "spread"]


def _load(member, device) -> MACE:
    if isinstance(member, (str, os.PathLike)):
        from lpmace.io import load

        return load(member, device=device)
    if not isinstance(member, MACE):
        raise InputError(f"Committee members must be lpmace MACE models or model file paths, got {type(member).__name__}")
    return member


def _name(member, index: int) -> str:
    return str(member) if isinstance(member, (str, os.PathLike)) else f"member {index}"


def load_members(members: Sequence, device=None) -> list[MACE]:
    """The models of a committee: MACE models or ``.safetensors`` paths (loaded onto `device`), at
    least 2, sharing elements and r_max (one graph serves all); InputError otherwise."""
    members = list(members)
    if len(members) < 2:
        raise InputError(f"a Committee needs at least 2 members, got {len(members)}")
    models = [_load(m, device) for m in members]
    first = models[0].config
    for i, (model, given) in enumerate(zip(models, members)):
        for key in ("atomic_numbers", "r_max"):
            if getattr(model.config, key) != getattr(first, key):
                raise InputError(f"Committee: {_name(given, i)} has {key} {getattr(model.config, key)} but "
                                 f"{_name(members[0], 0)} has {getattr(first, key)}; members must share "
                                 "elements and r_max")
    return models


def spread(energies: torch.Tensor, forces: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """(mean energy [S], mean forces [N, 3], energy std [S] (eV), forces_std [N]) of the members'
    energies [M, S] and forces [M, N, 3] (float64), as the module docstring defines them."""
    return (energies.mean(0), forces.mean(0), energies.std(0, correction=0),
            forces.std(0, correction=0).norm(dim=-1))


class Committee(ASECalculator):
    """ASE calculator and graph evaluator for M >= 2 models.

    Args:
        members: MACE models or ``.safetensors`` paths (mixed is fine).
        device, precision, backend: as for `lpmace.Calculator`, the same for every member
            (precision None: each member's default).

    ASE results: ``energy``/``free_energy`` (eV) and ``forces`` [n_atoms, 3] (eV/Å) are the members'
    means; ``energy_std_per_atom`` (eV/atom, float), ``forces_std`` [n_atoms] (eV/Å, the norm of the
    per-component std), ``energies`` [M] and ``member_forces`` [M, n_atoms, 3] per member. Stress is
    not provided.
    """

    implemented_properties = ["energy", "free_energy", "forces", "energy_std_per_atom", "forces_std",
                              "energies", "member_forces"]

    def __init__(self, members: Sequence, device: str | torch.device = "cpu",
                 precision: str | os.PathLike | PrecisionPolicy | None = None, backend: str = "auto", **kwargs):
        super().__init__(**kwargs)
        from lpmace.backends import resolve, use
        from lpmace.devices import resolve_device
        from lpmace.precision import resolve_policy

        self.device = resolve_device(device, "device")
        self.models = [m.to(self.device).eval() for m in load_members(members, self.device)]
        first = self.models[0].config
        self.r_max = float(first.r_max)
        self.atomic_numbers = tuple(int(z) for z in first.atomic_numbers)
        self.precisions = [resolve_policy(precision, default=m.default_precision) for m in self.models]
        self.backend = resolve(backend, self.device)
        self._runs = [use(m, self.backend, self.device) for m in self.models]

    def __len__(self) -> int:
        return len(self.models)

    def graph(self, atoms: ase.Atoms) -> Graph:
        """The float64 graph of `atoms` within the members' cutoff; InputError for unknown elements."""
        check_known_elements(atoms.numbers, self.atomic_numbers, atoms_source(atoms))
        return graph_from_atoms(atoms, self.r_max)

    def evaluate(self, graph: Graph) -> dict[str, torch.Tensor]:
        """Committee predictions for a batch of structures (float64 tensors on the CPU).

        Returns: ``energy`` [n_graphs] and ``forces`` [n_atoms, 3]: means over members (eV, eV/Å);
        ``energy_std_per_atom`` [n_graphs] (eV/atom); ``forces_std`` [n_atoms] (eV/Å); ``energies``
        [M, n_graphs] and ``member_forces`` [M, n_atoms, 3]: each member's.
        """
        graph = graph.to(self.device)
        energies, forces = [], []
        with torch.enable_grad():  # forces are autograd derivatives, even under the caller's no_grad
            for run, policy in zip(self._runs, self.precisions):
                out = run(graph, precision=policy, compute_forces=True, compute_stress=False, training=False)
                energies.append(out["energy"].detach().to("cpu", torch.float64))
                forces.append(out["forces"].detach().to("cpu", torch.float64))
        energies, forces = torch.stack(energies), torch.stack(forces)
        atoms_per_graph = (graph.ptr[1:] - graph.ptr[:-1]).to("cpu", torch.float64)
        energy, mean_forces, energy_std, forces_std = spread(energies, forces)
        return {"energy": energy, "forces": mean_forces, "energy_std_per_atom": energy_std / atoms_per_graph,
                "forces_std": forces_std, "energies": energies, "member_forces": forces}

    def calculate(self, atoms: ase.Atoms | None = None, properties=("energy",), system_changes=all_changes) -> None:
        super().calculate(atoms, properties, system_changes)
        out = self.evaluate(self.graph(self.atoms))
        energy = float(out["energy"][0])
        self.results.update(
            energy=energy, free_energy=energy, forces=out["forces"].numpy(),
            energy_std_per_atom=float(out["energy_std_per_atom"][0]), forces_std=out["forces_std"].numpy(),
            energies=out["energies"][:, 0].numpy(), member_forces=out["member_forces"].numpy(),
        )


def frame_uncertainty(forces_std: np.ndarray) -> float:
    """One structure's uncertainty: the largest per-atom force spread (eV/Å) of `forces_std` [n_atoms]."""
    return float(np.max(forces_std)) if len(forces_std) else 0.0
