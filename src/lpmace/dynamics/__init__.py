"""Molecular dynamics resident on one device, many systems at once (`lpmace md --engine torch`).

    from lpmace.dynamics import run_dynamics
    run = run_dynamics(model, [atoms_a, atoms_b], ensemble="nve", steps=1000, dt_fs=0.5, device="cuda")
    run.systems[0].drift_meV_per_atom_per_ps, run.ms_per_step, run.neighbour_list_builds

state.py (positions, momenta, ... of all systems concatenated; seed rule), verlet.py (NVE),
langevin.py (NVT, BAOAB), potential.py (the model through a Verlet list and CUDA graphs),
samples.py (asynchronous copies to the host), engine.py (`run_dynamics`, per-system blow-ups).
Units are ASE's (eV, Å, amu); times in fs and temperatures in K at `run_dynamics`' interface.
"""

from lpmace.dynamics.engine import DynamicsResult, run_dynamics
from lpmace.dynamics.langevin import Langevin
from lpmace.dynamics.potential import ModelPotential
from lpmace.dynamics.state import State, state_from_atoms
from lpmace.dynamics.verlet import VelocityVerlet

__all__ = ["DynamicsResult", "Langevin", "ModelPotential", "State", "VelocityVerlet", "run_dynamics",
           "state_from_atoms"]
