"""Each system's health after an MD step, in few fused ops (a small system's step is bound by launches).

A system fails (`lpmace.dynamics.samples` codes, by precedence) when its total energy is not finite,
else when a position or force of one of its atoms is not finite, else when its total energy moved more
than `limit` eV/atom from its start (`lpmace.md.run_md`'s tests). Per atom, the momenta scaled by
sqrt(1/2m), the positions and the forces scaled by 0 are squared and summed in three groups: the
atom's kinetic energy and two probes that are 0 for finite values and NaN otherwise (0·x is NaN for
an infinite or NaN x); one `index_add` sums the atoms of each system (a system's NaN stays in its
row). Kinetic and total energies are summed in float64.
"""

from __future__ import annotations

import torch

from lpmace.dynamics.samples import ENERGY_MOVED, ENERGY_NOT_FINITE, FORCES_NOT_FINITE
from lpmace.dynamics.state import State

__all__ = ["HealthCheck"]


class HealthCheck:
    """`check(state)` -> failure code [S] float64 (0: fine) and |E_total - E_total(start)| [S] float64, eV.

    Args:
        state: the systems at their start (energies set): their total energies are the reference.
        limit: eV/atom, the largest change of a system's total energy that is still fine.
    """

    def __init__(self, state: State, limit: float) -> None:
        float64 = dict(dtype=torch.float64, device=state.ptr.device)
        initial_total = state.potential_eV + state.kinetic_eV()
        # per-system sums start at (-E_total(start), 0, 0): the first column becomes E_kin - E_total(start)
        self.base = torch.stack([-initial_total, initial_total * 0, initial_total * 0], dim=1)
        self.threshold = limit * state.atoms_per_system.to(torch.float64)
        self.scale = _scale(state.masses)
        self.codes = {name: torch.tensor(float(code), **float64) for name, code in (
            ("fine", 0), ("moved", ENERGY_MOVED), ("atoms", FORCES_NOT_FINITE), ("energy", ENERGY_NOT_FINITE))}
        self.largest = torch.finfo(torch.float64).max

    def select(self, index: torch.Tensor, state: State) -> "HealthCheck":
        """The check of the systems `index` ([S'] int64) alone; `state` holds just them."""
        kept = HealthCheck.__new__(HealthCheck)
        kept.__dict__.update(self.__dict__, base=self.base[index], threshold=self.threshold[index],
                             scale=_scale(state.masses))
        return kept

    def check(self, state: State) -> tuple[torch.Tensor, torch.Tensor]:
        """Failure codes and total-energy changes of `state`'s systems (module docstring); 8 ops and a
        cat on the atoms, 7 on the systems."""
        per_atom = torch.cat([state.momenta, state.positions, state.forces.to(state.positions.dtype)], dim=1)
        per_atom = per_atom.double().mul_(self.scale).square_().view(-1, 3, 3).sum(-1)
        sums = self.base.index_add(0, state.batch, per_atom)  # [S, 3]: E_kin - E_total(start), probes
        change = sums[:, 0].add_(state.potential_eV).abs_()
        codes = self.codes
        code = torch.where(change > self.threshold, codes["moved"], codes["fine"])
        code = torch.where(sums[:, 1] == sums[:, 2], code, codes["atoms"])  # 0 == 0; NaN equals nothing
        return torch.where(change <= self.largest, code, codes["energy"]), change


def _scale(masses: torch.Tensor) -> torch.Tensor:
    """[N, 9] float64: sqrt(1/2m) for the momenta's columns, 0 for the positions' and forces'."""
    half_over_mass = (0.5 / masses.double()).sqrt()[:, None]
    return torch.cat([half_over_mass.expand(-1, 3), half_over_mass.new_zeros(len(half_over_mass), 6)], 1)
