"""Molecular dynamics with any ASE calculator: NVE (velocity Verlet) or NVT (Langevin), with blow-up detection.

`run_md` integrates, samples every `interval` steps (energies, temperature) and stops at the first
step where the state stops being physical: non-finite energy, forces or positions, or a total energy
that moved more than `max_energy_change_per_atom` from its start. Low-precision forces are not
exactly conservative, so NVE's total-energy drift (`energy_drift`, meV/atom/ps) and fluctuation are
the figures of merit that `lpmace md` prints and `lpmace bench` can reuse. A caller can also stop a
run between steps (`should_stop`, e.g. on a signal); the result then says how far it got.

A single atom is refused: with the centre-of-mass motion removed it has no velocity, and no force
acts on a lone atom (isolated, or in a periodic cell where its images sit symmetrically), so there
is nothing to integrate; ASE's velocity initialisation even turns its zero momentum into NaN.

Units: ASE's (eV, Å, amu) inside; times in fs and temperatures in K at this module's interface.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable

import numpy as np
from ase import Atoms, units

from lpmace.errors import InputError

__all__ = ["ENSEMBLES", "MAX_ENERGY_CHANGE_PER_ATOM", "MIN_ATOMS", "MDResult", "energy_drift", "initialize_velocities", "run_md"]

ENSEMBLES = ("nve", "nvt")
# A stable NVE run keeps its total energy within meV/atom; 1 eV/atom means the integrator has lost
# the trajectory (dt too large, atoms overlapping), long before the numbers overflow.
MAX_ENERGY_CHANGE_PER_ATOM = 1.0
MIN_ATOMS = 2  # see the module docstring: one atom has no motion left to integrate


@dataclasses.dataclass(frozen=True)
class MDResult:
    """Samples of one MD run (one entry per sample: step 0 and every `interval` steps; arrays [n_samples]).

    ``unstable_step`` is the step at which the run was stopped as unstable (None: it was not);
    ``reason`` says why. The samples stop at the last step that was still physical.
    ``interrupted`` is True when `should_stop` ended the run after ``steps_done`` steps.
    """

    ensemble: str
    n_atoms: int
    dt_fs: float
    steps_requested: int
    steps_done: int
    steps: np.ndarray  # int64
    times_fs: np.ndarray
    potential_eV: np.ndarray
    kinetic_eV: np.ndarray
    temperature_K: np.ndarray
    wall_s: float
    unstable_step: int | None = None
    reason: str = ""
    interrupted: bool = False

    @property
    def total_eV(self) -> np.ndarray:
        return self.potential_eV + self.kinetic_eV

    @property
    def stable(self) -> bool:
        return self.unstable_step is None

    @property
    def simulated_time_ps(self) -> float:
        return self.steps_done * self.dt_fs / 1000.0

    @property
    def drift_meV_per_atom_per_ps(self) -> float:
        """Slope of a linear fit of the total energy against time (meaningful for NVE only)."""
        return energy_drift(self.times_fs, self.total_eV, self.n_atoms)

    @property
    def fluctuation_meV_per_atom(self) -> float:
        """Standard deviation of the total energy per atom, in meV (0 for fewer than 2 samples)."""
        total = self.total_eV
        return float(np.std(total) / self.n_atoms * 1000.0) if len(total) > 1 else 0.0

    @property
    def mean_temperature_K(self) -> float:
        return float(np.mean(self.temperature_K)) if len(self.temperature_K) else math.nan

    @property
    def wall_s_per_step(self) -> float:
        return self.wall_s / self.steps_done if self.steps_done else math.nan


def energy_drift(times_fs: np.ndarray, energies: np.ndarray, n_atoms: int) -> float:
    """Total-energy drift in meV/atom/ps: the least-squares slope of `energies` (eV) against `times_fs` (fs).

    Args:
        times_fs: sample times, shape [n_samples], fs.
        energies: total energies, shape [n_samples], eV.
        n_atoms: atoms in the system (the slope is divided by it).

    Returns NaN for fewer than two samples (no slope to fit).
    """
    times = np.asarray(times_fs, dtype=np.float64)
    values = np.asarray(energies, dtype=np.float64)
    if times.shape != values.shape or times.ndim != 1:
        raise ValueError(f"times_fs and energies must be 1-d of one length, got {times.shape} and {values.shape}")
    if len(times) < 2:
        return math.nan
    slope_eV_per_fs = np.polyfit(times, values, 1)[0]
    return float(slope_eV_per_fs * 1000.0 * 1000.0 / n_atoms)  # eV→meV, per fs→per ps


def initialize_velocities(atoms: Atoms, temperature_K: float, rng: np.random.Generator) -> None:
    """Maxwell-Boltzmann velocities at `temperature_K`, without centre-of-mass motion (and, for a
    molecule, i.e. no periodic direction, without rigid rotation, which would otherwise carry
    kinetic energy that no force can exchange)."""
    from ase.md import velocitydistribution as vd

    # ASE 3.29 renamed MaxwellBoltzmannDistribution to thermalize_momenta (same draw, old name deprecated).
    thermalize = getattr(vd, "thermalize_momenta", vd.MaxwellBoltzmannDistribution)
    thermalize(atoms, temperature_K=temperature_K, rng=rng)
    vd.Stationary(atoms)
    if not any(atoms.pbc):
        vd.ZeroRotation(atoms)


def run_md(
    atoms: Atoms,
    calculator,
    *,
    ensemble: str = "nve",
    steps: int = 1000,
    dt_fs: float = 0.5,
    temperature_K: float = 300.0,
    friction_per_fs: float = 0.01,
    seed: int = 0,
    interval: int = 1,
    max_energy_change_per_atom: float = MAX_ENERGY_CHANGE_PER_ATOM,
    on_sample: Callable[[int, Atoms], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
    progress: bool = False,
) -> MDResult:
    """Integrate `atoms` (in place) for `steps` steps of `dt_fs` with `calculator`.

    Velocities are drawn from Maxwell-Boltzmann at `temperature_K` with ``np.random.default_rng(seed)``
    (which also drives the Langevin noise for ``ensemble="nvt"``, whose target is `temperature_K` and
    friction `friction_per_fs` in 1/fs). Every `interval` steps, and at step 0, a sample is recorded
    and ``on_sample(step, atoms)`` is called (atoms then carry that step's energy and forces).

    Stops early, with ``unstable_step`` set, when the energy, forces or positions become non-finite
    or the total energy moves more than `max_energy_change_per_atom` (eV) from its initial value;
    with ``interrupted`` set when ``should_stop()``, asked after each step (and its sample), is True.

    Raises:
        InputError: fewer than `MIN_ATOMS` atoms, or non-finite energy or forces at the start
            (e.g. two atoms at one position); raised before `on_sample` is first called. Later, an
            InputError from the calculator (a geometry it refuses) ends the run as unstable.
    """
    from ase.md.langevin import Langevin
    from ase.md.verlet import VelocityVerlet
    from tqdm import tqdm

    if ensemble not in ENSEMBLES:
        raise ValueError(f"ensemble must be one of {ENSEMBLES}, got {ensemble!r}")
    if steps < 0 or interval < 1 or not dt_fs > 0:
        raise ValueError(f"need steps >= 0, interval >= 1, dt_fs > 0; got {steps}, {interval}, {dt_fs}")

    if len(atoms) < MIN_ATOMS:
        raise InputError(f"MD needs at least {MIN_ATOMS} atoms, the structure has {len(atoms)} (a lone atom "
                         "feels no force and has no motion once the centre of mass is held still)")

    rng = np.random.default_rng(seed)
    atoms.calc = calculator
    initialize_velocities(atoms, temperature_K, rng)
    if ensemble == "nve":
        dynamics = VelocityVerlet(atoms, timestep=dt_fs * units.fs)
    else:
        from ase.constraints import FixAtoms, FixCom

        # ASE >= 3.28: Langevin's own fixcm samples NVT slightly wrongly; FixCom is the exact way
        # to keep the centre of mass still. Atoms held by FixAtoms already anchor the system, and
        # FixCom's momentum correction would move them. Friction is per ASE time unit: 1/fs → / units.fs.
        if not any(isinstance(c, FixAtoms) for c in atoms.constraints):
            atoms.set_constraint(list(atoms.constraints) + [FixCom()])
        dynamics = Langevin(atoms, timestep=dt_fs * units.fs, temperature_K=temperature_K,
                            friction=friction_per_fs / units.fs, fixcm=False, rng=rng)

    n_atoms = len(atoms)
    samples: list[tuple[int, float, float, float]] = []
    unstable_step, reason, interrupted = None, "", False

    def state() -> tuple[float, float, str]:
        """(potential, kinetic, problem) of the current step; problem is "" when all is finite."""
        potential = float(atoms.get_potential_energy())
        kinetic = float(atoms.get_kinetic_energy())
        if not (math.isfinite(potential) and math.isfinite(kinetic)):
            return potential, kinetic, "energy is not finite"
        if not (np.isfinite(atoms.get_forces()).all() and np.isfinite(atoms.positions).all()):
            return potential, kinetic, "forces or positions are not finite"
        return potential, kinetic, ""

    start = time.perf_counter()
    potential, kinetic, problem = state()
    if problem:
        raise InputError(f"the initial structure already fails: {problem}")
    initial_total = potential + kinetic
    samples.append((0, potential, kinetic, float(atoms.get_temperature())))
    if on_sample is not None:
        on_sample(0, atoms)

    steps_done = 0
    with tqdm(total=steps, desc=f"md {ensemble}", unit="step", disable=not progress, leave=False) as bar:
        for step in range(1, steps + 1):
            if should_stop is not None and should_stop():
                interrupted = True
                break
            try:
                dynamics.run(1)
            except InputError as err:  # the calculator refusing a geometry the run reached (atoms overlapping)
                unstable_step, reason = step, str(err)
                break
            except Exception:  # a calculator choking on NaN positions is the blow-up, not a bug
                if np.isfinite(atoms.positions).all():
                    raise
                unstable_step, reason = step, "positions are not finite"
                break
            potential, kinetic, problem = state()
            change = abs(potential + kinetic - initial_total) / n_atoms
            if not problem and change > max_energy_change_per_atom:
                problem = (f"total energy moved {change:.3g} eV/atom from its start "
                           f"(limit {max_energy_change_per_atom:g})")
            if problem:
                unstable_step, reason = step, problem
                break
            steps_done = step
            bar.update(1)
            if step % interval == 0:
                samples.append((step, potential, kinetic, float(atoms.get_temperature())))
                if on_sample is not None:
                    on_sample(step, atoms)
    wall = time.perf_counter() - start

    columns = np.array(samples, dtype=np.float64).reshape(-1, 4)
    return MDResult(
        ensemble=ensemble, n_atoms=n_atoms, dt_fs=float(dt_fs), steps_requested=steps, steps_done=steps_done,
        steps=columns[:, 0].astype(np.int64), times_fs=columns[:, 0] * dt_fs,
        potential_eV=columns[:, 1], kinetic_eV=columns[:, 2], temperature_K=columns[:, 3],
        wall_s=wall, unstable_step=unstable_step, reason=reason, interrupted=interrupted,
    )
