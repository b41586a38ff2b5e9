"""Velocity Verlet (NVE) for a `State`, step for step as ASE's `VelocityVerlet`.

    p ← p + (dt/2) F(x);   x ← x + dt p/m;   p ← p + (dt/2) F(x)

Atoms that do not move (`frozen`: held by FixAtoms, or of a system stopped as unstable) keep their
positions and momenta; FixAtoms atoms start with zero momentum (`lpmace.dynamics.state`), so they keep
it. dt is in ASE time units (``dt_fs * ase.units.fs``). Each update is two ops (a fused multiply-add
and a `where` that holds frozen atoms, whose momenta may be NaN after a blow-up), so a step dispatches
few kernels: with tiny systems the host's launches, not the arithmetic, set the step time.
"""

from __future__ import annotations

from typing import Callable

import torch

from lpmace.dynamics.state import State

__all__ = ["Potential", "VelocityVerlet", "drift", "drifted", "kick", "kicked"]

# state → (potential energy [S] float64 eV, forces [N, 3] eV/Å); it also stores both on the state.
Potential = Callable[[State], None]


def kicked(momenta: torch.Tensor, forces: torch.Tensor, dt: float, frozen: torch.Tensor) -> torch.Tensor:
    """p + dt F for the atoms that move, p for the frozen ones. momenta, forces: [N, 3]; frozen: [N] bool."""
    return torch.where(frozen[:, None], momenta, torch.add(momenta, forces.to(momenta.dtype), alpha=dt))


def drifted(state: State, momenta: torch.Tensor, dt: float, frozen: torch.Tensor) -> torch.Tensor:
    """x + dt p/m for the atoms that move, x for the frozen ones ([N, 3], Å)."""
    moved = torch.addcmul(state.positions, momenta, state.inverse_masses, value=dt)
    return torch.where(frozen[:, None], state.positions, moved)


def kick(state: State, dt: float, frozen: torch.Tensor) -> None:
    """p ← p + dt F for the atoms that move. frozen: [N] bool."""
    state.momenta = kicked(state.momenta, state.forces, dt, frozen)


def drift(state: State, dt: float, frozen: torch.Tensor) -> None:
    """x ← x + dt p/m for the atoms that move. frozen: [N] bool."""
    state.positions = drifted(state, state.momenta, dt, frozen)


class VelocityVerlet:
    """NVE integrator; `step` advances every system by `dt` (ASE time units)."""

    def __init__(self, dt: float) -> None:
        self.dt = float(dt)
        self._planned = None  # (inputs, momenta after the first kick, positions after the drift)

    def step(self, state: State, potential: Potential, frozen: torch.Tensor) -> None:
        """One step; `potential(state)` sets ``state.forces`` and ``state.potential_eV``. frozen: [N] bool.
        The first kick and the drift are taken from `next_positions` when it was asked with these very
        tensors (unchanged since): the same ops on the same inputs, not dispatched twice."""
        planned, self._planned = self._planned, None
        if planned is not None and _same(planned[0], _inputs(state, frozen)):
            state.momenta, state.positions = planned[1], planned[2]
        else:
            kick(state, 0.5 * self.dt, frozen)
            drift(state, self.dt, frozen)
        potential(state)
        kick(state, 0.5 * self.dt, frozen)

    def next_positions(self, state: State, frozen: torch.Tensor) -> torch.Tensor:
        """[N, 3] the positions at which the next `step` (with the same `frozen`) will call the potential,
        by the same ops, so equal to the bit: a Verlet list can decide its rebuild a step ahead."""
        momenta = kicked(state.momenta, state.forces, 0.5 * self.dt, frozen)
        positions = drifted(state, momenta, self.dt, frozen)
        self._planned = (_inputs(state, frozen), momenta, positions)
        return positions


def _inputs(state: State, frozen: torch.Tensor) -> tuple:
    """The tensors a step's first kick and drift read, each with its version (an in-place change shows)."""
    return tuple((t, t._version) for t in (state.momenta, state.forces, state.positions, state.inverse_masses, frozen))


def _same(a: tuple, b: tuple) -> bool:
    return all(x[0] is y[0] and x[1] == y[1] for x, y in zip(a, b, strict=True))
