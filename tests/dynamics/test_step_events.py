"""The CUDA events of an MD step (model timing, the status copy's end) are recorded again once read, not
created anew at every step: checked on the CPU with stand-in events that finish one step late."""

import numpy as np
import torch
from ase.build import molecule

from lpmace.dynamics import ModelPotential
from lpmace.dynamics.samples import Layout, Transfers
from lpmace.dynamics.state import state_from_atoms


class _Device:
    """Stand-in events: each finishes when the device has gone `lag` records past it; elapsed 2 ms."""

    def __init__(self, lag: int) -> None:
        self.lag, self.records, self.created = lag, 0, []

    def event(self, **_):
        device = self

        class Event:
            def __init__(self):
                self.at, self.uses = None, 0
                device.created.append(self)

            def record(self):
                device.records += 1
                self.at, self.uses = device.records, self.uses + 1

            def query(self):
                return self.at is not None and device.records - self.at >= device.lag

            def synchronize(self):
                device.records += device.lag

            def elapsed_time(self, end):
                assert end.at > self.at
                return 2.0
        return Event()


def test_model_timing_events_are_recorded_again_once_read():
    from tiny_models import tiny_model

    state = state_from_atoms([molecule("C6H6")], temperature_K=300.0, friction_per_t=0.0, seed=0, hold_centre=False,
                             device="cpu")
    potential = ModelPotential(tiny_model(max_ell=1, max_L=0), device="cpu")
    device = _Device(lag=4)  # an end event is done two calls later
    potential.timed_by_events, potential._new_event = True, device.event
    for _ in range(12):
        potential(state)
    assert potential.model_ms(wait=True) == 2.0 * 12  # every call timed once
    assert len(device.created) <= 2 * 3 and min(e.uses for e in device.created) >= 2


def test_status_copy_events_are_recorded_again_once_taken():
    transfers = Transfers("cpu")
    device = _Device(lag=1)
    transfers.marked_by_events, transfers._new_event = True, device.event
    layout = Layout((0,), (0, 12), np.array([33.0]))
    for step in range(10):
        transfers.put(step, layout, torch.full((3, 1), float(step)), None)
        if len(transfers.queue) > 1:
            assert transfers.take().status[0, 0] == step - 1
    assert len(device.created) == 2 and all(e.uses >= 4 for e in device.created)
