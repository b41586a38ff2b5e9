"""`HealthCheck`: each system's failure code and total-energy change, against a plain per-system test
written with torch.isfinite (one system per kind of failure, in one batch)."""

import pytest
import torch
from ase.build import molecule

from lpmace.dynamics.health import HealthCheck
from lpmace.dynamics.samples import ENERGY_MOVED, ENERGY_NOT_FINITE, FORCES_NOT_FINITE
from lpmace.dynamics.state import state_from_atoms

LIMIT = 0.5  # eV/atom


def _reference(state, initial_total):
    """(code, |ΔE_total|) of each system, one at a time."""
    codes, changes = [], []
    for s in range(state.num_systems):
        rows = slice(int(state.ptr[s]), int(state.ptr[s + 1]))
        p, m = state.momenta[rows].double(), state.masses[rows].double()
        total = float(state.potential_eV[s] + 0.5 * (p.square().sum(-1) / m).sum())
        change = abs(total - float(initial_total[s]))
        atoms_finite = bool(torch.isfinite(state.positions[rows]).all() and torch.isfinite(state.forces[rows]).all())
        if not torch.isfinite(torch.tensor(total)):
            codes.append(ENERGY_NOT_FINITE)
        elif not atoms_finite:
            codes.append(FORCES_NOT_FINITE)
        else:
            codes.append(ENERGY_MOVED if change > LIMIT * (rows.stop - rows.start) else 0)
        changes.append(change)
    return codes, changes


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_each_system_gets_the_code_of_its_first_failure_by_precedence(dtype):
    structures = [molecule("H2O")] * 3 + [molecule("CH4")] * 5
    state = state_from_atoms(structures, temperature_K=300.0, friction_per_t=0.0, seed=0, hold_centre=False,
                             device="cpu", dtype=dtype)
    generator = torch.Generator().manual_seed(0)
    state.forces = torch.randn(state.positions.shape, generator=generator, dtype=torch.float64).to(dtype)
    state.potential_eV = torch.randn(state.num_systems, generator=generator, dtype=torch.float64)
    initial_total = state.potential_eV + state.kinetic_eV()
    health = HealthCheck(state, LIMIT)

    def atom(s):
        return int(state.ptr[s]) + 1
    state.forces[atom(1)] = torch.nan                    # forces
    state.potential_eV[2] += 1.01 * LIMIT * 3            # moved (H2O: 3 atoms)
    state.potential_eV[3] = torch.inf                    # energy
    state.positions[atom(4), 2] = -torch.inf             # positions
    state.momenta[atom(5), 0] = torch.nan                # momenta: the kinetic, hence the total energy
    state.forces[atom(6)] = torch.inf                    # forces, and moved: forces first
    state.potential_eV[6] -= 10 * LIMIT * 5
    state.potential_eV[7] += 0.99 * LIMIT * 5            # moved, but within the limit (CH4: 5 atoms)
    code, change = health.check(state)
    want_codes, want_changes = _reference(state, initial_total)
    assert code.tolist() == want_codes
    assert want_codes == [0, FORCES_NOT_FINITE, ENERGY_MOVED, ENERGY_NOT_FINITE, FORCES_NOT_FINITE,
                          ENERGY_NOT_FINITE, FORCES_NOT_FINITE, 0]
    finite = [s for s in range(8) if want_codes[s] != ENERGY_NOT_FINITE]
    assert change[finite].tolist() == pytest.approx([want_changes[s] for s in finite], rel=1e-12, abs=1e-12)

    kept = health.select(torch.tensor([2, 7]), state.select([2, 7]))
    code, change = kept.check(state.select([2, 7]))
    assert code.tolist() == [ENERGY_MOVED, 0]
    assert change.tolist() == pytest.approx([want_changes[2], want_changes[7]], rel=1e-12, abs=1e-12)
