"""Velocity Verlet (NVE) for a `State`, step for step as ASE's `VelocityVerlet`.

    p ← p + (dt/2) F(x);   x ← x + dt p/m;   p ← p + (dt/2) F(x)

Atoms that do not move (`frozen`: held by FixAtoms, or of a system stopped as unstable) keep their
positions, and FixAtoms atoms zero momentum. dt is in ASE time units (``dt_fs * ase.units.fs``).
"""

from __future__ import annotations

from typing import Callable

import torch

from lpmace.dynamics.state import State

__all__ = ["Potential", "VelocityVerlet", "drift", "kick"]

# state → (potential energy [S] float64 eV, forces [N, 3] eV/Å); it also stores both on the state.
Potential = Callable[[State], None]


def kick(state: State, dt: float, frozen: torch.Tensor) -> None:
    """p ← p + dt F for the atoms that move; fixed atoms keep zero momentum. frozen: [N] bool."""
    moved = state.momenta + dt * state.forces.to(state.momenta.dtype)
    state.momenta = torch.where(frozen[:, None], torch.where(state.fixed[:, None], 0.0, state.momenta), moved)


def drift(state: State, dt: float, frozen: torch.Tensor) -> None:
    """x ← x + dt p/m for the atoms that move. frozen: [N] bool."""
    moved = state.positions + dt * state.momenta / state.masses[:, None]
    state.positions = torch.where(frozen[:, None], state.positions, moved)


class VelocityVerlet:
    """NVE integrator; `step` advances every system by `dt` (ASE time units)."""

    def __init__(self, dt: float) -> None:
        self.dt = float(dt)

    def step(self, state: State, potential: Potential, frozen: torch.Tensor) -> None:
        """One step; `potential(state)` sets ``state.forces`` and ``state.potential_eV``. frozen: [N] bool."""
        kick(state, 0.5 * self.dt, frozen)
        drift(state, self.dt, frozen)
        potential(state)
        kick(state, 0.5 * self.dt, frozen)
