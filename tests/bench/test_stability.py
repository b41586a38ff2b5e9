"""`lpmace.bench.stability`: md rows of results.json, fp64 reference, and that the check can fail."""

from __future__ import annotations

import math

import ase
import numpy as np
import pytest
import torch
from ase.calculators.calculator import Calculator as ASECalculator
from ase.calculators.calculator import all_changes

from lpmace import datasets
from lpmace.bench.stability import md_stability, nve_row, torch_nve_row
from lpmace.calculator import Calculator
from lpmace.data import read_configurations

# The `md` row of results.json (lpmace.bench docstring), key for key.
MD_KEYS = {"system", "atoms", "engine", "code", "backend", "precision", "steps", "steps_done", "dt_fs",
           "temperature_K", "drift_mev_per_atom_per_ps", "fluctuation_mev_per_atom", "drift_vs_fp64", "stable",
           "unstable_step", "reason", "ms_per_step", "model_ms_per_step", "neighbour_list_builds", "trace"}
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
    for key in ("drift_mev_per_atom_per_ps", "fluctuation_mev_per_atom", "ms_per_step", "dt_fs", "temperature_K"):
        assert isinstance(row[key], float) and math.isfinite(row[key]), key
    for key in ("atoms", "steps", "steps_done", "neighbour_list_builds"):
        assert type(row[key]) is int, key
    if row["engine"] == "ase":
        assert row["model_ms_per_step"] is None  # ASE's calculator does not time the model apart
        assert row["neighbour_list_builds"] == row["steps_done"] + 1  # one per force call
    else:
        assert row["engine"] == "torch"
        assert 0 < row["model_ms_per_step"] <= row["ms_per_step"]
        assert 1 <= row["neighbour_list_builds"] <= row["steps_done"] + 1
    assert all(math.isfinite(v) for values in row["trace"].values() for v in values)


def test_fp64_is_the_reference_and_rows_follow_the_schema(fast_model, molecule):
    # A second system (the second 3BPA molecule) checks that each precision is compared with the fp64
    # run of its own system.
    config = read_configurations(datasets.path("3bpa/test_300K.xyz"), index=1)[0]
    other = ase.Atoms(numbers=config.numbers, positions=config.positions)
    lines = []
    rows = md_stability(fast_model, ["fp32", "fp64"], device="cpu", systems=[("3BPA", molecule), ("other", other)],
                        steps=30, dt_fs=0.5, seed=3, progress=lines.append, engines=("ase",))
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
        assert (row["engine"], row["code"], row["backend"], row["system"]) == ("ase", "lpmace", "reference", "3BPA")
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


def test_both_engines_give_rows_per_precision_and_agree_at_fp64(fast_model, molecule):
    rows = md_stability(fast_model, ["fp32"], device="cpu", systems=[("3BPA", molecule)], steps=30, dt_fs=0.5,
                        seed=3)
    assert [(r["engine"], r["precision"]) for r in rows] == [
        ("ase", "fp64"), ("ase", "fp32"), ("torch", "fp64"), ("torch", "fp32")]
    for row in rows:
        _check_row(row)
        assert row["stable"] and row["steps"] == row["steps_done"] == 30 and row["backend"] == "reference"
    ase64, ase32, torch64, torch32 = rows
    # drift_vs_fp64 pairs each row with its own engine's fp64 run
    assert torch64["drift_vs_fp64"] is None
    assert torch32["drift_vs_fp64"] == torch32["drift_mev_per_atom_per_ps"] - torch64["drift_mev_per_atom_per_ps"]
    assert ase32["drift_vs_fp64"] == ase32["drift_mev_per_atom_per_ps"] - ase64["drift_mev_per_atom_per_ps"]
    # The skin keeps the Verlet list: far fewer builds than ASE's one per step (measured 2 of 31).
    assert torch64["neighbour_list_builds"] < ase64["neighbour_list_builds"] / 4

    # Same seed, same velocity Verlet in fp64: one trajectory, so one drift. The engines' energies differ
    # only by summation order (~1e-16 of the ~4 keV total, ~1e-12 meV/atom), measured identical here.
    # 1e-6 of the drift (~8e-8 meV/atom/ps) is far below what a real difference moves: fp32 arithmetic
    # moves it by ~1e-4 of itself, another seed (other velocities) by ~10 %.
    drift = ase64["drift_mev_per_atom_per_ps"]
    assert abs(torch64["drift_mev_per_atom_per_ps"] - drift) <= 1e-6 * abs(drift)
    assert abs(torch64["fluctuation_mev_per_atom"] - ase64["fluctuation_mev_per_atom"]) <= \
        1e-6 * ase64["fluctuation_mev_per_atom"]
    assert torch64["trace"]["time_fs"] == ase64["trace"]["time_fs"]
    assert np.allclose(torch64["trace"]["total_mev_per_atom"], ase64["trace"]["total_mev_per_atom"], rtol=0,
                       atol=1e-6)
    # and the tolerance can fail: fp32 on either engine is outside it
    assert abs(torch32["drift_mev_per_atom_per_ps"] - drift) > 1e-6 * abs(drift)


def test_a_blow_up_on_the_torch_engine_is_a_row_and_ase_goes_on(fast_model, molecule, monkeypatch):
    from lpmace.dynamics.potential import ModelPotential

    call = ModelPotential.__call__

    def nan_after(calls):
        def poisoned(self, state):
            call(self, state)
            if self.calls > calls:
                state.forces = torch.full_like(state.forces, float("nan"))
        return poisoned

    # forces NaN from the 6th force call on: step 5 (call 1 is step 0), as the ASE test above
    monkeypatch.setattr(ModelPotential, "__call__", nan_after(5))
    rows = md_stability(fast_model, ["fp32"], device="cpu", systems=[("3BPA", molecule)], steps=20, dt_fs=0.5)
    assert [(r["engine"], r["precision"], r["stable"]) for r in rows] == [
        ("ase", "fp64", True), ("ase", "fp32", True), ("torch", "fp64", False), ("torch", "fp32", False)]
    for row in rows[2:]:
        assert set(row) == MD_KEYS
        assert row["unstable_step"] == 5 and row["steps_done"] == 4 and "not finite" in row["reason"]
        assert len(row["trace"]["time_fs"]) == 5 and math.isfinite(row["drift_mev_per_atom_per_ps"])

    monkeypatch.setattr(ModelPotential, "__call__", nan_after(0))  # already at the start
    at_start = torch_nve_row("3BPA", molecule, fast_model, device="cpu", backend="reference", precision="fp64",
                             steps=20, dt_fs=0.5)
    assert set(at_start) == MD_KEYS and at_start["engine"] == "torch"
    assert at_start["stable"] is False and at_start["unstable_step"] == 0 and at_start["steps_done"] == 0
    assert at_start["reason"].startswith("the initial structure already fails") and "not finite" in at_start["reason"]
    assert at_start["drift_mev_per_atom_per_ps"] is None and at_start["trace"]["time_fs"] == []
