"""The whole training step as one CUDA graph per batch shape.

A training step (`lpmace.train.step.training_step`: forward, loss, the double backward through the
forces, clipping, a fused Adam that skips itself on the device) launches hundreds of kernels. For the
batches of molecular training (a few hundred atoms) the GPU finishes each kernel before the host has
launched the next, so the step takes the host's time (measured on an H200, `medium`, bf16-mixed: the
GPU busy 7.6 ms of a 40 ms step). `StepGraphs` records the step once per batch shape and then
launches it as one graph, the way `lpmace.cuda_graphs.ShapeGraphs` says (padded batches, eager
first call, side stream, one pool):

- every batch is stepped once (eagerly, recorded or replayed); the dummy structure of a padded batch
  has no references, so the loss and its gradients are those of the unpadded batch;
- a recording keeps its outputs (loss, flags, predictions), so no other recording reuses their
  memory; they are overwritten by the recording's next replay, so a caller uses them before the
  next step (the trainer's `EpochTally` stacks them at once).

What a recording fixes besides the shapes: the step's Python-side values (loss weights, precision
policy, compute_stress, clipping), which the caller passes as `key`; the optimizer's hyperparameters,
read from its groups at every step (a change, e.g. the plateau scheduler lowering lr, records again);
and the addresses of the model's parameters and buffers and of the optimizer's state: the step
updates them in place, but `Optimizer.load_state_dict` (a rollback) replaces the moments, and a cast
or a `load_state_dict(assign=True)` replaces weights. Every step compares those addresses with the
recordings' and records again when one moved.
"""

from __future__ import annotations

import dataclasses
import itertools
from typing import Callable, Hashable, Tuple

import torch

from lpmace.cuda_graphs import ShapeGraphs, real_rows
from lpmace.data.graph import Graph
from lpmace.data.padding import pad_graph
from lpmace.train.step import StepResult

__all__ = ["StepGraphs"]


def _real_part(padded: Graph, atoms: int, structures: int) -> Graph:
    """The real atoms and structures of a padded graph (views). Its edges are all of the padded
    ones (the extra ones join dummy atoms)."""
    view = {f.name: getattr(padded, f.name) for f in dataclasses.fields(padded)}
    for name in ("positions", "numbers", "batch", "forces"):
        if view[name] is not None:
            view[name] = view[name][:atoms]
    for name in ("cell", "pbc", "energy", "stress", "has_energy", "has_forces", "has_stress"):
        if view[name] is not None:
            view[name] = view[name][:structures]
    view["ptr"] = padded.ptr[: structures + 1]
    return Graph(**view)


class StepGraphs(ShapeGraphs):
    """Training steps replayed from CUDA graphs (see the module docstring).

    Args:
        model: the module whose parameters and buffers the step reads (their addresses are watched).
        optimizer: the step's optimizer; its groups are made `capturable` (same update, lr read on
            the device side of a recording).
        r_max: the model's cutoff (the dummy atoms are placed beyond it).
        device: the CUDA device the model is on.
    """

    def __init__(self, model: torch.nn.Module, optimizer: torch.optim.Optimizer, r_max: float, device):
        super().__init__(device)
        self.model, self.optimizer, self.r_max = model, optimizer, float(r_max)
        for group in optimizer.param_groups:
            group["capturable"] = True

    def _fixed(self) -> tuple:
        """What a recording fixes outside the batch: the optimizer's hyperparameters and the addresses
        of the weights, buffers and optimizer state."""
        _, tables = self._modules()  # the model's modules, walked again only when one changed
        weights = (t for table in tables for t in table.values() if t is not None)
        state = (v for st in self.optimizer.state.values() for v in st.values() if torch.is_tensor(v))
        addresses = tuple(t.data_ptr() for t in itertools.chain(weights, state))
        return self._hyperparameters(), addresses

    def _hyperparameters(self) -> tuple:
        return tuple(tuple(sorted((k, v) for k, v in group.items()
                                  if k != "params" and isinstance(v, (int, float, bool, tuple, str, type(None)))))
                     for group in self.optimizer.param_groups)

    def step(self, graph: Graph, key: Hashable, run: Callable[[Graph], StepResult]) -> Tuple[StepResult, Graph]:
        """One training step on `graph` (host or device): `run(batch)` is the step (`training_step`
        with everything but the batch bound), on the padded batch. Returns the step's result, its
        predictions cut to the real rows, and the real part of the batch on the device (views)."""
        atoms, structures = graph.num_atoms, graph.num_graphs
        result, static = self.call(pad_graph(graph, self.r_max), key, run)
        return dataclasses.replace(result, out=real_rows(result.out, atoms, structures)), \
            _real_part(static, atoms, structures)
