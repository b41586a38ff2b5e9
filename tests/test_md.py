"""`lpmace.md` and `lpmace md`: energy conservation, drift fit, outputs, bad input, blow-up detection."""

from __future__ import annotations

import csv

import ase
import ase.io
import numpy as np
import pytest
from ase.calculators.calculator import Calculator as ASECalculator
from ase.calculators.calculator import all_changes

import lpmace.io
from lpmace.calculator import Calculator
from lpmace.cli import main
from lpmace.errors import InputError
from lpmace.commands.md import CSV_HEADER, EXIT_UNSTABLE
from lpmace.md import energy_drift, run_md

# max_ell=1, max_L=0 halves the tiny model's CPU time per force call (~0.1 s on 2 cores), which
# dominates these tests; it is still a many-body MACE with conservative (autograd) forces.
FAST = {"max_ell": 1, "max_L": 0}


@pytest.fixture
def fast_model(make_model):
    return make_model(**FAST)


@pytest.fixture
def structure(bpa_atoms, tmp_path):
    """The first 3BPA test molecule in a file of its own."""
    path = tmp_path / "bpa.xyz"
    ase.io.write(path, bpa_atoms, format="extxyz")
    return path


@pytest.fixture
def saved(fast_model, tmp_path):
    return lpmace.io.save(fast_model, tmp_path / "model.safetensors")


def _geometry(atoms: ase.Atoms) -> ase.Atoms:
    return ase.Atoms(numbers=atoms.numbers, positions=atoms.positions, cell=atoms.cell, pbc=atoms.pbc)


def test_nve_conserves_energy_better_with_a_smaller_time_step(fast_model, bpa_atoms):
    small = run_md(_geometry(bpa_atoms), Calculator(fast_model), steps=40, dt_fs=0.25, seed=0)
    large = run_md(_geometry(bpa_atoms), Calculator(fast_model), steps=40, dt_fs=2.0, seed=0)
    assert small.stable and large.stable and small.steps_done == large.steps_done == 40
    assert len(small.total_eV) == 41
    # Velocity Verlet's energy error scales as dt²: 64x from 0.25 to 2 fs. Measured (seeds 0 and 1):
    # std of E_total 6.0e-5 vs 2.4e-2 and 1.3e-5 vs 2.4e-3 meV/atom, ratios 400 and 190. 20x leaves
    # a wide margin and still fails if the step or the forces are wrong (a non-conservative force
    # or a wrong timestep unit would not give dt² scaling).
    assert large.fluctuation_meV_per_atom > 20 * small.fluctuation_meV_per_atom
    assert small.fluctuation_meV_per_atom < 1e-3
    assert _max_change(large) > 20 * _max_change(small)
    assert 100 < small.mean_temperature_K < 500  # started at 300 K, ~half goes into potential energy


def _max_change(result) -> float:
    """Largest |E_total(t) - E_total(0)| per atom, eV."""
    return float(np.max(np.abs(result.total_eV - result.total_eV[0])) / result.n_atoms)


def test_run_md_is_reproducible_and_nvt_runs(fast_model, bpa_atoms):
    a = run_md(_geometry(bpa_atoms), Calculator(fast_model), ensemble="nvt", steps=3, dt_fs=0.5, seed=7)
    b = run_md(_geometry(bpa_atoms), Calculator(fast_model), ensemble="nvt", steps=3, dt_fs=0.5, seed=7)
    np.testing.assert_array_equal(a.total_eV, b.total_eV)
    assert a.stable and list(a.steps) == [0, 1, 2, 3]


def test_energy_drift_recovers_a_known_slope():
    rng = np.random.default_rng(0)
    times = np.arange(0.0, 2000.0, 0.5)  # 2 ps
    n_atoms = 27
    slope = 3.0  # meV/atom/ps
    energies = -100.0 + slope * 1e-3 * n_atoms * times / 1000.0 + rng.normal(0, 1e-4, times.size)
    assert energy_drift(times, energies, n_atoms) == pytest.approx(slope, rel=1e-2)
    assert energy_drift(times, np.full_like(times, 5.0), n_atoms) == pytest.approx(0.0, abs=1e-9)
    assert np.isnan(energy_drift(times[:1], energies[:1], n_atoms))


class _HarmonicThenNaN(ASECalculator):
    """Harmonic wells at the starting positions; returns NaN from call `nan_after` on."""

    def __init__(self, nan_after: int) -> None:
        super().__init__()
        self.implemented_properties = ["energy", "forces"]
        self.nan_after, self.calls, self.origin = nan_after, 0, None

    def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes):
        super().calculate(atoms, properties, system_changes)
        if self.origin is None:
            self.origin = self.atoms.positions.copy()
        self.calls += 1
        d = self.atoms.positions - self.origin
        bad = self.calls > self.nan_after
        self.results = {"energy": np.nan if bad else 0.5 * float(np.sum(d * d)),
                        "forces": np.full_like(d, np.nan) if bad else -d}


def test_non_finite_forces_stop_the_run(bpa_atoms):
    result = run_md(_geometry(bpa_atoms), _HarmonicThenNaN(nan_after=5), steps=20, dt_fs=0.5)
    assert result.unstable_step == 5 and result.steps_done == 4
    assert "not finite" in result.reason and len(result.steps) == 5


def test_cli_writes_trajectory_and_csv(saved, structure, tmp_path, capsys):
    out, log = tmp_path / "traj.xyz", tmp_path / "md.csv"
    code = main(["md", str(structure), "--model", str(saved), "--steps", "6", "--dt", "0.5",
                 "--interval", "2", "--out", str(out), "--log", str(log), "--seed", "1"])
    assert code == 0
    stdout = capsys.readouterr().out
    for fragment in ("steps            6 of 6", "energy drift", "meV/atom/ps", "mean temperature", "ms/step"):
        assert fragment in stdout
    frames = ase.io.read(out, index=":")
    assert len(frames) == 4  # steps 0, 2, 4, 6
    assert all(len(f) == 27 and np.isfinite(f.get_forces()).all() for f in frames)
    assert "REF_forces" not in frames[0].arrays  # labels of the input file would be stale
    with open(log) as f:
        rows = list(csv.reader(f))
    assert tuple(rows[0]) == CSV_HEADER
    assert [int(r[0]) for r in rows[1:]] == [0, 2, 4, 6]
    assert float(rows[2][1]) == pytest.approx(1.0)
    for frame, row in zip(frames, rows[1:]):
        assert frame.get_potential_energy() == pytest.approx(float(row[2]), abs=1e-8)
    assert not [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


def _rejected(capsys, code, tmp_path, *fragments):
    """Exit 2 with one error line holding `fragments`, and no output file (trajectory, CSV, summary) in tmp_path."""
    assert code == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("lpmace: error: "), lines
    for fragment in fragments:
        assert fragment in lines[0]
    for name in ("traj.xyz", "md.csv", "md.summary.json"):
        assert not (tmp_path / name).exists()
    assert not [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


@pytest.mark.parametrize("content", ["", "garbage\nnot xyz\n"], ids=["empty", "garbage"])
def test_cli_rejects_an_unreadable_structure(saved, tmp_path, capsys, content):
    bad = tmp_path / "bad.xyz"
    bad.write_text(content)
    code = main(["md", str(bad), "--model", str(saved), "--out", str(tmp_path / "traj.xyz"),
                 "--log", str(tmp_path / "md.csv")])
    _rejected(capsys, code, tmp_path, str(bad))


def test_cli_rejects_a_missing_structure(saved, tmp_path, capsys):
    missing = tmp_path / "missing.xyz"
    code = main(["md", str(missing), "--model", str(saved), "--out", str(tmp_path / "traj.xyz"),
                 "--log", str(tmp_path / "md.csv")])
    _rejected(capsys, code, tmp_path, str(missing))


def test_cli_rejects_an_unknown_element(saved, bpa_atoms, tmp_path, capsys):
    atoms = _geometry(bpa_atoms)
    atoms.numbers[0] = 26  # Fe: the model knows H, C, N, O
    path = tmp_path / "iron.xyz"
    ase.io.write(path, atoms, format="extxyz")
    code = main(["md", str(path), "--model", str(saved), "--out", str(tmp_path / "traj.xyz"),
                 "--log", str(tmp_path / "md.csv")])
    _rejected(capsys, code, tmp_path, str(path), "Fe")


def test_cli_detects_a_blow_up_and_exits_3(make_model, structure, tmp_path, capsys):
    # A random model with its energy scale multiplied ~150x has forces of tens of eV/Å; 50 fs steps
    # throw the atoms far out of the wells (measured: the total energy moves 35 eV/atom in step 1).
    steep = lpmace.io.save(make_model(scale=100.0, **FAST), tmp_path / "steep.safetensors")
    out, log = tmp_path / "traj.xyz", tmp_path / "md.csv"
    code = main(["md", str(structure), "--model", str(steep), "--steps", "20", "--dt", "50",
                 "--interval", "1", "--out", str(out), "--log", str(log)])
    assert code == EXIT_UNSTABLE == 3
    captured = capsys.readouterr()
    assert "MD became unstable at step 1" in captured.err
    assert len(ase.io.read(out, index=":")) == 1  # the frames before the blow-up are kept
    assert len(log.read_text().splitlines()) == 2


def test_should_stop_ends_the_run_between_steps(bpa_atoms):
    seen = []
    result = run_md(_geometry(bpa_atoms), _HarmonicThenNaN(nan_after=10**6), steps=20, dt_fs=0.5,
                    on_sample=lambda step, atoms: seen.append(step), should_stop=lambda: len(seen) >= 3)
    assert result.interrupted and result.stable
    assert result.steps_done == 2 and seen == [0, 1, 2] and list(result.steps) == [0, 1, 2]


def _write_structure(path, atoms):
    ase.io.write(path, atoms, format="extxyz")
    return path


@pytest.mark.parametrize("case", ["coincident", "nan", "single"])
def test_cli_rejects_a_structure_md_cannot_start_from(saved, bpa_atoms, tmp_path, capsys, case):
    atoms = _geometry(bpa_atoms)
    if case == "coincident":  # atoms 0 and 1 at one position: distance 0 makes the model's energy NaN
        atoms.positions[1] = atoms.positions[0]
    elif case == "nan":
        atoms.positions[3, 1] = np.nan
    else:  # one atom: nothing to integrate (lpmace.md's docstring)
        atoms = atoms[:1]
    path = _write_structure(tmp_path / f"{case}.xyz", atoms)
    code = main(["md", str(path), "--model", str(saved), "--steps", "2", "--out", str(tmp_path / "traj.xyz"),
                 "--log", str(tmp_path / "md.csv")])
    _rejected(capsys, code, tmp_path, str(path))


def test_cli_names_the_frame_count_for_an_index_out_of_range(saved, bpa_atoms, tmp_path, capsys):
    path = _write_structure(tmp_path / "two.xyz", [_geometry(bpa_atoms)] * 2)
    code = main(["md", str(path), "--index", "99", "--model", str(saved), "--out", str(tmp_path / "traj.xyz"),
                 "--log", str(tmp_path / "md.csv")])
    _rejected(capsys, code, tmp_path, str(path), "has 2 structures", "--index 99 is out of range")


class _RefusesAfter(_HarmonicThenNaN):
    """Harmonic, then refuses the geometry as lpmace's calculator refuses overlapping atoms."""

    def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes):
        if self.calls >= self.nan_after:
            raise InputError("atoms 0 and 1 are 0.001 Å apart")
        super().calculate(atoms, properties, system_changes)


def test_a_geometry_the_calculator_refuses_mid_run_is_a_blow_up(bpa_atoms):
    result = run_md(_geometry(bpa_atoms), _RefusesAfter(nan_after=5), steps=20, dt_fs=0.5)
    assert result.unstable_step == 5 and result.steps_done == 4 and "0.001 Å apart" in result.reason


@pytest.mark.parametrize("ensemble", ["nve", "nvt"])
def test_atoms_fixed_by_fixatoms_stay_where_they_are(ensemble):
    # A Cu slab (ASE's EMT) with its bottom layer fixed: FixCom on top of FixAtoms would shift the
    # fixed atoms with every momentum correction (1e-3 Å in 50 NVT steps before the fix).
    from ase.build import fcc111
    from ase.calculators.emt import EMT
    from ase.constraints import FixAtoms

    slab = fcc111("Cu", size=(2, 2, 3), vacuum=5.0)
    bottom = slab.positions[:, 2] < slab.positions[:, 2].min() + 0.1
    slab.set_constraint(FixAtoms(mask=bottom))
    start = slab.positions.copy()
    run_md(slab, EMT(), ensemble=ensemble, steps=50, dt_fs=2.0, temperature_K=600.0, seed=0)
    assert np.array_equal(slab.positions[bottom], start[bottom])
    assert np.abs(slab.positions[~bottom] - start[~bottom]).max() > 1e-3  # the others moved
