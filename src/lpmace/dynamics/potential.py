"""The model (or a committee of models) as an MD potential: energies per system and forces of a
`State`, on its device.

Each call takes the pairs from the Verlet list (`lpmace.dynamics.neighbours.VerletList`, cutoff the
model's r_max), makes a `lpmace.data.graph.Graph` of the state's tensors (no host copy) and calls the
model under its precision policy and backend as `lpmace.Calculator` does: on CUDA replayed from CUDA
graphs (`lpmace.cuda_graphs.ForwardGraphs`), elsewhere the plain call. The geometry goes to the model
in the state's dtype (float64 or float32); the model casts it to its policy's geometry dtype, which
is never below float32.

A committee (`lpmace.Committee`, or a list of models sharing elements and r_max) is called member
by member on the same graph; the state gets the members' mean energy and forces (the force field)
and their spread, `forces_std` [N] and `energy_std_eV` [S], defined as in `lpmace.committee`.

The time of the model calls is measured without host syncs: CUDA events around each call, read
once they have completed (`model_ms`) and then recorded again by a later call (creating two events per
call costs a small system's step host time); on the CPU the call's wall time.
"""

from __future__ import annotations

import collections
import functools
import time

import torch

from lpmace.data.graph import Graph
from lpmace.dynamics.neighbours import VerletList
from lpmace.dynamics.state import State

__all__ = ["ModelPotential"]


class ModelPotential:
    """`potential(state)` sets ``state.potential_eV`` ([S] float64, eV) and ``state.forces`` ([N, 3] in
    the state's dtype, eV/Å); for a committee also ``state.forces_std`` and ``state.energy_std_eV``.

    Args:
        model: a `lpmace.model.MACE`, or a committee: a `lpmace.Committee` or a list of at least two
            MACE models (moved to `device`, set to eval).
        device: torch device of the state.
        precision: preset name, YAML path or PrecisionPolicy (None: each model's default, or the
            policies a `lpmace.Committee` was made with).
        backend: `lpmace.backends` name ("auto" resolved on `device`).
        skin: Verlet skin, Å.
        exact_cutoff_pairs: hand the model only pairs within its r_max (True) or all pairs the Verlet list
            holds, up to r_max + skin (False: same energies and forces, fewer ops and syncs per step;
            `lpmace.dynamics.neighbours`).
        cuda_graphs: replay from CUDA graphs (None: on CUDA devices).
    """

    def __init__(self, model, *, device, precision=None, backend: str = "auto", skin: float = 1.0,
                 exact_cutoff_pairs: bool = True, cuda_graphs: bool | None = None) -> None:
        from lpmace.backends import resolve, use
        from lpmace.precision import resolve_policy

        self.device = torch.device(device)
        models, policies = committee_members(model, self.device)
        self.models = [m.to(self.device).eval() for m in models]
        self.model = self.models[0]
        if precision is not None or policies is None:
            policies = [resolve_policy(precision, default=m.default_precision) for m in self.models]
        self.policies = policies
        self.policy = policies[0]
        self.backend = resolve(backend, self.device)
        self.runs = [use(m, self.backend, self.device) for m in self.models]
        if self.device.type == "cuda" if cuda_graphs is None else cuda_graphs:
            from lpmace.cuda_graphs import ForwardGraphs

            self.runs = [ForwardGraphs(m, run, self.device) for m, run in zip(self.models, self.runs)]
        self.run = self.runs[0]
        self.neighbours = VerletList(float(self.model.config.r_max), skin, exact_cutoff_pairs)
        self.calls = 0
        self._model_ms = 0.0
        self._events: collections.deque = collections.deque()  # (start, end) of calls not yet read
        self._spare: list = []  # pairs read, to record again
        self.timed_by_events = self.device.type == "cuda"
        self._new_event = functools.partial(torch.cuda.Event, enable_timing=True)

    def graph(self, state: State) -> Graph:
        """The state's graph within the model's cutoff (tensors shared with the state)."""
        edge_index, unit_shifts = self.neighbours(state.positions, state.cell, state.pbc, state.batch, state.ptr)
        return Graph(positions=state.positions, numbers=state.numbers, edge_index=edge_index, unit_shifts=unit_shifts,
                     cell=state.cell, pbc=state.pbc, batch=state.batch, ptr=state.ptr)

    def __call__(self, state: State) -> None:
        graph = self.graph(state)
        timed = self.timed_by_events
        if timed:
            start, end = self._timing_events()
            start.record()
        else:
            began = time.perf_counter()
        with torch.enable_grad():  # forces are derivatives, even if the caller is in no_grad
            if len(self.runs) == 1:
                outs = [self.run(graph, precision=self.policy, compute_forces=True, compute_stress=False,
                                 training=False)]
            else:  # each member's values copied before the next call (replayed outputs may be reused)
                outs = [_copied(run(graph, precision=policy, compute_forces=True, compute_stress=False, training=False))
                        for run, policy in zip(self.runs, self.policies)]
        if timed:
            end.record()
            self._events.append((start, end))
        else:
            self._model_ms += 1e3 * (time.perf_counter() - began)
        self.calls += 1
        if len(outs) == 1:
            state.potential_eV = outs[0]["energy"].detach().to(torch.float64)
            state.forces = outs[0]["forces"].detach().to(state.positions.dtype)
            return
        from lpmace.committee import spread

        energy, forces, state.energy_std_eV, state.forces_std = spread(torch.stack([e for e, _ in outs]),
                                                                        torch.stack([f for _, f in outs]))
        state.potential_eV, state.forces = energy, forces.to(state.positions.dtype)

    def _timing_events(self) -> tuple:
        """A (start, end) pair to record: one read already, else a new one."""
        if not self._spare:
            self.model_ms()
        return self._spare.pop() if self._spare else (self._new_event(), self._new_event())

    def model_ms(self, wait: bool = False) -> float:
        """Milliseconds spent in model calls so far: the calls whose end the device has reached
        (all of them, after a sync, with `wait`)."""
        if wait and self._events:
            self._events[-1][1].synchronize()
        while self._events and self._events[0][1].query():
            start, end = self._events.popleft()
            self._model_ms += start.elapsed_time(end)
            self._spare.append((start, end))
        return self._model_ms


def _copied(out: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """(energy [S], forces [N, 3]) of one model call as new float64 tensors."""
    return (out["energy"].detach().to(torch.float64, copy=True), out["forces"].detach().to(torch.float64, copy=True))


def committee_members(model, device=None) -> tuple[list, list | None]:
    """(models, their policies or None) of `model`: one MACE, a `lpmace.Committee` (its members and the
    policies it resolved; it must be on `device` when one is given: its models are not moved behind its
    back) or a list of MACE models or model files (`lpmace.committee.load_members`: at least 2, sharing
    elements and r_max; InputError otherwise)."""
    from lpmace.committee import load_members
    from lpmace.errors import InputError

    if hasattr(model, "models") and hasattr(model, "precisions"):  # lpmace.Committee
        if device is not None and torch.device(model.device) != torch.device(device):
            raise InputError(f"the Committee is on {model.device} but the run is on {device}: make the "
                             "Committee with device= the run's device")
        return list(model.models), list(model.precisions)
    if not isinstance(model, (list, tuple)):
        return [model], None
    return load_members(model), None
