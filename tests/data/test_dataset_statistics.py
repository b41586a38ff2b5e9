"""E0 fits, neighbour counts and shift/scale, checked against values known from construction."""

import numpy as np
import pytest

from lpmace.data import (
    Configuration,
    average_num_neighbours,
    e0s_from_isolated_atoms,
    energy_shift_and_force_scale,
    fit_e0s,
    graph_from_configuration,
    read_configurations,
)
from lpmace.errors import InputError

TRUE_E0S = {1: -13.6, 6: -1029.5, 8: -2042.0}


def synthetic(rng, n_configs, noise, interaction_per_atom=0.0, elements=(1, 6, 8)):
    """Random compositions with E = Σ E0(z) + interaction_per_atom · n + noise."""
    configs = []
    for k in range(n_configs):
        numbers = rng.choice(elements, size=rng.integers(2, 12))
        energy = sum(TRUE_E0S[z] for z in numbers) + interaction_per_atom * len(numbers) + noise * rng.normal()
        configs.append(
            Configuration(
                numbers=numbers,
                positions=rng.uniform(0, 5, (len(numbers), 3)),
                cell=np.zeros((3, 3)),
                pbc=np.zeros(3, bool),
                energy=energy,
                forces=rng.normal(size=(len(numbers), 3)),
                source=f"synthetic {k}",
            )
        )
    return configs


def test_fit_e0s_recovers_the_e0s_the_energies_were_built_from():
    configs = synthetic(np.random.default_rng(0), 200, noise=1e-3)
    e0s = fit_e0s(configs, [1, 6, 8])
    assert set(e0s) == {1, 6, 8}
    for z, value in TRUE_E0S.items():
        assert e0s[z] == pytest.approx(value, abs=2e-3)


def test_fit_e0s_errors_and_underdetermined_warning():
    rng = np.random.default_rng(1)
    configs = synthetic(rng, 20, noise=0.0, elements=(1, 6))
    with pytest.raises(InputError, match="O appear in no configuration"):
        fit_e0s(configs, [1, 6, 8])
    with pytest.raises(InputError, match="not in atomic_numbers"):
        fit_e0s(configs, [1])
    unlabelled = [Configuration(numbers=c.numbers, positions=c.positions, cell=c.cell, pbc=c.pbc) for c in configs]
    with pytest.raises(InputError, match="no configuration has an energy"):
        fit_e0s(unlabelled, [1, 6])
    water = [
        Configuration(
            numbers=np.array([8, 1, 1]), positions=np.eye(3), cell=np.zeros((3, 3)), pbc=np.zeros(3, bool), energy=-2069.2
        )
    ] * 3
    with pytest.warns(UserWarning, match="underdetermined"):
        e0s = fit_e0s(water, [1, 8])
    assert 2 * e0s[1] + e0s[8] == pytest.approx(-2069.2)


def test_e0s_from_isolated_atoms_of_3bpa(data_dir):
    iso = read_configurations(data_dir / "3bpa/iso_atoms.xyz", forces_key=None)
    e0s = e0s_from_isolated_atoms(iso, [1, 6, 7, 8])
    assert e0s[7] == -1484.9814568572233 and list(e0s) == [1, 6, 7, 8]
    with pytest.raises(InputError, match="no isolated-atom energy for Si"):
        e0s_from_isolated_atoms(iso, [1, 14])


def test_average_num_neighbours_skips_isolated_atoms_like_mace_torch():
    # A dimer 1 Å apart plus a far atom: 2 edges, 2 atoms that receive one -> 1.0 (not 2/3).
    dimer = Configuration(
        numbers=np.array([1, 1, 1]),
        positions=np.array([[0.0, 0, 0], [1.0, 0, 0], [10.0, 0, 0]]),
        cell=np.zeros((3, 3)),
        pbc=np.zeros(3, bool),
    )
    # Four atoms on a square of side 1, r_max 1.2: every atom has 2 neighbours.
    square = Configuration(
        numbers=np.ones(4, dtype=np.int64),
        positions=np.array([[0.0, 0, 0], [1.0, 0, 0], [0.0, 1, 0], [1.0, 1, 0]]),
        cell=np.zeros((3, 3)),
        pbc=np.zeros(3, bool),
    )
    graphs = [graph_from_configuration(c, r_max=1.2) for c in (dimer, square)]
    assert average_num_neighbours(graphs[:1]) == 1.0
    assert average_num_neighbours(graphs) == pytest.approx((2 + 8) / (2 + 4))


def test_energy_shift_and_force_scale_from_construction():
    rng = np.random.default_rng(2)
    configs = synthetic(rng, 50, noise=0.0, interaction_per_atom=-0.25)
    shift, scale = energy_shift_and_force_scale(configs, TRUE_E0S)
    assert shift == pytest.approx(-0.25, abs=1e-9)
    all_forces = np.concatenate([c.forces for c in configs])
    assert scale == pytest.approx(np.sqrt(np.mean(all_forces**2)), rel=1e-12)
    assert 0.8 < scale < 1.2  # unit-normal force components
    with pytest.raises(InputError, match="no E0 for element O"):
        energy_shift_and_force_scale(configs, {1: 0.0, 6: 0.0})
