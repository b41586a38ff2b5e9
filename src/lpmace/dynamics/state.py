"""The state of many MD systems at once, on one device: atoms of all systems concatenated.

Atoms of system s occupy rows ``ptr[s]:ptr[s+1]`` (as in `lpmace.data.graph.Graph`). Units are
ASE's: positions Å, momenta amu·Å/t with t = Å·sqrt(amu/eV) the ASE time unit (``ase.units.fs`` of
them make a femtosecond), masses amu, energies eV. Positions are never wrapped into the cell (a
Verlet list's skin test needs the raw displacement). Geometry and momenta are float64 by default
(float32 on request): never the model's 16-bit dtypes, whatever its precision policy.

Initial momenta come from `lpmace.md.initialize_velocities` with ``np.random.default_rng(seed + s)``
for system s (ASE's Maxwell-Boltzmann draw, centre-of-mass motion removed, and rigid rotation for a
molecule), so system 0 starts as `lpmace.md.run_md` with `seed` does, and each system s starts as a
run of that structure alone with seed ``seed + s``.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Sequence

import ase
import numpy as np
import torch
from ase.constraints import FixAtoms

from lpmace.errors import InputError
from lpmace.md import MIN_ATOMS, initialize_velocities

__all__ = ["State", "state_from_atoms"]


@dataclasses.dataclass
class State:
    """Systems advanced together (N atoms, S systems).

    Attributes:
        positions: [N, 3] Å, unwrapped. momenta: [N, 3] amu·Å/t. masses: [N] amu (all in `dtype`).
        numbers: [N] int64. fixed: [N] bool, atoms held by FixAtoms (zero momentum, never move).
        cell: [S, 3, 3] rows, zero rows along open directions. pbc: [S, 3] bool.
        batch: [N] int64 system of each atom. ptr: [S + 1] int64 atom offsets.
        temperature_K, friction: [S] float64 Langevin target and friction (1/t).
        anchored: [S] bool, systems with a fixed atom (their centre of mass is not held still).
        dof: [S] float64 degrees of freedom for the temperature (ASE's count, see `degrees_of_freedom`).
        forces: [N, 3] eV/Å and potential_eV: [S] float64 at the current positions (None before the first call).
        forces_std: [N] float64 eV/Å and energy_std_eV: [S] float64, a committee's spread at the current
            positions (`lpmace.committee` defines both; None for one model).
    """

    positions: torch.Tensor
    momenta: torch.Tensor
    masses: torch.Tensor
    numbers: torch.Tensor
    fixed: torch.Tensor
    cell: torch.Tensor
    pbc: torch.Tensor
    batch: torch.Tensor
    ptr: torch.Tensor
    temperature_K: torch.Tensor
    friction: torch.Tensor
    anchored: torch.Tensor
    dof: torch.Tensor
    forces: torch.Tensor | None = None
    potential_eV: torch.Tensor | None = None
    forces_std: torch.Tensor | None = None
    energy_std_eV: torch.Tensor | None = None

    @functools.cached_property
    def inverse_masses(self) -> torch.Tensor:
        """[N, 1] 1/amu, in the masses' dtype (computed once: masses never change in place)."""
        return self.masses.reciprocal()[:, None]

    @property
    def num_systems(self) -> int:
        return self.ptr.shape[0] - 1

    @functools.cached_property
    def atoms_per_system(self) -> torch.Tensor:
        """[S] int64 atom count of each system (computed once: ptr never changes in place)."""
        return self.ptr[1:] - self.ptr[:-1]

    def kinetic_eV(self) -> torch.Tensor:
        """[S] float64 kinetic energy of each system, eV (summed in float64)."""
        p = self.momenta.double()
        per_atom = p.square().sum(-1) / self.masses.double()
        return p.new_zeros(self.num_systems).index_add_(0, self.batch, per_atom, alpha=0.5)

    def select(self, systems: Sequence[int]) -> "State":
        """A state holding only `systems` (indices; kept in their order), re-indexed from 0."""
        keep = torch.as_tensor(sorted(systems), dtype=torch.int64, device=self.ptr.device)
        counts = self.atoms_per_system[keep]
        rows = torch.isin(self.batch, keep).nonzero().squeeze(1)
        ptr = torch.cat([self.ptr[:1] * 0, torch.cumsum(counts, 0)])
        batch = torch.repeat_interleave(torch.arange(len(keep), device=self.ptr.device), counts)
        per_atom = {f: getattr(self, f) for f in ("positions", "momenta", "masses", "numbers", "fixed", "forces",
                                                   "forces_std")}
        per_system = {f: getattr(self, f) for f in ("cell", "pbc", "temperature_K", "friction", "anchored", "dof",
                                                    "potential_eV", "energy_std_eV")}
        return State(**{k: None if v is None else v[rows] for k, v in per_atom.items()},
                     **{k: None if v is None else v[keep] for k, v in per_system.items()}, batch=batch, ptr=ptr)


def degrees_of_freedom(atoms: ase.Atoms, hold_centre: bool) -> int:
    """ASE's count for `atoms.get_temperature()`: 3N, less 3 per fixed atom, less 3 when the centre of
    mass is held still (`hold_centre`: `lpmace.md.run_md`'s NVT adds FixCom when no atom is fixed)."""
    fixed = _fixed_mask(atoms)
    return 3 * len(atoms) - 3 * int(fixed.sum()) - (3 if hold_centre and not fixed.any() else 0)


def _fixed_mask(atoms: ase.Atoms) -> np.ndarray:
    """[n] bool atoms held by FixAtoms; InputError for any other constraint (not integrated here)."""
    mask = np.zeros(len(atoms), dtype=bool)
    for constraint in atoms.constraints:
        if not isinstance(constraint, FixAtoms):
            raise InputError(f"Atoms({atoms.get_chemical_formula()}): constraint {type(constraint).__name__} is not "
                             "supported by the torch MD engine (FixAtoms is)")
        mask[constraint.get_indices()] = True
    return mask


def _per_system(name: str, value, count: int) -> np.ndarray:
    """`value` (one number, or one per system) as [count] float64; InputError naming `name` otherwise."""
    values = np.asarray(value, dtype=np.float64)
    if values.ndim > 1 or (values.ndim == 1 and len(values) != count):
        raise InputError(f"{name} must be one number or one per system ({count}), got {len(values.reshape(-1))} values")
    if not np.isfinite(values).all() or (values < 0).any():
        raise InputError(f"{name} must be finite and >= 0, got {value!r}")
    return np.broadcast_to(values, (count,))


def state_from_atoms(structures: Sequence[ase.Atoms], *, temperature_K, friction_per_t, seed: int,
                     hold_centre: bool, device, dtype: torch.dtype = torch.float64,
                     initial_temperature_K=None) -> State:
    """The state of `structures` with Maxwell-Boltzmann momenta (module docstring: seed rule).

    Args:
        temperature_K, friction_per_t: a number or one per structure (friction in 1/ASE time unit):
            the Langevin target and friction.
        initial_temperature_K: of the momenta drawn, a number or one per structure (None: temperature_K).
        hold_centre: the centre of mass is held still (NVT without fixed atoms), which the
            temperature's degrees of freedom count.
    Raises InputError for a structure with fewer than `lpmace.md.MIN_ATOMS` atoms or a constraint
    other than FixAtoms.
    """
    count = len(structures)
    temperatures = _per_system("temperature_K", temperature_K, count)
    frictions = _per_system("friction", friction_per_t, count)
    initial = temperatures if initial_temperature_K is None else _per_system(
        "initial_temperature_K", initial_temperature_K, count)
    parts = []
    for s, original in enumerate(structures):
        if len(original) < MIN_ATOMS:
            raise InputError(f"system {s}, Atoms({original.get_chemical_formula()}): MD needs at least {MIN_ATOMS} "
                             f"atoms, it has {len(original)}")
        atoms = original.copy()
        fixed = _fixed_mask(atoms)
        initialize_velocities(atoms, float(initial[s]), np.random.default_rng(seed + s))
        momenta = atoms.get_momenta()
        momenta[fixed] = 0.0
        cell = np.where(atoms.pbc[:, None], atoms.cell.array, 0.0)
        parts.append((atoms, fixed, momenta, cell, degrees_of_freedom(atoms, hold_centre)))

    def cat(values, kind=dtype):
        return torch.as_tensor(np.concatenate(values), dtype=kind, device=device)

    counts = torch.tensor([len(p[0]) for p in parts], dtype=torch.int64)
    return State(
        positions=cat([p[0].positions for p in parts]),
        momenta=cat([p[2] for p in parts]),
        masses=cat([p[0].get_masses() for p in parts]),
        numbers=cat([p[0].numbers for p in parts], torch.int64),
        fixed=cat([p[1] for p in parts], torch.bool),
        cell=torch.as_tensor(np.stack([p[3] for p in parts]), dtype=dtype, device=device),
        pbc=torch.as_tensor(np.stack([p[0].pbc for p in parts]), dtype=torch.bool, device=device),
        batch=torch.repeat_interleave(torch.arange(count), counts).to(device),
        ptr=torch.cat([torch.zeros(1, dtype=torch.int64), torch.cumsum(counts, 0)]).to(device),
        temperature_K=torch.as_tensor(temperatures.copy(), dtype=torch.float64, device=device),
        friction=torch.as_tensor(frictions.copy(), dtype=torch.float64, device=device),
        anchored=torch.as_tensor([bool(p[1].any()) for p in parts], device=device),
        dof=torch.as_tensor([float(p[4]) for p in parts], dtype=torch.float64, device=device),
    )
