"""Per-step status and samples copied from the device to the host without stalling the step.

After each step the engine queues the systems' status (and, every `interval` steps, a sample:
positions, momenta, forces, energies) as non-blocking copies into pinned host buffers and reads
them one step later, when the device has long finished them: the step itself never waits for the
host. Two buffer sets alternate, since a copy is read while the next one is in flight.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import torch

__all__ = ["Copy", "Layout", "Transfers", "failure_reason"]

# Codes of the status rows; 0: fine.
ENERGY_NOT_FINITE, FORCES_NOT_FINITE, ENERGY_MOVED = 1, 2, 3


def failure_reason(code: int, change: float, limit: float) -> str:
    """`lpmace.md.run_md`'s words for a failure `code` (change: |ΔE_total| in eV/atom)."""
    if code == ENERGY_NOT_FINITE:
        return "energy is not finite"
    if code == FORCES_NOT_FINITE:
        return "forces or positions are not finite"
    return f"total energy moved {change:.3g} eV/atom from its start (limit {limit:g})"


@dataclasses.dataclass(frozen=True)
class Layout:
    """Which systems a state holds: global ids [S] in row order, atom offsets [S + 1], degrees of freedom [S]."""

    ids: tuple[int, ...]
    ptr: tuple[int, ...]
    dof: np.ndarray


@dataclasses.dataclass
class Copy:
    """One step's copy: status [3, S] float64 rows (0 for a system alive, inf for one that failed at this
    step or before; the failure code; its |ΔE_total| in eV);
    with a sample, positions/momenta/forces [N, 3] and potential/kinetic [S] (host tensors)."""

    step: int
    layout: Layout
    status: torch.Tensor
    sample: dict[str, torch.Tensor] | None
    event: object = None

    def wait(self) -> None:
        if self.event is not None:
            self.event.synchronize()


class Transfers:
    """Queues device→host copies into reused (pinned, on CUDA) buffers; `take` returns the oldest
    queued copy once it is on the host."""

    def __init__(self, device) -> None:
        self.device = torch.device(device)
        self.cuda = self.device.type == "cuda"
        self.queue: list[Copy] = []
        self._buffers: list[dict[str, torch.Tensor]] = [{}, {}]
        self._turn = 0
        self._spare_events: list = []  # events of copies taken (waited for), to record again
        self.marked_by_events = self.cuda  # a copy's end marked by an event (the host waits for it in `take`)
        self._new_event = torch.cuda.Event

    def _into(self, buffers: dict, name: str, value: torch.Tensor) -> torch.Tensor:
        held = buffers.get(name)
        if held is None or held.shape != value.shape or held.dtype != value.dtype:
            held = buffers[name] = torch.empty(value.shape, dtype=value.dtype, pin_memory=self.cuda)
        return held.copy_(value.detach(), non_blocking=self.cuda)

    def put(self, step: int, layout: Layout, status: torch.Tensor, sample: dict[str, torch.Tensor] | None) -> None:
        """Queue `status` ([3, S]) and the optional `sample` tensors of `step`."""
        buffers = self._buffers[self._turn]
        self._turn ^= 1
        host_status = self._into(buffers, "status", status)
        host_sample = None if sample is None else {k: self._into(buffers, k, v) for k, v in sample.items()}
        event = None
        if self.marked_by_events:
            event = self._spare_events.pop() if self._spare_events else self._new_event()
            event.record()
        self.queue.append(Copy(step, layout, host_status, host_sample, event))

    def take(self) -> Copy:
        copy = self.queue.pop(0)
        copy.wait()
        if copy.event is not None:
            self._spare_events.append(copy.event)
            copy.event = None
        return copy
