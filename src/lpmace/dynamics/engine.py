"""`run_dynamics`: NVE or NVT molecular dynamics of many systems at once, resident on one device.

All systems advance together in one batched graph: velocity Verlet (`lpmace.dynamics.verlet`) or
Langevin BAOAB (`lpmace.dynamics.langevin`), forces from `ModelPotential` through a Verlet list with
a skin. Between the neighbour list's syncs the step runs without waiting for the host: each
system's health and the samples go to the host asynchronously (`lpmace.dynamics.samples`) and are
read one step later.

Host work per step, for small runs where it sets the step time (`benchmarks/md_step_ops.py` counts the
ops): the integrator and the health check (`lpmace.dynamics.health`) take few fused ops; runs of at most
`SMALL_RUN_ATOMS` atoms hand the model the Verlet list's pairs unfiltered (`exact_cutoff_pairs`), so a reuse
dispatches nothing, and in
NVE the rebuild test is queued at the end of each step from the exactly known next positions and read at
the next force call from host memory: no read of the device in a reuse step (the host waits there only
for the previous step's end, as it does for the status copy). NVT draws its noise inside the step, so
its rebuild test stays synchronous (one sync per step).

Blow-ups are judged per system as `lpmace.md.run_md` judges a run (non-finite energy, forces or
positions, or a total energy that moved more than `max_energy_change_per_atom` eV/atom from its
start): on the device, in the step it happens, the system is frozen at its last positions; when the
host reads that status (a step later) it records (step, reason) and removes the system from the
state, and the others go on. Initial velocities follow `lpmace.dynamics.state` (system s: seed + s),
so one system starts exactly as `run_md` with the same seed and, in NVE at fp64, follows the same
trajectory.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable, Sequence

import ase
import numpy as np
import torch
from ase import units
from ase.calculators.singlepoint import SinglePointCalculator

from lpmace.dynamics.health import HealthCheck
from lpmace.dynamics.langevin import Langevin
from lpmace.dynamics.potential import ModelPotential, committee_members
from lpmace.dynamics.samples import Layout, Transfers, failure_reason
from lpmace.dynamics.state import State, state_from_atoms
from lpmace.dynamics.verlet import VelocityVerlet
from lpmace.errors import InputError
from lpmace.md import ENSEMBLES, MAX_ENERGY_CHANGE_PER_ATOM, MDResult

__all__ = ["DynamicsResult", "SMALL_RUN_ATOMS", "run_dynamics"]

# Up to this many atoms in a run, a step's time is the host's (launches, Python), not the model's
# arithmetic: the engine hands the model the Verlet list's pairs unfiltered (`exact_cutoff_pairs`).
# Measured on an H200 (md_engine_speed): 12 atoms take 7-10 ms a step against a model call of ~1 ms of
# GPU time; the W2 box (4,096 atoms) is bound by the model (11.6 of 13.1 ms), where 1.7x edges would cost.
SMALL_RUN_ATOMS = 512
# Steps excluded from `steady_ms_per_step`: the first calls compile kernels and record CUDA graphs.
WARMUP_STEPS = 10


@dataclasses.dataclass(frozen=True)
class DynamicsResult:
    """A run of several systems: one `lpmace.md.MDResult` per system (in input order) and the run's counters.

    ``steps`` is the number of steps the run advanced; ``model_ms_per_step`` the time of the model
    calls per step (CUDA events on CUDA); ``neighbour_list_builds`` the Verlet list's full builds
    (None where unknown); ``engine`` "torch" or "ase". ``steady_s`` is the wall time of the steps after
    the first `WARMUP_STEPS` (None for shorter runs), so that ``steady_ms_per_step`` leaves out
    kernel compilation and CUDA-graph recording, which ``ms_per_step`` includes.
    """

    systems: tuple[MDResult, ...]
    steps: int
    atoms: int
    wall_s: float
    model_ms_per_step: float | None
    neighbour_list_builds: int | None
    interrupted: bool = False
    engine: str = "torch"
    steady_s: float | None = None

    @property
    def ms_per_step(self) -> float:
        return 1e3 * self.wall_s / self.steps if self.steps else math.nan

    @property
    def steady_ms_per_step(self) -> float | None:
        if self.steady_s is None or self.steps <= WARMUP_STEPS:
            return None
        return 1e3 * self.steady_s / (self.steps - WARMUP_STEPS)

    @property
    def stable(self) -> bool:
        return all(r.stable for r in self.systems)

    def summary(self) -> dict:
        """Plain values for the run's summary JSON (NaN written as None)."""
        def number(x):
            return None if x is None or not math.isfinite(x) else float(x)

        return {
            "engine": self.engine, "steps": self.steps, "systems": len(self.systems), "atoms": self.atoms,
            "ms_per_step": number(self.ms_per_step), "steady_ms_per_step": number(self.steady_ms_per_step),
            "model_ms_per_step": number(self.model_ms_per_step),
            "neighbour_list_builds": self.neighbour_list_builds, "interrupted": self.interrupted,
            "blow_ups": sum(not r.stable for r in self.systems),
            "per_system": [{
                "system": s, "atoms": r.n_atoms, "steps_done": r.steps_done,
                "drift_meV_per_atom_per_ps": number(r.drift_meV_per_atom_per_ps) if r.ensemble == "nve" else None,
                "fluctuation_meV_per_atom": number(r.fluctuation_meV_per_atom),
                "mean_temperature_K": number(r.mean_temperature_K),
                "unstable_step": r.unstable_step, "reason": r.reason,
            } for s, r in enumerate(self.systems)],
        }


def run_dynamics(
    model,
    structures: Sequence[ase.Atoms],
    *,
    ensemble: str = "nve",
    steps: int = 1000,
    dt_fs: float = 0.5,
    temperature_K: float | Sequence[float] = 300.0,
    friction_per_fs: float | Sequence[float] = 0.01,
    initial_temperature_K: float | Sequence[float] | None = None,
    seed: int = 0,
    interval: int = 1,
    precision=None,
    device="cpu",
    backend: str = "auto",
    skin: float = 1.0,
    exact_cutoff_pairs: bool | None = None,
    state_dtype: torch.dtype = torch.float64,
    max_energy_change_per_atom: float = MAX_ENERGY_CHANGE_PER_ATOM,
    on_sample: Callable[[int, int, ase.Atoms], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
    progress: bool = False,
) -> DynamicsResult:
    """Integrate `structures` (not changed) together for `steps` steps of `dt_fs` fs with `model`.

    Args:
        model: a `lpmace.model.MACE`, or a committee (`lpmace.Committee` or a list of models): the
            members' mean is the force field, and each sample carries their spread, ``forces_std``
            [n] (eV/Å) in ``atoms.arrays`` and ``energy_std_per_atom`` (eV/atom) in ``atoms.info``;
            `precision`, `backend` and `device` as for `lpmace.Calculator`.
        structures: ase.Atoms (FixAtoms is the one constraint honoured), at least 2 atoms each.
        ensemble: "nve" (velocity Verlet) or "nvt" (Langevin BAOAB with `temperature_K` and
            `friction_per_fs` in 1/fs, one number or one per system). Initial momenta are drawn at
            `initial_temperature_K` (one number or one per system; None: `temperature_K`).
        seed: initial velocities of system s from ``np.random.default_rng(seed + s)``; NVT noise from a
            torch Generator seeded with `seed`.
        interval: a sample every `interval` steps and at step 0; ``on_sample(system, step, atoms)`` gets
            an ase.Atoms carrying that step's positions, momenta, energy and forces.
        skin: Verlet skin in Å (0: a new list at every step). state_dtype: float64 or float32.
        exact_cutoff_pairs: the model gets only the pairs within its r_max (True) or every pair of the
            Verlet list, up to r_max + skin (False): the same energies and forces (the extra pairs add
            exact zeros), fewer ops and no host read per step, but up to ~1.7x the model's edges. None:
            False for runs of at most `SMALL_RUN_ATOMS` atoms in all (host-bound steps), True above.
        should_stop: asked before each step; True ends the run (``interrupted``).

    Raises:
        ValueError for an unknown ensemble, steps < 0, interval < 1 or dt_fs <= 0;
        InputError for an element the model lacks, overlapping atoms, fewer than 2 atoms, or a system
        whose energy or forces are not finite at the start (before `on_sample` is first called).
    """
    from tqdm import tqdm

    from lpmace.data.batching import graph_from_atoms
    from lpmace.elements import check_known_elements

    if ensemble not in ENSEMBLES:
        raise ValueError(f"ensemble must be one of {ENSEMBLES}, got {ensemble!r}")
    if steps < 0 or interval < 1 or not dt_fs > 0:
        raise ValueError(f"need steps >= 0, interval >= 1, dt_fs > 0; got {steps}, {interval}, {dt_fs}")
    if state_dtype not in (torch.float64, torch.float32):
        raise ValueError(f"state_dtype must be torch.float64 or torch.float32, got {state_dtype}")
    if not structures:
        raise InputError("run_dynamics needs at least one structure")
    device = torch.device(device)
    if isinstance(model, (list, tuple)):  # a committee given as models or files: loaded once
        from lpmace.committee import load_members

        model = load_members(model)
    config = committee_members(model)[0][0].config
    r_max = float(config.r_max)
    for s, atoms in enumerate(structures):
        check_known_elements(atoms.numbers, config.atomic_numbers, f"system {s}")
        graph_from_atoms(atoms, r_max)  # overlapping atoms and non-finite positions: InputError naming them
    friction_per_t = np.asarray(friction_per_fs, dtype=np.float64) / units.fs
    state = state_from_atoms(structures, temperature_K=temperature_K, friction_per_t=friction_per_t, seed=seed,
                             hold_centre=ensemble == "nvt", device=device, dtype=state_dtype,
                             initial_temperature_K=initial_temperature_K)
    if exact_cutoff_pairs is None:
        exact_cutoff_pairs = sum(len(a) for a in structures) > SMALL_RUN_ATOMS
    potential = ModelPotential(model, device=device, precision=precision, backend=backend, skin=skin,
                               exact_cutoff_pairs=exact_cutoff_pairs)
    dt = dt_fs * units.fs
    integrator = VelocityVerlet(dt) if ensemble == "nve" else Langevin(dt, seed, device)
    run = _Run(structures, state, ensemble, dt_fs, interval, max_energy_change_per_atom, on_sample, device)

    start = time.perf_counter()
    potential(state)
    run.start()
    # Velocity Verlet knows the next step's positions at the end of a step: the Verlet list's rebuild
    # test is queued then and read at the next force call without a sync (`VerletList.plan`).
    plan = getattr(integrator, "next_positions", None) if not exact_cutoff_pairs else None
    frozen = run.frozen()
    if plan is not None:
        potential.neighbours.plan(plan(run.state, frozen))
    interrupted, advanced, warm = False, 0, None
    with tqdm(total=steps, desc=f"md {ensemble}", unit="step", disable=not progress, leave=False) as bar:
        for step in range(1, steps + 1):
            if should_stop is not None and should_stop():
                interrupted = True
                break
            previous = run.state.positions
            integrator.step(run.state, potential, frozen)
            advanced = step
            frozen = run.check(step, previous)
            if plan is not None:
                potential.neighbours.plan(plan(run.state, frozen))
            if run.read_one():  # systems found unstable were removed: the list is built anew
                potential.neighbours.reset()
                if not run.layout.ids:
                    break
                frozen = run.frozen()
            bar.update(1)
            if step == WARMUP_STEPS:
                warm = time.perf_counter()
    run.drain()
    end = time.perf_counter()
    wall = end - start
    model_ms = potential.model_ms(wait=True)
    systems = run.results(steps, wall, interrupted)
    return DynamicsResult(systems=systems, steps=advanced, atoms=sum(len(a) for a in structures), wall_s=wall,
                          model_ms_per_step=model_ms / potential.calls if potential.calls else math.nan,
                          neighbour_list_builds=potential.neighbours.builds, interrupted=interrupted,
                          steady_s=None if warm is None else end - warm)


class _Run:
    """The host's and the device's book-keeping of a run: which systems are alive, their samples."""

    def __init__(self, structures, state: State, ensemble, dt_fs, interval, limit, on_sample, device) -> None:
        self.structures, self.state, self.ensemble = structures, state, ensemble
        self.dt_fs, self.interval, self.limit, self.on_sample = dt_fs, interval, limit, on_sample
        self.transfers = Transfers(device)
        count = len(structures)
        self.layout = Layout(tuple(range(count)), tuple(state.ptr.tolist()), state.dof.cpu().numpy())
        self.samples: list[list[tuple[int, float, float, float]]] = [[] for _ in range(count)]
        self.steps_done = [0] * count
        self.failures: dict[int, tuple[int, str]] = {}
        self.removed = False

    def start(self) -> None:
        """Step 0: the initial energies must be finite (InputError otherwise, before any sample)."""
        state = self.state
        self.health = HealthCheck(state, self.limit)
        code, _ = self.health.check(state)
        bad = code.nonzero().flatten().tolist()
        if bad:
            s = bad[0]
            raise InputError(f"system {s}, Atoms({self.structures[s].get_chemical_formula()}): the initial structure "
                             f"already fails: {failure_reason(int(code[s]), 0.0, self.limit)}")
        # status rows (`lpmace.dynamics.samples.Copy`): 0 alive / inf failed, the failure code, its |ΔE|
        self.status = torch.zeros((3, state.num_systems), dtype=torch.float64, device=state.ptr.device)
        self.failed = torch.full_like(self.status[0], math.inf)
        self._queue(0)
        self.read_one()

    def frozen(self) -> torch.Tensor:
        """[N] bool: atoms that do not move (fixed, or of a system already unstable on the device)."""
        return self.state.fixed | (self.status[0] > 0)[self.state.batch]

    def check(self, step: int, previous_positions: torch.Tensor) -> torch.Tensor:
        """On the device: mark systems that fail at `step` and put them back to their last positions
        (atoms frozen during the step are there already). Returns the frozen atoms ([N] bool) after it."""
        code, change = self.health.check(self.state)
        newly = code > self.status[0]  # a code > 0 of a system alive (0) until now; never > inf
        self.status = torch.where(newly, torch.stack([self.failed, code, change]), self.status)
        frozen = self.frozen()
        self.state.positions = torch.where(frozen[:, None], previous_positions, self.state.positions)
        self._queue(step)
        return frozen

    def _queue(self, step: int) -> None:
        state = self.state
        sample = None
        if step % self.interval == 0:
            sample = {"positions": state.positions, "momenta": state.momenta, "forces": state.forces,
                      "potential": state.potential_eV, "kinetic": state.kinetic_eV()}
            if state.forces_std is not None:  # a committee's spread
                sample.update(forces_std=state.forces_std, energy_std=state.energy_std_eV)
        self.transfers.put(step, self.layout, self.status, sample)

    def read_one(self) -> bool:
        """Read the oldest copy when a newer one is queued (or the last one at the start); True if
        systems were found unstable (and were removed from the state)."""
        if len(self.transfers.queue) > 1 or self.transfers.queue and self.transfers.queue[0].step == 0:
            return self._read(self.transfers.take())
        return False

    def drain(self) -> None:
        """Read every queued copy (at the end of the run)."""
        while self.transfers.queue:
            self._read(self.transfers.take())

    def _read(self, copy) -> bool:
        status = copy.status.numpy()
        newly = []
        ptr = copy.layout.ptr
        for row, s in enumerate(copy.layout.ids):
            if status[0, row] == 0:
                self.steps_done[s] = copy.step
            elif s not in self.failures:  # copies are read in order: this is the step it failed at
                change = status[2, row] / (ptr[row + 1] - ptr[row])
                self.failures[s] = (copy.step, failure_reason(int(status[1, row]), change, self.limit))
                newly.append(s)
        if copy.sample is not None:
            self._record(copy, status)
        if newly:
            self._remove(newly)
        return bool(newly)

    def _record(self, copy, status) -> None:
        sample, layout = copy.sample, copy.layout
        potential, kinetic = sample["potential"].numpy(), sample["kinetic"].numpy()
        for row, s in enumerate(layout.ids):
            if status[0, row] != 0:
                continue
            temperature = 2 * kinetic[row] / (layout.dof[row] * units.kB) if layout.dof[row] > 0 else 0.0
            self.samples[s].append((copy.step, float(potential[row]), float(kinetic[row]), float(temperature)))
            if self.on_sample is not None:
                rows = slice(layout.ptr[row], layout.ptr[row + 1])
                atoms = self._atoms(s, sample, rows, float(potential[row]))
                if "forces_std" in sample:
                    atoms.arrays["forces_std"] = sample["forces_std"][rows].numpy().copy()
                    atoms.info["energy_std_per_atom"] = float(sample["energy_std"][row]) / len(atoms)
                self.on_sample(s, copy.step, atoms)

    def _atoms(self, s: int, sample, rows: slice, energy: float) -> ase.Atoms:
        """System s at a sample, as `run_md` hands its atoms to on_sample (NVT: FixCom unless FixAtoms)."""
        from ase.constraints import FixAtoms, FixCom

        atoms = self.structures[s].copy()
        atoms.positions = sample["positions"][rows].double().numpy()
        atoms.set_momenta(sample["momenta"][rows].double().numpy(), apply_constraint=False)
        if self.ensemble == "nvt" and not any(isinstance(c, FixAtoms) for c in atoms.constraints):
            atoms.set_constraint(list(atoms.constraints) + [FixCom()])
        atoms.calc = SinglePointCalculator(atoms, energy=energy, free_energy=energy,
                                           forces=sample["forces"][rows].double().numpy())
        return atoms

    def _remove(self, systems: list[int]) -> None:
        """Take `systems` (global ids) out of the state; the device's arrays follow."""
        keep = [row for row, s in enumerate(self.layout.ids) if s not in self.failures]
        if not keep:
            self.layout = Layout((), (0,), np.zeros(0))
            return
        index = torch.tensor(keep, device=self.status.device)
        self.state = self.state.select(keep)
        self.health = self.health.select(index, self.state)
        self.status, self.failed = self.status[:, index], self.failed[index]
        self.layout = Layout(tuple(self.layout.ids[r] for r in keep), tuple(self.state.ptr.tolist()),
                             self.layout.dof[keep])

    def results(self, steps: int, wall: float, interrupted: bool) -> tuple[MDResult, ...]:
        out = []
        for s, atoms in enumerate(self.structures):
            columns = np.array(self.samples[s], dtype=np.float64).reshape(-1, 4)
            unstable_step, reason = self.failures.get(s, (None, ""))
            out.append(MDResult(
                ensemble=self.ensemble, n_atoms=len(atoms), dt_fs=float(self.dt_fs), steps_requested=steps,
                steps_done=self.steps_done[s], steps=columns[:, 0].astype(np.int64), times_fs=columns[:, 0] * self.dt_fs,
                potential_eV=columns[:, 1], kinetic_eV=columns[:, 2], temperature_K=columns[:, 3], wall_s=wall,
                unstable_step=unstable_step, reason=reason, interrupted=interrupted))
        return tuple(out)
