"""The whole training step as one CUDA graph per batch shape.

A training step (`lpmace.train.step.training_step`: forward, loss, the double backward through the
forces, clipping, a fused Adam that skips itself on the device) launches hundreds of kernels. For the
batches of molecular training (a few hundred atoms) the GPU finishes each kernel before the host has
launched the next, so the step takes the host's time (measured on an H200, `medium`, bf16-mixed: the
GPU busy 7.6 ms of a 40 ms step). `StepGraphs` records the step once per batch shape and then
launches it as one graph:

- batches are padded to bucket sizes (`lpmace.data.padding`): the dummy atoms and edges contribute
  exactly 0 and the dummy structure has no references, so the loss and its gradients are those of
  the unpadded batch, and an epoch of varied molecules needs a few recordings, not one per batch;
- a shape's first batch runs eagerly (compiling, tuning, creating the optimizer's moments), its
  second is recorded and then replayed, later ones are replayed: every batch is stepped once;
- a batch is copied into its shape's static input tensors (from pinned host memory, no wait);
- every step (eager, recorded, replayed) runs on one side stream, the way torch's CUDA-graph notes
  warm up: autograd remembers the stream a parameter's gradient was first accumulated on, and a
  recording whose backward waits on the default stream fails (or, worse, leaves that work out of
  the graph, so a replay would reuse a stale gradient). The caller's stream waits for the step;
- the recordings share one memory pool. Each keeps its outputs (loss, flags, predictions), so no
  other recording reuses their memory; they are overwritten by the recording's next replay, so a
  caller uses them before the next step (the trainer's `EpochTally` stacks them at once).

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
from dataclasses import dataclass
from typing import Callable, Dict, Hashable, Optional, Tuple

import torch

from lpmace.data.graph import Graph
from lpmace.data.padding import pad_graph
from lpmace.train.step import StepResult

__all__ = ["StepGraphs"]

MAX_RECORDINGS = 64  # beyond this many (shape, key) pairs, further shapes run eagerly


@dataclass
class _Recording:
    graph: "torch.cuda.CUDAGraph"
    result: StepResult


def _rows(out: Optional[dict], atoms: int, structures: int) -> Optional[dict]:
    """The real structures' and atoms' rows of a padded step's predictions (views: no kernel)."""
    if out is None:
        return None
    rows = {"energy": structures, "stress": structures}
    return {k: v if v is None or not torch.is_tensor(v) else v[: rows.get(k, atoms)] for k, v in out.items()}


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


class StepGraphs:
    """Training steps replayed from CUDA graphs (see the module docstring).

    Args:
        model: the module whose parameters and buffers the step reads (their addresses are watched).
        optimizer: the step's optimizer; its groups are made `capturable` (same update, lr read on
            the device side of a recording).
        r_max: the model's cutoff (the dummy atoms are placed beyond it).
        device: the CUDA device the model is on.
    """

    def __init__(self, model: torch.nn.Module, optimizer: torch.optim.Optimizer, r_max: float, device):
        self.model, self.optimizer, self.r_max, self.device = model, optimizer, float(r_max), torch.device(device)
        for group in optimizer.param_groups:
            group["capturable"] = True
        self.pool = torch.cuda.graph_pool_handle()
        self.stream = torch.cuda.Stream(self.device)
        self.recordings: Dict[Hashable, _Recording] = {}
        self.warm: set = set()  # (shape, key) pairs that ran eagerly once
        self.inputs: Dict[tuple, Graph] = {}  # shape -> static padded batch on the device
        self.fixed = None
        self.counts = {"eager": 0, "recorded": 0, "replayed": 0}

    def reset(self) -> None:
        """Drop the recordings (after the optimizer's state tensors were replaced). Their pool goes with
        the last of them: later recordings get a new one."""
        self.recordings.clear()
        self.pool = torch.cuda.graph_pool_handle()

    def _fixed(self) -> tuple:
        """What a recording fixes outside the batch: the optimizer's hyperparameters and the addresses
        of the weights, buffers and optimizer state."""
        state = (v for st in self.optimizer.state.values() for v in st.values() if torch.is_tensor(v))
        addresses = tuple(t.data_ptr() for t in itertools.chain(self.model.parameters(), self.model.buffers(), state))
        return self._hyperparameters(), addresses

    def _hyperparameters(self) -> tuple:
        return tuple(tuple(sorted((k, v) for k, v in group.items()
                                  if k != "params" and isinstance(v, (int, float, bool, tuple, str, type(None)))))
                     for group in self.optimizer.param_groups)

    def _static(self, padded: Graph) -> Tuple[tuple, Graph]:
        """The shape's static batch on the device, holding `padded`'s values."""
        shape = tuple(None if v is None else (tuple(v.shape), v.dtype)
                      for v in (getattr(padded, f.name) for f in dataclasses.fields(padded)))
        static = self.inputs.get(shape)
        if static is None:
            static = self.inputs[shape] = padded.to(self.device, non_blocking=True)
            return shape, static
        for f in dataclasses.fields(padded):
            value = getattr(padded, f.name)
            if value is not None:
                if value.device.type == "cpu":
                    value = value.pin_memory()
                getattr(static, f.name).copy_(value, non_blocking=True)
        return shape, static

    def step(self, graph: Graph, key: Hashable, run: Callable[[Graph], StepResult]) -> Tuple[StepResult, Graph]:
        """One training step on `graph` (host or device): `run(batch)` is the step (`training_step`
        with everything but the batch bound), on the padded batch. Returns the step's result, its
        predictions cut to the real rows, and the real part of the batch on the device (views)."""
        atoms, structures = graph.num_atoms, graph.num_graphs
        padded = pad_graph(graph, self.r_max)
        fixed = self._fixed()
        if fixed != self.fixed:
            if self.fixed is not None:
                self.reset()
            self.fixed = fixed
        caller = torch.cuda.current_stream(self.device)
        self.stream.wait_stream(caller)
        with torch.cuda.stream(self.stream):
            shape, static = self._static(padded)
            which = (shape, key)
            recording = self.recordings.get(which)
            if recording is None and (which not in self.warm or len(self.recordings) >= MAX_RECORDINGS):
                self.warm.add(which)
                self.counts["eager"] += 1
                result = run(static)
            else:
                if recording is None:
                    cuda_graph = torch.cuda.CUDAGraph()
                    # thread_local: a pinned-memory allocation in another thread does not void it
                    with torch.cuda.graph(cuda_graph, pool=self.pool, stream=self.stream,
                                          capture_error_mode="thread_local"):
                        recorded = run(static)
                    recording = self.recordings[which] = _Recording(cuda_graph, recorded)
                    self.counts["recorded"] += 1
                recording.graph.replay()
                self.counts["replayed"] += 1
                result = recording.result
        caller.wait_stream(self.stream)
        return dataclasses.replace(result, out=_rows(result.out, atoms, structures)), \
            _real_part(static, atoms, structures)
