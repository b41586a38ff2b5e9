"""VelocityVerlet reuses the first kick and drift that `next_positions` computed, only for the very same
inputs: a planned step equals a plain one to the bit, and a changed input is integrated afresh."""

import pytest
import torch
from ase.build import molecule

from lpmace.dynamics.state import state_from_atoms
from lpmace.dynamics.verlet import VelocityVerlet


def _harmonic(state):
    state.forces = -0.7 * state.positions
    state.potential_eV = torch.zeros(state.num_systems, dtype=torch.float64).index_add_(
        0, state.batch, 0.35 * state.positions.square().sum(-1).double())


def _state():
    state = state_from_atoms([molecule("C6H6"), molecule("H2O")], temperature_K=300.0, friction_per_t=0.0, seed=1,
                             hold_centre=False, device="cpu")
    _harmonic(state)
    return state


@pytest.mark.parametrize("change", ["none", "momenta replaced", "forces in place", "frozen"])
def test_a_planned_step_equals_a_plain_step_unless_an_input_changed(change):
    planned, plain = _state(), _state()
    frozen = torch.zeros(len(planned.positions), dtype=torch.bool)
    integrator = VelocityVerlet(0.05)
    promised = integrator.next_positions(planned, frozen)
    if change == "momenta replaced":
        planned.momenta = plain.momenta = plain.momenta * 1.5
    elif change == "forces in place":
        planned.forces.mul_(2.0)
        plain.forces.mul_(2.0)
    elif change == "frozen":
        frozen = frozen.clone()
        frozen[:12] = True
    integrator.step(planned, _harmonic, frozen)
    VelocityVerlet(0.05).step(plain, _harmonic, frozen)
    for field in ("positions", "momenta", "forces"):
        assert torch.equal(getattr(planned, field), getattr(plain, field)), field
    if change == "frozen":
        assert torch.equal(planned.positions[:12], _state().positions[:12])  # benzene held
    assert (planned.positions is promised) == (change == "none")  # reused, not computed again
    assert integrator._planned is None  # a plan serves one step
