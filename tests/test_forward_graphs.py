"""Inference replayed from CUDA graphs (`lpmace.cuda_graphs.ForwardGraphs`) returns what the model
returns called directly: for every backend and precision, for new positions and edge counts in one
padded shape, after weights change, and through the calculator (`pytest -m gpu`). Without CUDA, the
calculator refuses `cuda_graphs=True` and calls the model directly."""

from __future__ import annotations

import copy

import ase
import numpy as np
import pytest
import torch
from tolerances import ROUNDING

from lpmace.backends import use
from lpmace.bench.workloads import random_bulk
from lpmace.calculator import Calculator
from lpmace.data import graph_from_configuration
from lpmace.data.graph import Graph
from lpmace.errors import InputError

gpu = pytest.mark.gpu
# the model column of the tolerance table: a padded call may sum in another order than the direct one
TOLERANCE = {"fp32": ROUNDING[torch.float32][2], "bf16-mixed": ROUNDING[torch.bfloat16][2]}


def _boxes(elements, r_max: float, count: int) -> list[Graph]:
    """`count` periodic boxes of the same 40 atoms, each moved a little, with (for count > 1) two or more
    edge counts that pad to one shape (`lpmace.cuda_graphs.PER_OCTAVE`)."""
    from lpmace.cuda_graphs import PER_OCTAVE
    from lpmace.data.padding import bucket

    base = random_bulk(40, elements, np.random.default_rng(0), density=0.08)
    rng = np.random.default_rng(1)
    groups: dict = {}
    for _ in range(200):
        moved = base.__class__(numbers=base.numbers, positions=base.positions + rng.normal(0, 0.05, base.positions.shape),
                               cell=base.cell, pbc=base.pbc)
        graph = graph_from_configuration(moved, r_max)
        group = groups.setdefault(bucket(graph.num_edges, PER_OCTAVE), [])
        group.append(graph)
        if len(group) >= count and (count == 1 or len({g.num_edges for g in group[:count]}) > 1):
            return group[:count]
    raise AssertionError("no padded shape held enough boxes")


def _assert_close(got: dict, want: dict, tolerance: float, keys=("energy", "forces", "stress")) -> None:
    for key in keys:
        a, b = got[key].double(), want[key].double()
        assert a.shape == b.shape, key
        scale = b.abs().max().clamp_min(1e-12)
        assert float((a - b).abs().max() / scale) <= tolerance, key


@gpu
@pytest.mark.parametrize("backend,precision", [("reference", "fp32"), ("triton", "fp32"), ("triton", "bf16-mixed"),
                                               ("compiled", "fp32")])
def test_replayed_calls_equal_direct_calls(make_model, backend, precision):
    from lpmace.cuda_graphs import ForwardGraphs

    model = make_model(torch.float32).cuda()
    run = use(model, backend, "cuda")
    graphs = ForwardGraphs(model, run, "cuda")
    boxes = [g.to("cuda") for g in _boxes(model.config.atomic_numbers, model.config.r_max, 5)]
    assert len({g.num_edges for g in boxes}) > 1  # the edge counts differ; the padded shape does not
    results, worst = [], 0.0
    for g in boxes:
        got = graphs(g, precision=precision, compute_stress=True)
        with torch.enable_grad():
            want = run(g, precision=precision, compute_forces=True, compute_stress=True)
        assert got["forces"].shape == (g.num_atoms, 3) and got["energy"].shape == (1,)
        _assert_close(got, want, TOLERANCE[precision])
        results.append(got["forces"])
        worst = max(worst, float((got["forces"] - want["forces"]).abs().max()))
    assert graphs.counts == {"eager": 1, "recorded": 1, "replayed": 4}
    # the replays read the new positions: their forces moved 10x more than replays and direct calls differ
    moved = min(float((f - results[0]).abs().max()) for f in results[1:])
    assert moved > 10 * worst and moved > 0.05 * float(results[0].abs().max())


@gpu
def test_outputs_outlive_the_next_replay(make_model):
    from lpmace.cuda_graphs import ForwardGraphs

    model = make_model(torch.float32).cuda()
    graphs = ForwardGraphs(model, use(model, "triton", "cuda"), "cuda")
    boxes = [g.to("cuda") for g in _boxes(model.config.atomic_numbers, model.config.r_max, 4)]
    graphs(boxes[0], precision="fp32")
    first = graphs(boxes[1], precision="fp32")  # recorded
    kept = first["forces"].clone()
    graphs(boxes[2], precision="fp32")  # replayed into the recording's outputs
    assert torch.equal(first["forces"], kept)


@gpu
def test_weights_loaded_in_place_are_read_and_replaced_weights_record_again(make_model):
    from lpmace.cuda_graphs import ForwardGraphs

    model = make_model(torch.float32).cuda()
    run = use(model, "triton", "cuda")
    graphs = ForwardGraphs(model, run, "cuda")
    g = _boxes(model.config.atomic_numbers, model.config.r_max, 1)[0].to("cuda")
    for _ in range(3):
        before = graphs(g, precision="fp32")
    model.load_state_dict(make_model(torch.float32, seed=7).state_dict())  # copied into the same tensors
    after = graphs(g, precision="fp32")
    assert graphs.counts["recorded"] == 1  # read by the recording, not recorded again
    with torch.enable_grad():
        want = run(g, precision="fp32", compute_forces=True)
    _assert_close(after, want, TOLERANCE["fp32"], keys=("energy", "forces"))
    assert float((after["forces"] - before["forces"]).abs().max()) > 1e-3 * float(before["forces"].abs().max())
    model.load_state_dict(make_model(torch.float32, seed=8).cuda().state_dict(), assign=True)  # new tensors
    graphs(g, precision="fp32")
    graphs(g, precision="fp32")
    assert graphs.counts["recorded"] == 2


@gpu
def test_an_unknown_element_is_refused_before_any_recording(make_model):
    from lpmace.cuda_graphs import ForwardGraphs

    model = make_model(torch.float32).cuda()
    graphs = ForwardGraphs(model, use(model, "triton", "cuda"), "cuda")
    g = _boxes(model.config.atomic_numbers, model.config.r_max, 1)[0]
    g.numbers[3] = 26  # iron: not one of the model's elements
    with pytest.raises(InputError, match="26|Fe"):
        graphs(g.to("cuda"), precision="fp32")
    assert graphs.counts == {"eager": 0, "recorded": 0, "replayed": 0} and not model.elements_checked


@gpu
def test_the_calculator_replays_on_cuda_and_its_md_follows_the_direct_one(make_model):
    from ase.md.verlet import VelocityVerlet

    from lpmace.cuda_graphs import ForwardGraphs

    model = make_model(torch.float32)
    box = random_bulk(40, model.config.atomic_numbers, np.random.default_rng(0), density=0.08)
    trajectories = {}
    for graphs in (True, False):
        calc = Calculator(model, device="cuda", precision="fp32", backend="triton", cuda_graphs=None if graphs else False)
        assert isinstance(calc._run, ForwardGraphs) == graphs
        atoms = ase.Atoms(numbers=box.numbers, positions=box.positions, cell=box.cell, pbc=True, calculator=calc)
        VelocityVerlet(atoms, timestep=0.5 * ase.units.fs).run(8)
        trajectories[graphs] = atoms.get_positions()
        if graphs:
            assert calc._run.counts["replayed"] >= 6
    assert np.abs(trajectories[True] - trajectories[False]).max() < 1e-5


def test_the_calculator_refuses_cuda_graphs_without_cuda(model, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(InputError, match="cuda_graphs=True needs a CUDA device, got cpu"):
        Calculator(model, device="cpu", cuda_graphs=True)
    assert Calculator(model, device="cpu")._run is model  # the model itself, called directly


def test_what_a_recording_fixes_includes_the_backend_and_the_correlation_order(make_model):
    from lpmace.cuda_graphs import ForwardGraphs

    model = make_model(torch.float32)
    graphs = ForwardGraphs.__new__(ForwardGraphs)  # _fixed alone: recording itself needs CUDA
    graphs.model = model
    use(model, "reference", "cpu")
    before = graphs._fixed()
    assert graphs._fixed() == before
    use(model, "triton", "cpu")  # under Triton's interpreter on a CPU
    after_backend = graphs._fixed()
    assert after_backend != before
    next(m for m in model.modules() if hasattr(m, "active_correlation")).active_correlation = 1
    assert graphs._fixed() != after_backend
    model.load_state_dict(make_model(torch.float32, seed=3).state_dict())  # in place: same addresses
    assert graphs._fixed()[1] == after_backend[1]


def test_what_a_recording_fixes_is_read_without_walking_the_model_yet_sees_every_reassignment(make_model,
                                                                                              monkeypatch):
    from lpmace.cuda_graphs import ForwardGraphs

    model = make_model(torch.float32)
    loaded = [make_model(torch.float32, seed=seed).state_dict() for seed in (3, 4)]
    graphs = ForwardGraphs.__new__(ForwardGraphs)
    graphs.model = model
    keys = [graphs._fixed()]

    def walked():
        raise AssertionError("the model's modules were walked again")
    monkeypatch.setattr(model, "modules", walked)
    assert graphs._fixed() == keys[0]  # the kept list of modules
    model.load_state_dict(loaded[0])  # in place
    assert graphs._fixed() == keys[0]
    model.load_state_dict(loaded[1], assign=True)  # new tensors
    keys.append(graphs._fixed())
    weight = next(model.parameters())
    weight.data = weight.data.clone()  # what a cast does to each parameter
    keys.append(graphs._fixed())
    owner, name = next((m, n) for m in torch.nn.Module.modules(model) for n, b in m._buffers.items()
                       if b is not None)
    owner._buffers[name] = owner._buffers[name].clone()  # what a cast does to each buffer
    keys.append(graphs._fixed())
    assert len({k[1] for k in keys}) == len(keys)  # every change of address seen
    monkeypatch.undo()
    block = next(m for m in model.modules() if hasattr(m, "active_correlation"))
    parent, attribute = next((m, n) for m in model.modules() for n, c in m._modules.items() if c is block)
    setattr(parent, attribute, copy.deepcopy(block))  # a module swap
    swapped = graphs._fixed()  # the new submodule's own weights: the list of modules was walked again
    assert swapped[1] != keys[-1][1]
    next(m for m in model.modules() if hasattr(m, "active_correlation")).active_correlation = 1
    assert graphs._fixed()[0] != swapped[0]


def test_a_training_recording_sees_moved_weights_and_optimizer_state_without_walking_the_model(make_model,
                                                                                              monkeypatch):
    """`StepGraphs` keys its recordings on the weights' and the optimizer state's addresses and the
    optimizer's hyperparameters, read each step from the kept list of modules (no walk of the model)."""
    from lpmace.train.cuda_graphs import StepGraphs

    model = make_model(torch.float32)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    model(_boxes(model.config.atomic_numbers, model.config.r_max, 1)[0], training=True)["energy"].sum().backward()
    optimizer.step()  # moments exist
    graphs = StepGraphs.__new__(StepGraphs)
    graphs.model, graphs.optimizer = model, optimizer
    keys = [graphs._fixed()]
    weight = next(model.parameters())

    def walked(*args, **kwargs):
        raise AssertionError("the model's modules were walked again")
    # modules(), parameters() and buffers() all walk through named_modules()
    monkeypatch.setattr(model, "named_modules", walked)
    assert graphs._fixed() == keys[0]
    optimizer.load_state_dict(copy.deepcopy(optimizer.state_dict()))  # a rollback: new moment tensors
    keys.append(graphs._fixed())
    weight.data = weight.data.clone()  # a cast
    keys.append(graphs._fixed())
    optimizer.param_groups[0]["lr"] = 1e-4  # the plateau scheduler
    keys.append(graphs._fixed())
    assert len({k[1] for k in keys[:3]}) == 3 and keys[3][1] == keys[2][1] and keys[3][0] != keys[2][0]


def test_submodules_removed_or_inserted_without_an_assignment_walk_the_model_again(make_model):
    """del, ModuleList.insert/pop and writes into _modules (no attribute assignment): the kept list of
    modules must still notice them (a stale list replays a recording of the old model)."""
    from lpmace.cuda_graphs import ForwardGraphs

    model = make_model(torch.float32)
    graphs = ForwardGraphs.__new__(ForwardGraphs)
    graphs.model = model
    lists = [(m, n) for m in model.modules() for n, c in m._modules.items() if isinstance(c, torch.nn.ModuleList)
             and len(c) > 0 and any(True for _ in c[0].parameters())]
    owner, name = lists[0]
    modules = owner._modules[name]
    before = graphs._fixed()
    removed = modules.pop(0)  # its weights leave the model
    after_pop = graphs._fixed()
    assert after_pop[1] != before[1]
    modules.insert(0, copy.deepcopy(removed))  # other weights come in
    after_insert = graphs._fixed()
    assert after_insert[1] not in (before[1], after_pop[1])
    owner._modules[name] = torch.nn.ModuleList([copy.deepcopy(m) for m in modules])  # no hook fires
    assert graphs._fixed()[1] != after_insert[1]


def test_the_elements_of_one_numbers_tensor_are_checked_again_only_after_it_changes(make_model, monkeypatch):
    from lpmace.cuda_graphs import ForwardGraphs

    model = make_model(torch.float32)
    graphs = ForwardGraphs.__new__(ForwardGraphs)  # the check alone: recording itself needs CUDA
    graphs.model = model
    calls = []
    species = model.species
    monkeypatch.setattr(model, "species", lambda numbers: calls.append(1) or species(numbers))
    numbers = torch.tensor([1, 6, 7, 8])
    graphs._check_elements(numbers)
    graphs._check_elements(numbers)
    assert len(calls) == 1  # the same, unchanged tensor
    graphs._check_elements(numbers.clone())
    assert len(calls) == 2  # another tensor
    numbers = torch.tensor([1, 6, 7, 8])
    graphs._check_elements(numbers)
    numbers[2] = 26  # in place: iron, not one of the model's elements
    with pytest.raises(InputError, match="26|Fe"):
        graphs._check_elements(numbers)


@gpu
def test_new_positions_alone_are_copied_into_the_last_padded_batch(make_model, monkeypatch):
    """MD between neighbour-list builds: the same edge tensors, new positions. No padding, the
    replay reads the new positions; a new edge tensor pads again."""
    import lpmace.cuda_graphs as cuda_graphs
    from lpmace.cuda_graphs import ForwardGraphs

    model = make_model(torch.float32).cuda()
    run = use(model, "reference", "cuda")
    graphs = ForwardGraphs(model, run, "cuda")
    pads = []
    pad = cuda_graphs.pad_graph
    monkeypatch.setattr(cuda_graphs, "pad_graph", lambda *a, **k: pads.append(1) or pad(*a, **k))
    box = _boxes(model.config.atomic_numbers, model.config.r_max, 1)[0].to("cuda")
    rng = np.random.default_rng(3)
    for i in range(4):
        moved = Graph(**{**{f: getattr(box, f) for f in ("numbers", "edge_index", "unit_shifts", "cell", "pbc",
                                                          "batch", "ptr")},
                         "positions": box.positions + torch.tensor(rng.normal(0, 0.02, box.positions.shape),
                                                                   dtype=box.positions.dtype, device="cuda")})
        got = graphs(moved, precision="fp32")
        with torch.enable_grad():
            want = run(moved, precision="fp32", compute_forces=True)
        _assert_close(got, want, TOLERANCE["fp32"], keys=("energy", "forces"))
    assert len(pads) == 1 and graphs.counts == {"eager": 1, "recorded": 1, "replayed": 3}
    box = Graph(**{**{f: getattr(box, f) for f in ("numbers", "unit_shifts", "cell", "pbc", "batch", "ptr",
                                                    "positions")}, "edge_index": box.edge_index.clone()})
    graphs(box, precision="fp32")
    assert len(pads) == 2


def test_new_positions_alone_refresh_the_last_padded_batch_without_cuda(make_model, monkeypatch):
    """The same refresh on the CPU, with the recordings replaced by eager calls on the static batch
    (what a replay computes): the static positions are the new ones, the padding rows untouched."""
    import lpmace.cuda_graphs as cuda_graphs

    monkeypatch.setattr(torch.cuda, "graph_pool_handle", lambda: None)
    monkeypatch.setattr(torch.cuda, "Stream", lambda device: None)
    monkeypatch.setattr(torch.Tensor, "pin_memory", lambda self: self)

    def eager(self, padded, key, run):
        shape, static = self._static(padded)
        return run(static), static
    monkeypatch.setattr(cuda_graphs.ShapeGraphs, "call", eager)
    pads = []
    pad = cuda_graphs.pad_graph
    monkeypatch.setattr(cuda_graphs, "pad_graph", lambda *a, **k: pads.append(1) or pad(*a, **k))
    model = make_model(torch.float64)
    graphs = cuda_graphs.ForwardGraphs(model, model, "cpu")
    box = _boxes(model.config.atomic_numbers, model.config.r_max, 1)[0]
    fields = ("numbers", "edge_index", "unit_shifts", "cell", "pbc", "batch", "ptr")
    rng = np.random.default_rng(3)
    for _ in range(3):
        moved = Graph(**{f: getattr(box, f) for f in fields},
                      positions=box.positions + torch.tensor(rng.normal(0, 0.05, box.positions.shape)))
        got = graphs(moved)
        want = model(moved, compute_forces=True)
        torch.testing.assert_close(got["energy"], want["energy"], rtol=0, atol=1e-10)
        torch.testing.assert_close(got["forces"], want["forces"], rtol=0, atol=1e-10)
    assert len(pads) == 1
    (static,) = graphs.inputs.values()
    assert torch.equal(static.positions[: box.num_atoms], moved.positions)
    assert torch.equal(static.positions[box.num_atoms:], pad(box, model.config.r_max, 32).positions[box.num_atoms:])
    graphs(Graph(**{f: getattr(box, f) for f in fields if f != "edge_index"}, positions=box.positions,
                 edge_index=box.edge_index.clone()))  # a new edge tensor: padded again
    box.unit_shifts.add_(0)  # changed in place (its version): padded again
    graphs(Graph(**{f: getattr(box, f) for f in fields}, positions=box.positions))
    assert len(pads) == 3
