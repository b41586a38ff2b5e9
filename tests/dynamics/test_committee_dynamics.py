"""A committee as the force field of the torch MD engine: the members' mean drives the atoms and
every sample carries their spread, as `lpmace.Committee` through the ASE engine computes them."""

from __future__ import annotations

import ase
import numpy as np
import pytest
import torch

from lpmace.committee import Committee
from lpmace.dynamics import ModelPotential, run_dynamics
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


def test_the_spread_follows_its_systems_when_one_is_removed(bpa_atoms, monkeypatch):
    """System 1 gets NaN forces at step 11 and leaves the state: the samples of systems 0 and 2 after
    that still carry their own spread (checked against `Committee.evaluate` at their positions)."""
    from lpmace.data.batching import graph_from_atoms

    molecule = ase.Atoms(numbers=bpa_atoms.numbers, positions=bpa_atoms.positions)
    structures = [molecule, _triclinic(), molecule.copy()]
    call, calls = ModelPotential.__call__, []

    def nan_in_system_1_from_call_12(self, state):
        call(self, state)
        calls.append(1)
        if len(calls) > 11 and state.num_systems == 3:
            state.forces[int(state.ptr[1]):int(state.ptr[2])] = torch.nan

    monkeypatch.setattr(ModelPotential, "__call__", nan_in_system_1_from_call_12)
    samples = {}
    run = run_dynamics(_members(), structures, ensemble="nve", steps=30, dt_fs=0.5, interval=10, seed=2,
                       precision="fp64", on_sample=_record(samples))
    assert run.systems[1].unstable_step == 11 and run.systems[0].stable and run.systems[2].stable
    committee = Committee(_members(), precision="fp64")
    for s in (0, 2):
        for step in (20, 30):  # after the removal
            positions, forces_std, energy_std, forces = samples[(s, step)]
            frame = structures[s].copy()
            frame.positions = positions
            out = committee.evaluate(graph_from_atoms(frame, committee.r_max))
            np.testing.assert_allclose(forces_std, out["forces_std"].numpy(), rtol=1e-9, atol=1e-12)
            np.testing.assert_allclose(energy_std, float(out["energy_std_per_atom"][0]), rtol=1e-9, atol=1e-14)
            np.testing.assert_allclose(forces, out["forces"].numpy(), rtol=0, atol=1e-9)


def test_committee_inputs_are_checked(tmp_path):
    from tiny_models import tiny_model

    from lpmace.io import save

    with pytest.raises(InputError, match="at least 2 members, got 1"):
        run_dynamics([tiny_model(**FAST)], [_triclinic()], steps=1)
    with pytest.raises(InputError, match="the Committee is on cpu but the run is on meta"):
        run_dynamics(Committee(_members()), [_triclinic()], steps=1, device="meta")
    paths = []
    for s, model in enumerate(_members()[:2]):
        paths.append(tmp_path / f"m{s}.safetensors")
        save(model, paths[-1])
    from_files, from_models = {}, {}
    run_dynamics(paths, [_triclinic()], steps=4, interval=2, precision="fp64", on_sample=_record(from_files))
    run_dynamics(_members()[:2], [_triclinic()], steps=4, interval=2, precision="fp64", on_sample=_record(from_models))
    for key in from_models:
        np.testing.assert_allclose(from_files[key][1], from_models[key][1], rtol=0, atol=1e-12)


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
