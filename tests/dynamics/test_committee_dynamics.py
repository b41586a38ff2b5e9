"""A committee as the force field of the torch MD engine: the members' mean drives the atoms and
every sample carries their spread, as `lpmace.Committee` through the ASE engine computes them."""

from __future__ import annotations

import ase
import numpy as np
import pytest
import torch

from lpmace.committee import Committee
from lpmace.dynamics import run_dynamics
from lpmace.errors import InputError
from lpmace.md import run_md

FAST = {"max_ell": 1, "max_L": 0}


def _members():
    from tiny_models import tiny_model

    return [tiny_model(seed=s, **FAST) for s in (0, 1, 2)]


def _triclinic() -> ase.Atoms:
    rng = np.random.default_rng(1)
    grid = np.stack(np.meshgrid(*[np.arange(3) / 3] * 3, indexing="ij"), -1).reshape(-1, 3)
    return ase.Atoms(numbers=rng.choice([1, 6, 7, 8], len(grid)), scaled_positions=grid + rng.uniform(-0.04, 0.04, grid.shape),
                     cell=[[6.0, 0.0, 0.0], [1.5, 5.8, 0.0], [0.8, 1.1, 6.2]], pbc=True)


def _record(into: dict):
    def keep(system, step, atoms):
        into[(system, step)] = (atoms.positions.copy(), atoms.arrays["forces_std"].copy(),
                                atoms.info["energy_std_per_atom"], atoms.get_forces().copy())
    return keep


@pytest.mark.parametrize("given", ["committee", "list"])
def test_committee_md_follows_the_ase_engine_and_samples_carry_the_spread(bpa_atoms, given):
    molecule = ase.Atoms(numbers=bpa_atoms.numbers, positions=bpa_atoms.positions)
    common = dict(ensemble="nve", steps=100, dt_fs=0.5, temperature_K=300.0, seed=3, interval=25)
    reference = {}
    calculator = Committee(_members(), precision="fp64")

    def keep_ase(step, atoms):
        r = calculator.results
        reference[(0, step)] = (atoms.positions.copy(), r["forces_std"].copy(), r["energy_std_per_atom"],
                                r["forces"].copy())

    ase_run = run_md(molecule.copy(), calculator, on_sample=keep_ase, **common)
    torch_samples = {}
    model = Committee(_members(), precision="fp64") if given == "committee" else _members()
    run = run_dynamics(model, [molecule], precision="fp64", on_sample=_record(torch_samples), **common)
    assert ase_run.stable and run.stable and sorted(torch_samples) == sorted(reference) and len(reference) == 5
    spreads = []
    for key, (positions, forces_std, energy_std, forces) in reference.items():
        got = torch_samples[key]
        np.testing.assert_allclose(got[0], positions, rtol=0, atol=1e-6)
        np.testing.assert_allclose(got[1], forces_std, rtol=1e-6, atol=1e-9)
        np.testing.assert_allclose(got[2], energy_std, rtol=1e-6, atol=1e-12)
        np.testing.assert_allclose(got[3], forces, rtol=0, atol=1e-7)  # the members' mean moves the atoms
        spreads.append(forces_std.max())
    assert min(spreads) > 1e-3  # random members disagree: the spread compared above is not zero
    np.testing.assert_allclose(run.systems[0].total_eV, ase_run.total_eV, rtol=0, atol=1e-8)


def test_batched_committee_md_gives_each_systems_spread(bpa_atoms):
    """Two systems in one run: each system's samples are those of its run alone (seed + s)."""
    molecule = ase.Atoms(numbers=bpa_atoms.numbers, positions=bpa_atoms.positions)
    structures, members = [molecule, _triclinic()], _members()
    common = dict(ensemble="nvt", steps=40, dt_fs=0.5, temperature_K=[300.0, 600.0], interval=20, precision="fp64")
    together = {}
    run_dynamics(members, structures, seed=5, on_sample=_record(together), **common)
    for s, atoms in enumerate(structures):
        alone = {}
        single = {**common, "temperature_K": common["temperature_K"][s]}
        run_dynamics(members, [atoms], seed=5 + s, on_sample=_record(alone), **single)
        # NVT noise is drawn for the whole batch: only step 0 (before any noise) is compared exactly
        np.testing.assert_allclose(together[(s, 0)][1], alone[(0, 0)][1], rtol=1e-9, atol=1e-12)
        np.testing.assert_allclose(together[(s, 0)][2], alone[(0, 0)][2], rtol=1e-9, atol=1e-14)
        assert together[(s, 40)][1].shape == (len(atoms),)


def test_members_with_different_cutoffs_are_one_line():
    from tiny_models import tiny_model

    with pytest.raises(InputError, match="member 1 has r_max 5.0 but member 0 has 4.0"):
        run_dynamics([tiny_model(**FAST), tiny_model(r_max=5.0, **FAST)], [_triclinic()], steps=1)


@pytest.mark.gpu
def test_cuda_committee_md_follows_the_cpu(bpa_atoms):
    molecule = ase.Atoms(numbers=bpa_atoms.numbers, positions=bpa_atoms.positions)
    common = dict(ensemble="nve", steps=30, dt_fs=0.5, seed=6, interval=10, precision="fp64")
    on_cpu, on_cuda = {}, {}
    run_dynamics(_members(), [molecule, _triclinic()], device="cpu", on_sample=_record(on_cpu), **common)
    run = run_dynamics(_members(), [molecule, _triclinic()], device="cuda", on_sample=_record(on_cuda), **common)
    assert run.stable and sorted(on_cuda) == sorted(on_cpu)
    for key in on_cpu:
        np.testing.assert_allclose(on_cuda[key][0], on_cpu[key][0], rtol=0, atol=1e-6)
        np.testing.assert_allclose(on_cuda[key][1], on_cpu[key][1], rtol=1e-5, atol=1e-9)
