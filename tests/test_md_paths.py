"""MD paths the other md tests leave out: `lpmace md` on a periodic cell, NVT's thermostat, --backend.

A periodic cell is checked against physics that the code does not compute for us: a 2x2x2 supercell
has exactly 8 times the energy of its cell, and NVE conserves the total energy only if the forces
(images across the boundary included) are the energy's gradient. The thermostat is checked by where
it takes a cold start: to its target, whatever the target, while NVE from the same start stays cold.
"""

from __future__ import annotations

import csv

import ase
import ase.build
import ase.io
import numpy as np
import pytest

import lpmace.io
from lpmace.calculator import Calculator
from lpmace.cli import main
from lpmace.md import run_md

# max_ell=1, max_L=0: a many-body MACE with conservative (autograd) forces at a few ms per step.
FAST = {"max_ell": 1, "max_L": 0}


def _csv(path) -> np.ndarray:
    """md.csv as [rows, (step, time_fs, potential_eV, kinetic_eV, total_eV, temperature_K)]."""
    with open(path) as f:
        return np.array([[float(x) for x in row] for row in list(csv.reader(f))[1:]])


@pytest.fixture
def silicon(make_model, tmp_path):
    """(model file, primitive diamond Si cell file, its 2x2x2 supercell file): a non-orthogonal fcc cell
    of 2 atoms, rattled (seeded) so that the forces are not zero by symmetry."""
    model = lpmace.io.save(make_model(atomic_numbers=(14,), E0s=(-158.0,), **FAST), tmp_path / "si.safetensors")
    cell = ase.build.bulk("Si", "diamond", a=5.43)
    cell.rattle(0.05, seed=0)
    ase.io.write(tmp_path / "cell.xyz", cell, format="extxyz")
    ase.io.write(tmp_path / "super.xyz", cell.repeat((2, 2, 2)), format="extxyz")
    return model, tmp_path / "cell.xyz", tmp_path / "super.xyz"


def _md(tmp_path, structure, model, name, *args) -> tuple[np.ndarray, list[ase.Atoms]]:
    out, log = tmp_path / f"{name}.xyz", tmp_path / f"{name}.csv"
    assert main(["md", str(structure), "--model", str(model), "--out", str(out), "--log", str(log), *args]) == 0
    return _csv(log), ase.io.read(out, index=":")


def test_md_on_a_periodic_cell(silicon, tmp_path, capsys):
    model, cell_file, super_file = silicon
    # With r_max 4 Å and a 2-atom cell, every neighbour of an atom is a periodic image.
    cell_rows, cell_frames = _md(tmp_path, cell_file, model, "cell", "--steps", "2", "--interval", "1")
    super_rows, super_frames = _md(tmp_path, super_file, model, "super", "--steps", "20", "--dt", "1.0",
                                   "--interval", "1", "--temperature", "600", "--seed", "1")
    capsys.readouterr()
    # Step 0 (before any motion): the supercell is 8 copies of the cell.
    assert super_rows[0, 2] == pytest.approx(8 * cell_rows[0, 2], rel=1e-12, abs=0)
    # The trajectory keeps the cell and the periodicity of the input.
    source = ase.io.read(super_file)
    for frame in super_frames:
        assert frame.pbc.all() and np.allclose(frame.cell.array, source.cell.array, rtol=0, atol=1e-12)
    assert all(frame.pbc.all() and len(frame) == 2 for frame in cell_frames)
    # NVE: the total energy stays put while kinetic energy moves (measured std 1e-5 against 0.1 eV
    # over 200 steps); forces missing an image's share, or not the energy's gradient, break this.
    total, kinetic = super_rows[:, 4], super_rows[:, 3]
    assert kinetic.std() > 0.01 and total.std() < 0.01 * kinetic.std()


def _cold(step: int, atoms: ase.Atoms) -> None:
    """run_md's on_sample: stop every atom after step 0's sample, so the run starts at 0 K."""
    if step == 0:
        atoms.set_momenta(np.zeros((len(atoms), 3)))


def test_nvt_thermostat_takes_a_cold_start_to_its_target(make_model, bpa_atoms):
    model = make_model(**FAST)
    molecule = ase.Atoms(numbers=bpa_atoms.numbers, positions=bpa_atoms.positions)

    def run(ensemble, temperature_K):
        result = run_md(molecule.copy(), Calculator(model), ensemble=ensemble, steps=40, dt_fs=1.0,
                        temperature_K=temperature_K, friction_per_fs=0.2, seed=1, on_sample=_cold)
        assert result.stable and result.steps_done == 40
        return result.temperature_K[20:].mean()  # after ~20 relaxation times 1/(2 friction)

    # Measured (seeds 0-3): 0.95-1.05 of the target over steps 20-40; NVE from the same start, 12 K.
    for target in (300.0, 900.0):
        assert run("nvt", target) == pytest.approx(target, rel=0.2)
    assert run("nve", 300.0) < 30.0  # the heat comes from the thermostat, not from the structure


def test_md_backend_reference_is_the_default_path_on_the_cpu(make_model, bpa_atoms, tmp_path, capsys):
    model = lpmace.io.save(make_model(**FAST), tmp_path / "m.safetensors")
    structure = tmp_path / "bpa.xyz"
    ase.io.write(structure, bpa_atoms, format="extxyz")
    common = ("--steps", "3", "--interval", "1", "--seed", "2")
    explicit, _ = _md(tmp_path, structure, model, "explicit", "--backend", "reference", *common)
    default, _ = _md(tmp_path, structure, model, "default", *common)
    np.testing.assert_array_equal(explicit[:, 1:], default[:, 1:])
    capsys.readouterr()


@pytest.mark.parametrize("backend", ["warp", "cuda-graphs"])
def test_md_refuses_an_unknown_backend_before_writing(make_model, bpa_atoms, tmp_path, capsys, backend):
    model = lpmace.io.save(make_model(**FAST), tmp_path / "m.safetensors")
    structure = tmp_path / "bpa.xyz"
    ase.io.write(structure, bpa_atoms, format="extxyz")
    out, log = tmp_path / "traj.xyz", tmp_path / "md.csv"
    code = main(["md", str(structure), "--model", str(model), "--backend", backend, "--steps", "2",
                 "--out", str(out), "--log", str(log)])
    assert code == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("lpmace: error: ") and backend in lines[0], lines
    assert not out.exists() and not log.exists()


@pytest.mark.gpu
@pytest.mark.parametrize("backend", ["triton", "compiled"])
def test_md_backend_on_cuda_follows_the_reference_trajectory(make_model, bpa_atoms, tmp_path, capsys, backend):
    """fp64 weights and precision: the fast kernels follow the reference's first steps to ~1e-9 eV."""
    model = lpmace.io.save(make_model(**FAST), tmp_path / "m.safetensors")
    structure = tmp_path / "bpa.xyz"
    ase.io.write(structure, bpa_atoms, format="extxyz")
    common = ("--steps", "5", "--interval", "1", "--seed", "2", "--device", "cuda", "--precision", "fp64")
    reference, _ = _md(tmp_path, structure, model, "reference", "--backend", "reference", *common)
    fast, _ = _md(tmp_path, structure, model, backend, "--backend", backend, *common)
    capsys.readouterr()
    # The tiny model's interaction energy (E - sum E0) is ~0.04 eV: 1e-6 eV fails a kernel that drops a
    # path or returns only the E0s; kinetic energy follows the forces.
    np.testing.assert_allclose(fast[:, 2], reference[:, 2], rtol=0, atol=1e-6)
    np.testing.assert_allclose(fast[:, 3], reference[:, 3], rtol=1e-6, atol=1e-9)
