"""lpmace.Committee: member means and spreads, checked against a loop over single-model Calculators."""

import numpy as np
import pytest
import torch
from ase.build import bulk

import lpmace
from lpmace.data.batching import collate
from lpmace.errors import InputError
from lpmace.io import save
from lpmace.model import MACE, MACEConfig

TOL = {torch.float32: 1e-6, torch.float64: 1e-10}


def member(seed, dtype=torch.float64, **overrides):
    torch.manual_seed(seed)
    values = dict(atomic_numbers=(29,), E0s=(-1.0,), r_max=4.0, num_bessel=4, max_ell=1, channels=8, max_L=0,
                  correlation=(2, 2), radial_mlp=(8,), avg_num_neighbors=18.0, scale=0.5)
    values.update(overrides)
    return MACE(MACEConfig(**values)).to(dtype)


def rattled(seed, repeat=2):
    atoms = bulk("Cu", "fcc", a=3.61, cubic=True).repeat(repeat)
    atoms.rattle(0.1, seed=seed)
    return atoms


def explicit(models, atoms, dtype):
    """Per-member energy and forces through lpmace.Calculator, then numpy's mean and spread."""
    energies, forces = [], []
    for model in models:
        calc = lpmace.Calculator(model, precision="fp64" if dtype == torch.float64 else "fp32", backend="reference")
        energies.append(calc.get_potential_energy(atoms.copy()))
        forces.append(calc.get_forces(atoms.copy()))
    return np.array(energies), np.array(forces)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_ase_results_equal_a_loop_over_member_calculators(dtype):
    models = [member(seed, dtype) for seed in range(3)]
    atoms = rattled(0)
    energies, forces = explicit(models, atoms, dtype)
    committee = lpmace.Committee(models, backend="reference")
    atoms.calc = committee
    tol = TOL[dtype]
    n = len(atoms)
    assert atoms.get_potential_energy() == pytest.approx(energies.mean(), rel=tol, abs=tol * n)
    np.testing.assert_allclose(atoms.get_forces(), forces.mean(0), rtol=tol, atol=tol)
    results = committee.results
    assert results["energy_std_per_atom"] == pytest.approx(energies.std() / n, rel=1e-4, abs=tol)
    per_atom = np.sqrt(((forces - forces.mean(0)) ** 2).mean(0).sum(-1))  # norm of the per-component std
    np.testing.assert_allclose(results["forces_std"], per_atom, rtol=1e-4, atol=tol)
    np.testing.assert_allclose(results["member_forces"], forces, rtol=tol, atol=tol)
    assert results["forces_std"].shape == (n,) and float(results["forces_std"].min()) > 0


def test_graph_batch_evaluation_equals_one_structure_at_a_time(tmp_path):
    models = [member(seed) for seed in range(3)]
    paths = [save(m, tmp_path / f"m{i}.safetensors") for i, m in enumerate(models)]
    committee = lpmace.Committee(paths, backend="reference")  # file paths load as members
    structures = [rattled(0), rattled(1, repeat=1)]
    batch = committee.evaluate(collate([committee.graph(a) for a in structures]))
    offset = 0
    for i, atoms in enumerate(structures):
        energies, forces = explicit(models, atoms, torch.float64)
        n = len(atoms)
        assert float(batch["energy"][i]) == pytest.approx(energies.mean(), abs=1e-10 * n)
        assert float(batch["energy_std_per_atom"][i]) == pytest.approx(energies.std() / n, abs=1e-10)
        np.testing.assert_allclose(batch["forces"][offset:offset + n].numpy(), forces.mean(0), atol=1e-10)
        offset += n
    assert batch["energies"].shape == (3, 2) and batch["forces_std"].shape == (offset,)


@pytest.mark.parametrize("overrides, key", [(dict(r_max=5.0), "r_max"),
                                            (dict(atomic_numbers=(29, 79), E0s=(-1.0, -2.0)), "atomic_numbers")])
def test_members_with_other_elements_or_cutoff_are_one_line_errors(overrides, key):
    with pytest.raises(InputError, match=key) as err:
        lpmace.Committee([member(0), member(1, **overrides)])
    assert "\n" not in str(err.value)


def test_one_member_is_not_a_committee():
    with pytest.raises(InputError, match="at least 2"):
        lpmace.Committee([member(0)])
