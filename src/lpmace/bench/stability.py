"""NVE stability per precision: total-energy drift and fluctuation of one model, blow-ups reported.

Velocity Verlet conserves the total energy up to an O(dt²) fluctuation only if the forces are the
exact gradient of the energy. Low-precision forces are not, and the error shows up as a drift of
the total energy (a linear trend, meV/atom/ps) or, worse, as a blow-up. Every precision of a system
starts from the same positions and the same Maxwell-Boltzmann velocities (same `seed`), and fp64 is
always run first as the reference: ``drift_vs_fp64`` is the drift a precision adds to fp64's. The
fp64 row is the reference itself, so its ``drift_vs_fp64`` is null (fp64 minus fp64 is 0 by
construction: it would measure nothing); its own drift is its ``drift_mev_per_atom_per_ps``.

The integrator, the drift fit and the blow-up detection are `lpmace.md.run_md`'s; this module only
turns its `MDResult` into a ``md`` row of results.json (schema in `lpmace.bench`).

Units: fs, K, meV/atom, meV/atom/ps, s.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Sequence

import ase
import numpy as np

from lpmace.md import MDResult, run_md

__all__ = ["md_stability", "nve_row"]

REFERENCE = "fp64"
# run_md raises this (a ValueError) when step 0 already has non-finite energy or forces.
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
    """One NVE run of `steps` × `dt_fs` fs from a copy of `atoms`, as a ``md`` row of results.json.

    Velocities are drawn at `temperature_K` (K) with `seed`. The row holds the least-squares drift
    of the total energy (meV/atom/ps), its standard deviation (``fluctuation_mev_per_atom``, meV/atom),
    the wall time per step (s) and a trace of the total energy per atom (meV/atom, absolute, against
    ``time_fs``) thinned to at most `max_trace_points` samples (first and last kept). The drift fit uses
    every step. ``drift_vs_fp64`` is None here (`md_stability` fills it).

    A blow-up (non-finite energy, forces or positions, or the total energy moving more than
    `lpmace.md.MAX_ENERGY_CHANGE_PER_ATOM` eV/atom) is a row with ``stable`` False, the step and the
    reason, never an exception; the numbers then describe the steps before it (None where there are
    too few samples to fit).
    """
    try:
        result = run_md(atoms.copy(), calculator, ensemble="nve", steps=steps, dt_fs=dt_fs,
                        temperature_K=temperature_K, seed=seed)
    except ValueError as err:
        if not str(err).startswith(_INITIAL_FAILURE):
            raise
        return _row(system, atoms, code, backend, precision, steps, dt_fs, temperature_K,
                    None, max_trace_points, unstable_step=0, reason=str(err))
    return _row(system, atoms, code, backend, precision, steps, dt_fs, temperature_K, result, max_trace_points,
                unstable_step=result.unstable_step, reason=result.reason or None)


def md_stability(
    model,
    precisions: Sequence[str],
    *,
    device: str,
    systems: Sequence[tuple[str, ase.Atoms]],
    steps: int,
    dt_fs: float,
    backend: str = "reference",
    temperature_K: float = 300.0,
    seed: int = 0,
    progress: Callable[[str], None] | None = None,
) -> list[dict]:
    """NVE rows of `model` for every system × precision, fp64 first (added if `precisions` lacks it).

    Each run uses ``lpmace.Calculator(model, device=device, precision=p)`` and the same `seed`, so all
    precisions of a system start from identical positions and velocities; ``drift_vs_fp64`` is the
    row's drift minus the fp64 drift of the same system (meV/atom/ps; None for the fp64 row, which is
    the reference, and where either drift is not a number). `progress`, if given, gets one short line per finished run.
    """
    from lpmace.calculator import Calculator

    order = [REFERENCE, *dict.fromkeys(p for p in precisions if p != REFERENCE)]
    rows: list[dict] = []
    for system, atoms in systems:
        reference_drift = None
        for precision in order:
            # a copy: the calculator moves the model and sets its backend
            calculator = Calculator(copy.deepcopy(model), device=device, precision=precision, backend=backend)
            row = nve_row(system, atoms, calculator, code="lpmace", backend=backend, precision=precision,
                          steps=steps, dt_fs=dt_fs, temperature_K=temperature_K, seed=seed)
            drift = row["drift_mev_per_atom_per_ps"]
            if precision == REFERENCE:
                reference_drift = drift
            elif drift is not None and reference_drift is not None:
                row["drift_vs_fp64"] = drift - reference_drift
            rows.append(row)
            if progress is not None:
                progress(_summary(row))
    return rows


def _row(system, atoms, code, backend, precision, steps, dt_fs, temperature_K, result: MDResult | None,
         max_trace_points, *, unstable_step, reason) -> dict:
    n_atoms = len(atoms)
    if result is None:
        times, totals = np.zeros(0), np.zeros(0)
        steps_done, drift, fluctuation, per_step = 0, None, None, None
    else:
        keep = _thinned(len(result.times_fs), max_trace_points)
        times, totals = result.times_fs[keep], result.total_eV[keep] * 1000.0 / n_atoms
        steps_done = result.steps_done
        drift, per_step = _number(result.drift_meV_per_atom_per_ps), _number(result.wall_s_per_step)
        fluctuation = _number(result.fluctuation_meV_per_atom)
    return {
        "system": system, "atoms": n_atoms, "code": code, "backend": backend, "precision": precision,
        "steps": int(steps), "steps_done": int(steps_done), "dt_fs": float(dt_fs),
        "temperature_K": float(temperature_K), "drift_mev_per_atom_per_ps": drift,
        "fluctuation_mev_per_atom": fluctuation, "drift_vs_fp64": None, "stable": unstable_step is None,
        "unstable_step": None if unstable_step is None else int(unstable_step), "reason": reason,
        "wall_s_per_step": per_step,
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
    head = f"md {row['system']} {row['precision']}"
    if not row["stable"]:
        return f"{head}: unstable at step {row['unstable_step']} ({row['reason']})"
    drift = row["drift_mev_per_atom_per_ps"]
    return f"{head}: drift {drift:.3g} meV/atom/ps" if drift is not None else f"{head}: no drift fit"
