"""Model calls replayed from CUDA graphs, one recording per padded batch shape.

A MACE call launches a few hundred kernels. When the GPU finishes each of them before the host has
launched the next, the call takes the host's time, not the GPU's. Measured on an H200 (session 30,
`medium`, W2 box of 4,096 atoms, compiled backend): the GPU is busy 8.1 ms of a 12.5 ms bf16-mixed
inference call and 12.6 ms of a 14.5 ms fp32 one, and the host's share varies from process to
process. A CUDA graph launches the recorded kernels in one call. `ShapeGraphs` holds what every
caller of that shares:

- batches are padded to bucket sizes (`lpmace.data.padding`: the dummy atoms and edges contribute
  exactly 0), so a molecular-dynamics run or an epoch of varied molecules needs a few recordings,
  not one per batch (8 sizes per octave for training, 32 for inference);
- a shape's first call runs eagerly (compiling, tuning, allocating), its second is recorded and then
  replayed, later ones are replayed;
- a batch is copied into its shape's static input tensors (from pinned host memory, no wait);
  `ForwardGraphs` copies only the positions when everything else is the tensors of its last call,
  unchanged (MD between neighbour-list builds): no padding ops, one copy;
- every call (eager, recorded, replayed) runs on one side stream, as torch's CUDA-graph notes warm up:
  autograd remembers the stream a gradient was first accumulated on, and a recording whose backward
  waits on the default stream fails. The caller's stream waits for the call;
- the recordings share one memory pool; what a recording returns is overwritten by its next replay;
- a recording reads the weights at the addresses it was recorded with: a subclass says what else a
  recording fixes (`_fixed`), and a change records again.

`ForwardGraphs` replays inference (energy, forces, stress) for the calculator, MD and `lpmace bench`;
`lpmace.train.cuda_graphs.StepGraphs` replays whole training steps.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Callable, Dict, Hashable, Optional, Tuple

import torch

from lpmace.data.graph import Graph
from lpmace.data.padding import pad_graph

__all__ = ["ForwardGraphs", "ShapeGraphs", "real_rows"]

MAX_RECORDINGS = 64  # beyond this many (shape, key) pairs, further shapes run eagerly
# Inference pads to one of 32 sizes per octave (at most 1/32 more atoms and edges, ~1.6 % on average,
# all computed by the replay): MD and repeated evaluation keep one atom count, and their edge counts
# drift by a few per cent, so a handful of recordings covers a run.
PER_OCTAVE = 32


@dataclass
class _Recording:
    graph: "torch.cuda.CUDAGraph"
    result: Any


def real_rows(out: Optional[dict], atoms: int, structures: int) -> Optional[dict]:
    """The real structures' and atoms' rows of a padded call's outputs (views: no kernel): energy and
    stress have a row per structure, everything else a row per atom."""
    if out is None:
        return None
    rows = {"energy": structures, "stress": structures}
    return {k: v if v is None or not torch.is_tensor(v) else v[: rows.get(k, atoms)] for k, v in out.items()}


def _children(modules: tuple) -> tuple:
    """Identities of the submodules each of `modules` holds now, in order."""
    return tuple(id(child) for m in modules for child in m._modules.values())


class ShapeGraphs:
    """Calls recorded once per (padded shape, key) and replayed (see the module docstring).

    Args:
        device: the CUDA device the model is on.
    """

    def __init__(self, device):
        self.device = torch.device(device)
        self.pool = torch.cuda.graph_pool_handle()
        self.stream = torch.cuda.Stream(self.device)
        self.recordings: Dict[Hashable, _Recording] = {}
        self.warm: set = set()  # (shape, key) pairs that ran eagerly once
        self.inputs: Dict[tuple, Graph] = {}  # shape -> static padded batch on the device
        self.fixed = None
        self.counts = {"eager": 0, "recorded": 0, "replayed": 0}

    def _fixed(self) -> Hashable:
        """What a recording fixes besides the batch and the caller's key (addresses, settings)."""
        raise NotImplementedError

    def _modules(self) -> tuple:
        """(the blocks with settings, every module's parameter and buffer dicts) of `self.model`.

        `Module.modules()` and `parameters()` take ~170 us for `medium` (a 12-atom MD step's host time is
        a few ms; a W1 training step's GPU time ~6 ms), so the list of modules is kept while every kept
        module holds the same submodules (compared by identity; the kept modules are held, so no identity
        is reused): an assignment, ``del``, ``ModuleList.insert``/``pop`` or a write into ``_modules``
        walks the model again. The dicts are read as they are at each call."""
        kept = getattr(self, "_modules_kept", None)
        if kept is None or kept[1] != _children(kept[0]):
            modules = tuple(self.model.modules())
            blocks = tuple(m for m in modules if hasattr(m, "IMPLEMENTATIONS") or hasattr(m, "active_correlation"))
            tables = tuple(d for m in modules for d in (m._parameters, m._buffers))
            kept = self._modules_kept = (modules, _children(modules), blocks, tables)
        return kept[2], kept[3]

    def reset(self) -> None:
        """Drop the recordings. Their pool goes with the last of them: later recordings get a new one."""
        self.recordings.clear()
        self.pool = torch.cuda.graph_pool_handle()

    def clear(self) -> None:
        """Drop the recordings and the static batches (their memory returns to torch's allocator)."""
        self.reset()
        self.warm.clear()
        self.inputs.clear()

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
            if value is not None and value is not getattr(static, f.name):
                if value.device.type == "cpu":
                    value = value.pin_memory()
                getattr(static, f.name).copy_(value, non_blocking=True)
        return shape, static

    def call(self, padded: Graph, key: Hashable, run: Callable[[Graph], Any]) -> Tuple[Any, Graph]:
        """`run(batch)` on `padded` (host or device) copied into its shape's static batch: eagerly the
        first time this (shape, key) is seen, recorded the second, replayed after. Returns what `run`
        returned (for a replay: the recording's outputs, overwritten by its next replay) and the
        static batch."""
        fixed = self._fixed()
        if fixed != self.fixed:
            if self.fixed is not None:
                self.reset()
            self.fixed = fixed
        caller = torch.cuda.current_stream(self.device)
        self.stream.wait_stream(caller)
        # the model's device current (cuda:1 while the caller's is cuda:0): captures allocate on it
        with torch.cuda.device(self.device), torch.cuda.stream(self.stream):
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
        return result, static


class ForwardGraphs(ShapeGraphs):
    """Inference calls of `model` replayed from CUDA graphs; call it as the model is called.

    Args:
        model: the `MACE` module (its parameters' and buffers' addresses are watched: a cast or a
            ``load_state_dict(assign=True)`` records again, and so does another backend or correlation
            order set on its blocks; an in-place load is read by the recordings).
        run: what to call, `model` or its `lpmace.compile.Compiled` wrapper (`lpmace.backends.use`).
        device: the CUDA device the model is on.

    ``graphs(graph, precision=..., compute_stress=...)`` returns what the model returns (energy
    [n_graphs] float64, node_energy [n_atoms], forces [n_atoms, 3], stress [n_graphs, 3, 3] or None) for
    the real atoms and structures of `graph`, copied out of the recording, so they outlive the next
    call. The elements of `graph` are checked before it is padded (a capture cannot read values back).
    """

    def __init__(self, model: torch.nn.Module, run: Callable, device):
        super().__init__(device)
        self.model, self.run, self.r_max = model, run, float(model.config.r_max)
        self._filled = None  # (what `_same_but_positions` compares, the static batch it was padded into)

    def _check_elements(self, numbers: torch.Tensor) -> None:
        """InputError for an element the model lacks, before any recording. The check reads values
        back (host syncs), so the tensor last checked is not checked again while unchanged (MD passes
        one numbers tensor at every step); an in-place change bumps its version and is checked."""
        key = (id(numbers), numbers.data_ptr(), numbers._version, tuple(numbers.shape), numbers.device)
        if key != getattr(self, "_checked", None):
            self.model.species(numbers)
            self._checked, self._checked_tensor = key, numbers  # held, so its id is not reused

    @staticmethod
    def _all_but_positions(graph: Graph) -> tuple:
        """The tensors of `graph` other than positions, with what tells that one was changed in place
        (held, so their ids are not reused), and the positions' shape, dtype and device."""
        held = tuple((f.name, v, v._version, v.data_ptr()) if torch.is_tensor(v) else (f.name, v)
                     for f in dataclasses.fields(graph) if f.name != "positions" for v in (getattr(graph, f.name),))
        p = graph.positions
        return held, (tuple(p.shape), p.dtype, p.device)

    def _refreshed(self, graph: Graph, current: tuple) -> Optional[Graph]:
        """The static batch last padded from a graph that differs from `graph` in its positions only
        (`current`: `_all_but_positions(graph)`), with `graph`'s positions copied into its real rows (one
        copy, on the caller's stream, which the call's stream waits for); None if there is no such batch."""
        if self._filled is None:
            return None
        (held, layout), static = self._filled
        now, now_layout = current
        same = layout == now_layout and len(held) == len(now) and all(
            a[0] == b[0] and a[1] is b[1] and a[2:] == b[2:] for a, b in zip(held, now))
        if not same or not any(v is static for v in self.inputs.values()):
            return None
        static.positions[: graph.num_atoms].copy_(graph.positions, non_blocking=True)
        return static

    def _fixed(self) -> Hashable:
        """The weights' addresses, and what the model's blocks were set to compute with: their
        implementations (`lpmace.backends.use`) and active correlation orders. Every module's parameter
        and buffer dicts are read as they are now (`_modules`: an assignment,
        ``load_state_dict(assign=True)``, a cast's new buffers or ``param.data = ...`` all show), and
        every block's settings."""
        blocks, tables = self._modules()
        return (tuple((getattr(m, "implementation", None), getattr(m, "active_correlation", None)) for m in blocks),
                tuple(t.data_ptr() for table in tables for t in table.values() if t is not None))

    def __call__(self, graph: Graph, *, precision=None, compute_forces: bool = True, compute_stress: bool = False,
                 training: bool = False) -> Dict[str, Optional[torch.Tensor]]:
        from lpmace.precision import resolve_policy

        if training:
            raise ValueError("ForwardGraphs replays inference; training steps are lpmace.train.cuda_graphs.StepGraphs")
        policy = resolve_policy(precision, default=self.model.default_precision)
        self._check_elements(graph.numbers)
        atoms, structures = graph.num_atoms, graph.num_graphs
        checked = self.model.elements_checked

        def forward(batch: Graph):
            return self.run(batch, precision=policy, compute_forces=compute_forces, compute_stress=compute_stress)

        self.model.elements_checked = True  # checked above: the call reads nothing back
        try:
            with torch.enable_grad():  # forces are derivatives, even when the caller is in no_grad
                current = self._all_but_positions(graph)
                padded = self._refreshed(graph, current)
                if padded is None:
                    padded = pad_graph(graph, self.r_max, PER_OCTAVE)
                out, static = self.call(padded, (policy, compute_forces, compute_stress), forward)
                self._filled = (current, static)
        finally:
            self.model.elements_checked = checked
        return {k: None if v is None else v.clone() for k, v in real_rows(out, atoms, structures).items()}
