"""ASE calculator: agrees with the model, forces and stress are derivatives of its energy."""

from __future__ import annotations

import ase
import numpy as np
import pytest
import torch
from ase.calculators.calculator import PropertyNotImplementedError
from ase.calculators.fd import calculate_numerical_forces, calculate_numerical_stress

import lpmace.io
from lpmace.calculator import Calculator
from lpmace.data import Configuration, graph_from_configuration
from lpmace.errors import InputError


def _periodic(atoms: ase.Atoms, box: float = 9.0) -> ase.Atoms:
    """The molecule in a small cubic periodic box, so images interact within r_max."""
    crystal = atoms.copy()
    crystal.set_cell(np.diag([box, box * 1.1, box * 1.2]))
    crystal.set_pbc(True)
    crystal.center()
    return crystal


def test_energy_and_forces_equal_the_model_output(model, bpa_atoms):
    calc = Calculator(model)
    bpa_atoms.calc = calc
    energy, forces = bpa_atoms.get_potential_energy(), bpa_atoms.get_forces()

    config = Configuration(
        numbers=bpa_atoms.numbers, positions=bpa_atoms.positions, cell=bpa_atoms.cell.array, pbc=bpa_atoms.pbc
    )
    out = model(graph_from_configuration(config, model.config.r_max))
    assert energy == out["energy"].item()
    np.testing.assert_array_equal(forces, out["forces"].detach().numpy())
    assert bpa_atoms.get_potential_energy(force_consistent=True) == energy  # free_energy
    assert forces.shape == (len(bpa_atoms), 3) and forces.dtype == np.float64


def test_forces_are_minus_the_energy_gradient(model, bpa_atoms):
    calc = Calculator(model)
    bpa_atoms.calc = calc
    some = [0, 5, 6, 13, 26]  # C, O, N, C, H: a few atoms keep the test fast
    analytic = bpa_atoms.get_forces()[some]
    numeric = calculate_numerical_forces(bpa_atoms, eps=1e-4, iatoms=some)
    assert np.abs(analytic).max() > 1e-3  # a random model still has non-trivial forces
    np.testing.assert_allclose(analytic, numeric, rtol=0, atol=1e-7)


def test_stress_is_the_strain_derivative_for_periodic_cells(model, bpa_atoms):
    crystal = _periodic(bpa_atoms)
    calc = Calculator(model)
    crystal.calc = calc
    stress = crystal.get_stress()
    assert stress.shape == (6,)
    numeric = calculate_numerical_stress(crystal, eps=1e-5)
    assert np.abs(stress).max() > 1e-6
    np.testing.assert_allclose(stress, numeric, rtol=0, atol=1e-9)
    np.testing.assert_allclose(crystal.get_stress(voigt=False), crystal.get_stress(voigt=False).T, atol=1e-12)


@pytest.mark.parametrize("pbc", [False, (True, True, False)])
def test_stress_only_for_fully_periodic_cells(model, bpa_atoms, pbc):
    atoms = _periodic(bpa_atoms)
    atoms.set_pbc(pbc)
    atoms.calc = Calculator(model)
    assert np.isfinite(atoms.get_potential_energy())
    with pytest.raises(PropertyNotImplementedError, match="periodic"):
        atoms.get_stress()


def test_unknown_element_is_named(model, bpa_atoms):
    bpa_atoms.numbers[3] = 14  # silicon
    bpa_atoms.calc = Calculator(model)
    with pytest.raises(InputError, match=r"\bSi\b"):
        bpa_atoms.get_potential_energy()


def test_results_follow_moved_atoms(model, bpa_atoms):
    bpa_atoms.calc = Calculator(model)
    first = bpa_atoms.get_potential_energy()
    bpa_atoms.positions[0] += 0.05
    assert bpa_atoms.get_potential_energy() != first


def test_calculator_from_a_model_file(model, bpa_atoms, tmp_path):
    path = lpmace.io.save(model, tmp_path / "m.safetensors")
    reference = bpa_atoms.copy()
    reference.calc = Calculator(model)
    bpa_atoms.calc = Calculator(path)
    assert bpa_atoms.get_potential_energy() == reference.get_potential_energy()


def test_works_under_no_grad(model, bpa_atoms):
    bpa_atoms.calc = Calculator(model)
    with torch.no_grad():
        forces = bpa_atoms.get_forces()
    assert np.abs(forces).max() > 0


def test_float32_model_keeps_default_dtype_and_returns_float64(make_model, bpa_atoms):
    before = torch.get_default_dtype()
    model32 = make_model(torch.float32)
    bpa_atoms.calc = Calculator(model32)
    forces = bpa_atoms.get_forces()
    assert forces.dtype == np.float64
    assert isinstance(bpa_atoms.get_potential_energy(), float)
    assert torch.get_default_dtype() == before
    # fp32 weights give fp32-accurate forces, close to the same weights in fp64
    bpa_atoms.calc = Calculator(make_model(torch.float64))
    np.testing.assert_allclose(forces, bpa_atoms.get_forces(), atol=1e-4)


def test_rejects_something_that_is_not_a_model():
    with pytest.raises(InputError, match="MACE"):
        Calculator(torch.nn.Linear(2, 2))


def test_precision_bf16_mixed_forces_are_close_to_fp64_but_not_equal(make_model, bpa_atoms):
    """Interaction energy (E − ΣE0: the E0s are ~99.9 % of E) and forces within the bf16 row of the
    tolerance table; E0s alone, or forces of zero, are off by 100 %."""
    from tolerances import model_bound

    model32 = make_model(torch.float32)
    reference = bpa_atoms.copy()
    reference.calc = Calculator(model32, precision="fp64")
    bpa_atoms.calc = Calculator(model32, precision="bf16-mixed")
    low, f64 = bpa_atoms.get_forces(), reference.get_forces()
    assert low.dtype == np.float64
    assert not np.array_equal(low, f64)
    bound = model_bound(torch.bfloat16)
    rms = lambda x: np.sqrt(np.mean(x**2))  # noqa: E731
    assert rms(low - f64) <= bound * rms(f64)
    e0 = dict(zip(model32.config.atomic_numbers, model32.config.E0s))
    e0_sum = sum(e0[z] for z in bpa_atoms.numbers)
    interaction = reference.get_potential_energy() - e0_sum
    assert abs(interaction) > 0.1  # eV: the comparison below is not of near-zeros
    assert abs(bpa_atoms.get_potential_energy() - e0_sum - interaction) <= bound * abs(interaction)


def test_precision_default_is_the_model_default(model, make_model):
    assert Calculator(model).precision.name == "fp64"
    assert Calculator(make_model(torch.float32)).precision.name == "fp32"


def test_precision_from_a_yaml_file(model, bpa_atoms, tmp_path):
    policy = tmp_path / "fast.yaml"
    policy.write_text("base: bf16-mixed\nreadout: fp32\n")
    bpa_atoms.calc = Calculator(model, precision=policy)
    assert bpa_atoms.calc.precision.readout == torch.float32
    assert np.isfinite(bpa_atoms.get_forces()).all()


@pytest.mark.parametrize("precision", ["fp8", "missing.yaml"])
def test_bad_precision_is_refused_at_construction(model, precision):
    with pytest.raises(InputError, match=precision):
        Calculator(model, precision=precision)


def test_one_calculator_shared_by_threads_gives_each_its_own_results(model, bpa_test_path):
    import sys
    import threading

    import ase.io

    molecules = [atoms[:8] for atoms in ase.io.read(bpa_test_path, index=":8")]  # 8 atoms each: quick
    calc = Calculator(model)
    serial = []
    for atoms in molecules:
        atoms.calc = calc
        serial.append((atoms.get_potential_energy(), atoms.get_forces()))
    calc.reset()
    shared = [atoms.copy() for atoms in molecules]
    for atoms in shared:
        atoms.calc = calc  # the same calculator on every thread's structure
    results, errors = [[] for _ in shared], []

    def work(i):
        try:
            for _ in range(10):
                results[i].append((shared[i].get_potential_energy(), shared[i].get_forces()))
        except Exception as err:  # e.g. PropertyNotImplementedError when another thread reset the results
            errors.append(repr(err))

    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-4)  # switch threads often, so unguarded state is interleaved every run
    try:
        threads = [threading.Thread(target=work, args=(i,)) for i in range(len(shared))]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    finally:
        sys.setswitchinterval(interval)
    assert errors == []
    wrong = [(i, k) for i, calls in enumerate(results) for k, (energy, forces) in enumerate(calls)
             if energy != serial[i][0] or not np.array_equal(forces, serial[i][1])]
    assert wrong == [] and all(len(calls) == 10 for calls in results)


def test_overlapping_atoms_raise_a_clear_error(model, bpa_atoms):
    bpa_atoms.positions[3] = bpa_atoms.positions[0]
    bpa_atoms.calc = Calculator(model)
    with pytest.raises(InputError, match=r"atoms 0 and 3 are 0 Å apart"):
        bpa_atoms.get_potential_energy()


def test_device_auto_is_resolved_and_bad_names_refused(model, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert Calculator(model, device="auto").device == torch.device("cpu")
    with pytest.raises(InputError, match="'gpu'"):
        Calculator(model, device="gpu")
