"""NVE stability per precision and MD engine: total-energy drift and fluctuation of one model, blow-ups reported.

Velocity Verlet conserves the total energy up to an O(dt²) fluctuation only if the forces are the
exact gradient of the energy. Low-precision forces are not, and the error shows up as a drift of
the total energy (a linear trend, meV/atom/ps) or, worse, as a blow-up. Every precision of a system
starts from the same positions and the same Maxwell-Boltzmann velocities (same `seed`), and fp64 is
always run first as the reference: ``drift_vs_fp64`` is the drift a precision adds to fp64's. The
fp64 row is the reference itself, so its ``drift_vs_fp64`` is null (fp64 minus fp64 is 0 by
construction: it would measure nothing); its own drift is its ``drift_mev_per_atom_per_ps``.

Two engines integrate each system: ``"ase"``, `lpmace.md.run_md` with `lpmace.Calculator` (one
neighbour list per force call), and ``"torch"``, `lpmace.dynamics.run_dynamics` (the state and a Verlet
list with a skin on the device). Both start from the same velocities (same `seed`; the torch engine
runs each system alone, as its system 0, which draws them as `run_md` does) and integrate the same
velocity Verlet, so at fp64 their drifts agree; ``drift_vs_fp64`` compares a row with the fp64 row of
its own system and engine. The drift fit and the blow-up detection are `lpmace.md`'s for both; this
module only turns an `MDResult` into a ``md`` row of results.json (schema in `lpmace.bench`).

Units: fs, K, meV/atom, meV/atom/ps, ms.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Sequence

import ase
import numpy as np

from lpmace.md import MDResult, run_md

__all__ = ["ENGINES", "md_stability", "nve_row", "torch_nve_row"]

REFERENCE = "fp64"
ENGINES = ("ase", "torch")
# run_md and run_dynamics raise this (in a ValueError) when step 0 already has non-finite energy or forces.
_INITIAL_FAILURE = "the initial structure already fails"


def nve_row(
    system: str,
    atoms: ase.Atoms,
    calculator,
    *,
    code: str,
    backend: str,
    precision: str,
    steps: int,
    dt_fs: float,
    temperature_K: float = 300.0,
    seed: int = 0,
    max_trace_points: int = 400,
) -> dict:
    """One NVE run of `steps` × `dt_fs` fs from a copy of `atoms` through ASE (`lpmace.md.run_md` with
    `calculator`), as a ``md`` row of results.json with ``engine`` "ase".

    Velocities are drawn at `temperature_K` (K) with `seed`. The row holds the least-squares drift
    of the total energy (meV/atom/ps), its standard deviation (``fluctuation_mev_per_atom``, meV/atom),
    the wall time per step (``ms_per_step``, ms), the model's time per step (``model_ms_per_step``: None,
    ASE's calculator does not time it apart), the neighbour lists built (one per force call) and a trace
    of the total energy per atom (meV/atom, absolute, against ``time_fs``) thinned to at most
    `max_trace_points` samples (first and last kept). The drift fit uses every step. ``drift_vs_fp64``
    is None here (`md_stability` fills it).

    A blow-up (non-finite energy, forces or positions, or the total energy moving more than
    `lpmace.md.MAX_ENERGY_CHANGE_PER_ATOM` eV/atom) is a row with ``stable`` False, the step and the
    reason, never an exception; the numbers then describe the steps before it (None where there are
    too few samples to fit).
    """
    where = (system, atoms, code, backend, precision, steps, dt_fs, temperature_K, max_trace_points)
    try:
        result = run_md(atoms.copy(), calculator, ensemble="nve", steps=steps, dt_fs=dt_fs,
                        temperature_K=temperature_K, seed=seed)
    except ValueError as err:
        if not str(err).startswith(_INITIAL_FAILURE):
            raise
        return _row(*where, None, {"engine": "ase", "neighbour_list_builds": 1}, unstable_step=0, reason=str(err))
    advanced = result.steps_done if result.stable else result.unstable_step
    timing = {"engine": "ase", "ms_per_step": _number(1e3 * result.wall_s_per_step),
              "neighbour_list_builds": advanced + 1}  # the calculator builds one at each force call
    return _row(*where, result, timing, unstable_step=result.unstable_step, reason=result.reason or None)


def torch_nve_row(system: str, atoms: ase.Atoms, model, *, device: str, backend: str, precision: str, steps: int,
                  dt_fs: float, temperature_K: float = 300.0, seed: int = 0, max_trace_points: int = 400) -> dict:
    """`nve_row` through the torch engine (`lpmace.dynamics.run_dynamics`, `atoms` alone, default skin):
    the same keys, ``engine`` "torch", ``model_ms_per_step`` the model calls' time per step (ms) and
    ``neighbour_list_builds`` the Verlet list's full builds. `model` is used as is (run_dynamics moves it
    to `device`). A blow-up is a row with ``stable`` False, never an exception.
    """
    from lpmace.dynamics import run_dynamics

    where = (system, atoms, "lpmace", backend, precision, steps, dt_fs, temperature_K, max_trace_points)
    try:
        run = run_dynamics(model, [atoms], ensemble="nve", steps=steps, dt_fs=dt_fs, temperature_K=temperature_K,
                           seed=seed, precision=precision, device=device, backend=backend)
    except ValueError as err:
        if _INITIAL_FAILURE not in str(err):
            raise
        reason = str(err)[str(err).index(_INITIAL_FAILURE):]  # without run_dynamics' "system 0, Atoms(...): "
        return _row(*where, None, {"engine": "torch"}, unstable_step=0, reason=reason)
    (result,) = run.systems
    timing = {"engine": "torch", "ms_per_step": _number(run.ms_per_step),
              "model_ms_per_step": _number(run.model_ms_per_step), "neighbour_list_builds": run.neighbour_list_builds}
    return _row(*where, result, timing, unstable_step=result.unstable_step, reason=result.reason or None)


def md_stability(
    model,
    precisions: Sequence[str],
    *,
    device: str,
    systems: Sequence[tuple[str, ase.Atoms]],
    steps: int,
    dt_fs: float,
    backend: str = "reference",
    engines: Sequence[str] = ENGINES,
    temperature_K: float = 300.0,
    seed: int = 0,
    progress: Callable[[str], None] | None = None,
) -> list[dict]:
    """NVE rows of `model` for every system × engine × precision, fp64 first (added if `precisions` lacks it).

    The "ase" engine runs ``lpmace.Calculator(model, device=device, precision=p, backend=backend)``
    (`nve_row`), the "torch" engine `run_dynamics` with the same precision and backend (`torch_nve_row`),
    each on a copy of `model`. Every run uses the same `seed`, so all precisions and engines of a system start
    from identical positions and velocities; ``drift_vs_fp64`` is the row's drift minus the fp64 drift of
    the same system and engine (meV/atom/ps; None for the fp64 row, which is the reference, and where either
    drift is not a number). `progress`, if given, gets one short line per finished run.
    """
    from lpmace.calculator import Calculator

    unknown = [e for e in engines if e not in ENGINES]
    if unknown:
        raise ValueError(f"unknown MD engine(s) {unknown}; known: {ENGINES}")
    order = [REFERENCE, *dict.fromkeys(p for p in precisions if p != REFERENCE)]
    common = {"backend": backend, "steps": steps, "dt_fs": dt_fs, "temperature_K": temperature_K, "seed": seed}
    rows: list[dict] = []
    for system, atoms in systems:
        for engine in engines:
            reference_drift = None
            for precision in order:
                # a copy: the calculator and the engine move the model and set its backend
                if engine == "ase":
                    calculator = Calculator(copy.deepcopy(model), device=device, precision=precision, backend=backend)
                    row = nve_row(system, atoms, calculator, code="lpmace", precision=precision, **common)
                else:
                    row = torch_nve_row(system, atoms, copy.deepcopy(model), device=device, precision=precision,
                                        **common)
                drift = row["drift_mev_per_atom_per_ps"]
                if precision == REFERENCE:
                    reference_drift = drift
                elif drift is not None and reference_drift is not None:
                    row["drift_vs_fp64"] = drift - reference_drift
                rows.append(row)
                if progress is not None:
                    progress(_summary(row))
    return rows


def _row(system, atoms, code, backend, precision, steps, dt_fs, temperature_K, max_trace_points,
         result: MDResult | None, timing: dict, *, unstable_step, reason) -> dict:
    """The row; `timing` holds ``engine`` and whichever of ms_per_step, model_ms_per_step and
    neighbour_list_builds were measured (None for the others)."""
    n_atoms = len(atoms)
    if result is None:
        times, totals = np.zeros(0), np.zeros(0)
        steps_done, drift, fluctuation = 0, None, None
    else:
        keep = _thinned(len(result.times_fs), max_trace_points)
        times, totals = result.times_fs[keep], result.total_eV[keep] * 1000.0 / n_atoms
        steps_done = result.steps_done
        drift, fluctuation = _number(result.drift_meV_per_atom_per_ps), _number(result.fluctuation_meV_per_atom)
    builds = timing.get("neighbour_list_builds")
    return {
        "system": system, "atoms": n_atoms, "engine": timing["engine"], "code": code, "backend": backend,
        "precision": precision, "steps": int(steps), "steps_done": int(steps_done), "dt_fs": float(dt_fs),
        "temperature_K": float(temperature_K), "drift_mev_per_atom_per_ps": drift,
        "fluctuation_mev_per_atom": fluctuation, "drift_vs_fp64": None, "stable": unstable_step is None,
        "unstable_step": None if unstable_step is None else int(unstable_step), "reason": reason,
        "ms_per_step": timing.get("ms_per_step"), "model_ms_per_step": timing.get("model_ms_per_step"),
        "neighbour_list_builds": None if builds is None else int(builds),
        "trace": {"time_fs": [float(t) for t in times], "total_mev_per_atom": [float(e) for e in totals]},
    }


def _thinned(n: int, limit: int) -> np.ndarray:
    """Indices of at most `limit` (>= 2) of `n` samples, evenly spread, first and last included."""
    if n <= limit:
        return np.arange(n)
    return np.unique(np.linspace(0, n - 1, max(limit, 2)).round().astype(np.int64))


def _number(value: float) -> float | None:
    """JSON has no NaN: a quantity that could not be measured is None."""
    return float(value) if math.isfinite(value) else None


def _summary(row: dict) -> str:
    head = f"md {row['system']} {row['engine']} {row['precision']}"
    if not row["stable"]:
        return f"{head}: unstable at step {row['unstable_step']} ({row['reason']})"
    drift = row["drift_mev_per_atom_per_ps"]
    return f"{head}: drift {drift:.3g} meV/atom/ps" if drift is not None else f"{head}: no drift fit"
