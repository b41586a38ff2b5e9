"""Torch ops per MD step outside the model call, by part of the step (CPU, a tiny random model).

    PYTHONPATH=src python benchmarks/md_step_ops.py [--steps 50] [--atoms benzene] [--exact-cutoff-pairs]

Runs `lpmace.dynamics.run_dynamics` (NVE, fp64 state) on a molecule and counts the aten ops each part of
a step dispatches (a TorchDispatchMode; ops inside the model's forward and backward are counted apart):
integrator (kick/drift), neighbours (VerletList), potential (Graph, outputs), bookkeeping (health
check, status and sample copies, host reads). On CUDA each counted op is about one kernel launch, except
views (listed apart, no launch). Host syncs are the ops that read a device value back: `.item()`/
`.tolist()` (aten._local_scalar_dense) and `nonzero` (its output size); reads of a copy
already queued to host memory ("late read": the Verlet list's planned flag; on CUDA a wait on an event
of the previous step, not a read of the device) are listed apart, and so are the engine's reads of the
status copy a step later (`_Run.read_one`, host memory, no op). Padding and copy-in of `lpmace.cuda_graphs.ForwardGraphs` run
on CUDA only: their ops are counted by calling `pad_graph` on a step's graph (and the copies into the
static batch: one per Graph field, plus the output clones). Prints per-step averages over the steps
after the first (step 0 and the first build excluded).
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import sys

import torch
from torch.utils._python_dispatch import TorchDispatchMode

VIEWS = {"view", "_unsafe_view", "unsqueeze", "squeeze", "select", "slice", "expand", "t", "transpose", "permute",
         "detach", "alias", "as_strided", "unbind", "split", "lift_fresh", "_reshape_alias", "reshape"}
SYNCS = {"nonzero", "equal"}  # and the reads of `count_reads`


class Counter(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.region = ["engine"]
        self.ops = collections.Counter()
        self.views = collections.Counter()
        self.syncs = collections.Counter()
        self.names = collections.defaultdict(collections.Counter)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = func.overloadpacket.__name__
        where = self.region[-1]
        if name in VIEWS:
            self.views[where] += 1
        else:
            self.ops[where] += 1
            self.names[where][name] += 1
        if name in SYNCS:
            self.syncs[where] += 1
        return func(*args, **(kwargs or {}))

    @contextlib.contextmanager
    def inside(self, region):
        self.region.append(region)
        try:
            yield
        finally:
            self.region.pop()


def wrap(counter, owner, attribute, region):
    original = getattr(owner, attribute)

    def wrapped(*args, **kwargs):
        with counter.inside(region):
            return original(*args, **kwargs)
    setattr(owner, attribute, wrapped)


def count_reads(counter, name):
    """Count a host read of a device value (a sync on CUDA) where the CPU dispatches no op for it."""
    original = getattr(torch.Tensor, name)

    def read(self, *args):
        if counter.region[-1] not in ("model", "late read"):
            counter.syncs[counter.region[-1]] += 1
        return original(self, *args)
    setattr(torch.Tensor, name, read)


def main(argv=None):
    sys.path.insert(0, "tests")
    from ase.build import molecule
    from conftest import tiny_model

    import lpmace.dynamics.engine as engine
    import lpmace.dynamics.langevin as langevin
    import lpmace.dynamics.verlet as verlet
    from lpmace.data.padding import pad_graph
    from lpmace.dynamics.neighbours import VerletList
    from lpmace.dynamics.potential import ModelPotential

    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--atoms", default="C6H6")
    parser.add_argument("--exact-cutoff-pairs", action="store_true", default=None)
    args = parser.parse_args(argv)
    counter = Counter()
    model = tiny_model(max_ell=1, max_L=0)
    for name in ("kick", "drift"):
        for module in (verlet, langevin):
            wrap(counter, module, name, "integrator")
    wrap(counter, langevin.Langevin, "thermostat", "integrator")
    wrap(counter, VerletList, "__call__", "neighbours")
    wrap(counter, VerletList, "_planned_rebuild", "late read")
    wrap(counter, ModelPotential, "__call__", "potential")
    for name in ("frozen", "check", "read_one", "drain"):
        wrap(counter, engine._Run, name, "bookkeeping")
    original_init = ModelPotential.__init__
    graphs = []

    def init(self, *a, **k):
        original_init(self, *a, **k)
        run = self.run
        graph = self.graph

        def counted_run(*a, **k):
            with counter.inside("model"):
                return run(*a, **k)
        self.run = counted_run

        def kept_graph(state):
            g = graph(state)
            graphs.append(g)
            return g
        self.graph = kept_graph
    ModelPotential.__init__ = init

    snapshots = []
    extra = {} if args.exact_cutoff_pairs is None else {"exact_cutoff_pairs": True}

    def should_stop():
        snapshots.append((collections.Counter(counter.ops), collections.Counter(counter.views),
                          collections.Counter(counter.syncs), len(graphs)))
        return False

    for name in ("tolist", "item", "__bool__", "__int__", "__float__"):
        count_reads(counter, name)
    with counter:
        result = engine.run_dynamics(model, [molecule(args.atoms)], steps=args.steps, dt_fs=0.5, temperature_K=300.0,
                                     interval=args.steps, should_stop=should_stop, **extra)
        graph = graphs[-1]
        with counter.inside("padding"):
            padded = pad_graph(graph, float(model.config.r_max), 32)
    steps = len(snapshots) - 1
    first, last = snapshots[1], snapshots[-1]
    print(f"{args.atoms}: {result.atoms} atoms, {steps} steps averaged, {result.neighbour_list_builds} builds")
    print(f"{'part':<12}{'ops/step':>10}{'views/step':>12}{'syncs/step':>12}")
    total = 0.0
    for region in ("integrator", "neighbours", "late read", "potential", "bookkeeping", "engine", "model"):
        ops = (last[0][region] - first[0][region]) / steps
        views = (last[1][region] - first[1][region]) / steps
        syncs = (last[2][region] - first[2][region]) / steps
        if region != "model":
            total += ops
        print(f"{region:<12}{ops:>10.1f}{views:>12.1f}{syncs:>12.2f}")
    copies = sum(getattr(padded, f) is not None for f in ("positions", "numbers", "edge_index", "unit_shifts", "cell",
                                                         "pbc", "batch", "ptr"))
    print(f"{'padding':<12}{counter.ops['padding']:>10}  (+{copies} copies into the static batch, 3 output clones:"
          " ForwardGraphs on CUDA only; a call whose graph differs from the last in its positions alone, as in"
          " reuse steps with unfiltered pairs, skips the padding and makes 1 copy)")
    print(f"outside the model, CPU engine: {total:.1f} ops/step; on CUDA add padding, copies and clones")
    for region in ("integrator", "neighbours", "potential", "bookkeeping"):
        print(f"  {region}: " + ", ".join(f"{k} {v}" for k, v in counter.names[region].most_common(12)))


if __name__ == "__main__":
    main()
