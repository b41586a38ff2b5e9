"""`lpmace.bench.stability`: md rows of results.json, fp64 reference, and that the check can fail."""

from __future__ import annotations

import math

import ase
import numpy as np
import pytest
from ase.calculators.calculator import Calculator as ASECalculator
from ase.calculators.calculator import all_changes

from lpmace import datasets
from lpmace.bench.stability import md_stability, nve_row
from lpmace.calculator import Calculator
from lpmace.data import read_configurations

# The `md` row of results.json (lpmace.bench docstring), key for key.
MD_KEYS = {"system", "atoms", "code", "backend", "precision", "steps", "steps_done", "dt_fs", "temperature_K",
           "drift_mev_per_atom_per_ps", "fluctuation_mev_per_atom", "drift_vs_fp64", "stable", "unstable_step",
           "reason", "wall_s_per_step", "trace"}
# max_ell=1, max_L=0: a many-body MACE with conservative (autograd) forces at ~6 ms per step on a CPU.
FAST = {"max_ell": 1, "max_L": 0}


@pytest.fixture
def molecule() -> ase.Atoms:
    """The first 3BPA test configuration (27 atoms, no cell), geometry only."""
    config = read_configurations(datasets.path("3bpa/test_300K.xyz"), index=0)[0]
    return ase.Atoms(numbers=config.numbers, positions=config.positions)


@pytest.fixture
def fast_model(make_model):
    return make_model(**FAST)


class _Tampered(ASECalculator):
    """Another calculator's energy, with its forces scaled by `force_factor` (not the energy's
    gradient unless 1) and NaN from call `nan_after` + 1 on."""

    def __init__(self, inner, *, force_factor: float = 1.0, nan_after: int | None = None) -> None:
        super().__init__()
        self.implemented_properties = ["energy", "forces"]
        self.inner, self.force_factor, self.nan_after, self.calls = inner, force_factor, nan_after, 0

    def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes):
        super().calculate(atoms, properties, system_changes)
        self.calls += 1
        energy = self.inner.get_potential_energy(self.atoms)
        forces = self.inner.get_forces(self.atoms) * self.force_factor
        if self.nan_after is not None and self.calls > self.nan_after:
            forces = np.full_like(forces, np.nan)
        self.results = {"energy": energy, "forces": forces}


def _check_row(row: dict) -> None:
    assert set(row) == MD_KEYS
    assert set(row["trace"]) == {"time_fs", "total_mev_per_atom"}
    for key in ("drift_mev_per_atom_per_ps", "fluctuation_mev_per_atom", "wall_s_per_step", "dt_fs", "temperature_K"):
        assert isinstance(row[key], float) and math.isfinite(row[key]), key
    for key in ("atoms", "steps", "steps_done"):
        assert type(row[key]) is int, key
    assert all(math.isfinite(v) for values in row["trace"].values() for v in values)


def test_fp64_is_the_reference_and_rows_follow_the_schema(fast_model, molecule):
    # A second system (the second 3BPA molecule) checks that each precision is compared with the fp64
    # run of its own system.
    config = read_configurations(datasets.path("3bpa/test_300K.xyz"), index=1)[0]
    other = ase.Atoms(numbers=config.numbers, positions=config.positions)
    lines = []
    rows = md_stability(fast_model, ["fp32", "fp64"], device="cpu", systems=[("3BPA", molecule), ("other", other)],
                        steps=30, dt_fs=0.5, seed=3, progress=lines.append)
    assert [(r["system"], r["precision"]) for r in rows] == [  # the reference runs first
        ("3BPA", "fp64"), ("3BPA", "fp32"), ("other", "fp64"), ("other", "fp32")]
    assert len(lines) == 4 and all(line.startswith("md 3BPA") for line in lines[:2])
    other64, other32 = rows[2:]
    rows = rows[:2]
    assert other64["drift_vs_fp64"] is None
    assert other32["drift_vs_fp64"] == other32["drift_mev_per_atom_per_ps"] - other64["drift_mev_per_atom_per_ps"]
    # the two systems' fp64 drifts differ (by ~7e-4), so pairing fp32 with the wrong fp64 run would show
    assert other64["drift_mev_per_atom_per_ps"] != rows[0]["drift_mev_per_atom_per_ps"]
    for row in rows:
        _check_row(row)
        assert row["stable"] and row["unstable_step"] is None and row["reason"] is None
        assert row["steps"] == row["steps_done"] == 30 and row["atoms"] == 27
        assert (row["code"], row["backend"], row["system"]) == ("lpmace", "reference", "3BPA")
        assert row["trace"]["time_fs"] == [0.5 * i for i in range(31)]
    fp64, fp32 = rows
    assert fp64["drift_vs_fp64"] is None  # the reference: fp64 − fp64 would be 0 by construction
    assert fp32["drift_vs_fp64"] == fp32["drift_mev_per_atom_per_ps"] - fp64["drift_mev_per_atom_per_ps"]
    # Same seed: same initial velocities, so fp32 tracks fp64 closely (measured |drift_vs_fp64| <= 1.2e-4
    # meV/atom/ps for 4 seeds x 2 models, drifts themselves up to 0.1); another start would differ by more.
    assert abs(fp32["drift_vs_fp64"]) < 1e-2
    assert fp32["trace"]["total_mev_per_atom"][0] == pytest.approx(fp64["trace"]["total_mev_per_atom"][0], rel=1e-9)

    # The trace is absolute total energy per atom (E0s included: ~ -1.4e5 meV/atom for 3BPA), thinned.
    thin = nve_row("3BPA", molecule, Calculator(fast_model), code="lpmace", backend="reference", precision="fp64",
                   steps=30, dt_fs=0.5, seed=3, max_trace_points=7)
    assert thin["trace"]["time_fs"][0] == 0.0 and thin["trace"]["time_fs"][-1] == 15.0
    assert len(thin["trace"]["time_fs"]) == 7
    assert thin["trace"]["total_mev_per_atom"][0] == fp64["trace"]["total_mev_per_atom"][0]
    assert thin["drift_mev_per_atom_per_ps"] == fp64["drift_mev_per_atom_per_ps"]  # fitted on every step


def test_non_conservative_forces_are_caught(fast_model, molecule):
    # Forces 1.5x the energy's gradient: kinetic energy grows 1.5x as fast as potential energy falls,
    # so the total energy swings with the potential energy instead of staying constant. Measured over
    # 4 seeds x 2 models: fluctuation 990-15000x and |drift| 760x-2e6x the conservative model's.
    kwargs = {"code": "lpmace", "backend": "reference", "precision": "fp64", "steps": 60, "dt_fs": 0.5, "seed": 1}
    good = nve_row("3BPA", molecule, Calculator(fast_model), **kwargs)
    bad = nve_row("3BPA", molecule, _Tampered(Calculator(fast_model), force_factor=1.5), **kwargs)
    assert good["stable"] and bad["stable"]
    assert bad["fluctuation_mev_per_atom"] > 10 * good["fluctuation_mev_per_atom"]
    assert abs(bad["drift_mev_per_atom_per_ps"]) > 10 * abs(good["drift_mev_per_atom_per_ps"])


def test_a_blow_up_is_a_row_not_an_exception(fast_model, molecule):
    kwargs = {"code": "lpmace", "backend": "reference", "precision": "fp32", "steps": 20, "dt_fs": 0.5}
    row = nve_row("3BPA", molecule, _Tampered(Calculator(fast_model), nan_after=5), **kwargs)
    assert set(row) == MD_KEYS
    assert row["stable"] is False and row["unstable_step"] == 5 and row["steps_done"] == 4
    assert "not finite" in row["reason"]
    assert len(row["trace"]["time_fs"]) == 5  # steps 0..4, the last physical one
    assert math.isfinite(row["drift_mev_per_atom_per_ps"])

    at_start = nve_row("3BPA", molecule, _Tampered(Calculator(fast_model), nan_after=0), **kwargs)
    assert at_start["stable"] is False and at_start["unstable_step"] == 0 and at_start["steps_done"] == 0
    assert "not finite" in at_start["reason"]
    assert at_start["drift_mev_per_atom_per_ps"] is None and at_start["trace"]["time_fs"] == []
