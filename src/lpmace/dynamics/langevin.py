"""Langevin dynamics (NVT) by BAOAB splitting (Leimkuhler & Matthews, Appl. Math. Res. Express 2013):

    B  p ← p + (dt/2) F          A  x ← x + (dt/2) p/m
    O  p ← c p + sqrt((1 − c²) m kB T) ξ,   c = exp(−γ dt),  ξ ~ N(0, 1)
    A  x ← x + (dt/2) p/m        (new forces)     B  p ← p + (dt/2) F

with a target T and friction γ per system. As in `lpmace.md.run_md`'s NVT (ASE's Langevin with
FixCom), the centre-of-mass momentum of a system without fixed atoms is removed after the noise;
a system with FixAtoms is anchored by them instead. The noise comes from one torch Generator seeded
with the run's seed: a seed reproduces a run on one device (not across devices, nor a system's
noise when it is batched with others).
"""

from __future__ import annotations

import torch
from ase import units

from lpmace.dynamics.state import State
from lpmace.dynamics.verlet import Potential, drift, kick

__all__ = ["Langevin"]


class Langevin:
    """BAOAB integrator; dt in ASE time units, the state's ``temperature_K`` and ``friction`` (1/ASE time)."""

    def __init__(self, dt: float, seed: int, device) -> None:
        self.dt = float(dt)
        self.generator = torch.Generator(device=device)
        self.generator.manual_seed(int(seed))

    def thermostat(self, state: State, frozen: torch.Tensor) -> None:
        """The O step, then the centre-of-mass momentum of unanchored systems removed. frozen: [N] bool."""
        p = state.momenta
        c = torch.exp(-state.friction * self.dt)[state.batch].to(p.dtype)
        kT = (units.kB * state.temperature_K)[state.batch].to(p.dtype)
        noise = torch.randn(p.shape, generator=self.generator, dtype=p.dtype, device=p.device)
        scale = torch.sqrt((1 - c * c) * state.masses * kT)
        p = torch.where(frozen[:, None], p, c[:, None] * p + scale[:, None] * noise)
        systems = torch.zeros(state.num_systems, 3, dtype=p.dtype, device=p.device)
        total_p = systems.index_add(0, state.batch, p)
        total_m = torch.zeros(state.num_systems, dtype=p.dtype, device=p.device).index_add(0, state.batch, state.masses)
        centre_v = torch.where(state.anchored[:, None], 0.0, total_p / total_m[:, None])
        state.momenta = torch.where(frozen[:, None], p, p - state.masses[:, None] * centre_v[state.batch])

    def step(self, state: State, potential: Potential, frozen: torch.Tensor) -> None:
        """One BAOAB step; `potential(state)` sets ``state.forces`` and ``state.potential_eV``."""
        kick(state, 0.5 * self.dt, frozen)
        drift(state, 0.5 * self.dt, frozen)
        self.thermostat(state, frozen)
        drift(state, 0.5 * self.dt, frozen)
        potential(state)
        kick(state, 0.5 * self.dt, frozen)
