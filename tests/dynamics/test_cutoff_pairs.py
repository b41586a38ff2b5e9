"""Pairs handed to the model unfiltered (`exact_cutoff_pairs=False`): the model ignores pairs beyond its
r_max exactly, the Verlet list's planned (one-step-late) rebuild test never lets a pair within the cutoff go
missing, and the engine's trajectories do not change."""

import ase
import numpy as np
import pytest
import torch

from lpmace.data.batching import graph_from_atoms
from lpmace.data.neighbours import neighbour_list
from lpmace.dynamics import ModelPotential, run_dynamics
from lpmace.dynamics.neighbours import VerletList

FAST = {"max_ell": 1, "max_L": 0}


def _cell_of_atoms(seed, numbers=(1, 6, 7, 8), repeats=3, length=6.0):
    rng = np.random.default_rng(seed)
    grid = np.stack(np.meshgrid(*[np.arange(repeats) / repeats] * 3, indexing="ij"), -1).reshape(-1, 3)
    cell = np.diag([length] * 3) + rng.uniform(-0.8, 0.8, (3, 3)) * np.tri(3, k=-1)
    return ase.Atoms(numbers=rng.choice(numbers, len(grid)), cell=cell, pbc=True,
                     scaled_positions=grid + rng.uniform(-0.04, 0.04, grid.shape))


@pytest.mark.parametrize("overrides", [{}, {"pair_repulsion": True}, {"interaction": "density"},
                                       {"apply_cutoff": False}], ids=["residual", "zbl", "density", "envelope-late"])
def test_pairs_beyond_r_max_change_no_energy_and_no_force(overrides):
    from tiny_models import tiny_model

    model = tiny_model(**FAST, **overrides)
    atoms = _cell_of_atoms(3)
    r_max = float(model.config.r_max)
    exact, extra = graph_from_atoms(atoms, r_max), graph_from_atoms(atoms, r_max + 1.5)
    assert extra.num_edges > 1.3 * exact.num_edges  # many pairs between r_max and r_max + 1.5
    a = model(exact, compute_forces=True)
    b = model(extra, compute_forces=True)
    assert a["energy"].dtype == torch.float64 and a["forces"].abs().max() > 1e-3
    torch.testing.assert_close(b["energy"], a["energy"], rtol=0, atol=1e-12)
    torch.testing.assert_close(b["forces"], a["forces"], rtol=0, atol=1e-12)


def _exact_pairs(positions, cell, pbc, ptr, cutoff):
    """{(sender, receiver, shift)} within `cutoff`, by vesin per system."""
    pairs = set()
    for s in range(cell.shape[0]):
        lo, hi = int(ptr[s]), int(ptr[s + 1])
        edges, shifts = neighbour_list(positions[lo:hi].double().numpy(), cell[s].double().numpy(), pbc[s].numpy(),
                                       cutoff)
        pairs |= {(int(i) + lo, int(j) + lo, tuple(int(x) for x in t)) for (i, j), t in zip(edges.T, shifts)}
    return pairs


def _used_within(graph, cutoff):
    """{(sender, receiver, shift)} of the graph's edges that are within `cutoff` now."""
    sender, receiver = graph.edge_index
    vectors = (graph.positions[receiver] - graph.positions[sender]
               + torch.einsum("ej,ejk->ek", graph.unit_shifts, graph.cell[graph.batch[receiver]]))
    near = (vectors.norm(dim=-1) < cutoff).tolist()
    return {(int(i), int(j), tuple(int(x) for x in t)) for (i, j), t, n in
            zip(graph.edge_index.T.tolist(), graph.unit_shifts.tolist(), near) if n}


@pytest.mark.parametrize("ensemble", ["nve", "nvt"])
def test_fast_atoms_never_miss_a_pair_within_the_cutoff(ensemble, monkeypatch):
    """Hot hydrogen (~0.05 Å per step) and a small skin: the list is rebuilt often, by the planned
    (one step late) test in NVE and the synchronous one in NVT; at every force call the pairs the model
    gets within r_max are exactly a fresh list's."""
    from tiny_models import tiny_model

    model = tiny_model(**FAST)
    r_max = float(model.config.r_max)
    structures = [_cell_of_atoms(1, numbers=(1,)), _cell_of_atoms(2, numbers=(1, 8), length=6.5)]
    checked, planned = [], []
    graph_of = ModelPotential.graph

    def checked_graph(self, state):
        graph = graph_of(self, state)
        assert _used_within(graph, r_max) == _exact_pairs(state.positions, state.cell, state.pbc, state.ptr, r_max)
        checked.append(graph.num_edges)
        return graph
    monkeypatch.setattr(ModelPotential, "graph", checked_graph)
    planned_rebuild = VerletList._planned_rebuild
    monkeypatch.setattr(VerletList, "_planned_rebuild", lambda self, e: planned.append(1) or planned_rebuild(self, e))
    run = run_dynamics(model, structures, ensemble=ensemble, steps=120, dt_fs=1.0, temperature_K=2000.0, seed=2,
                       skin=0.4, exact_cutoff_pairs=False, max_energy_change_per_atom=1e9, friction_per_fs=0.05)
    assert run.stable and len(checked) == 121
    # measured: 61 builds in NVE, 60 in NVT (as many as with the cut: the planned test is exact)
    assert 30 <= run.neighbour_list_builds <= 100, run.neighbour_list_builds
    assert len(planned) == (120 if ensemble == "nve" else 0)
    assert max(checked) > min(checked)  # the unfiltered edge count changed at the rebuilds


@pytest.mark.parametrize("kind", ["molecule", "periodic"])
def test_unfiltered_pairs_give_the_filtered_trajectory(kind, bpa_atoms):
    from tiny_models import tiny_model

    model = tiny_model(**FAST)
    atoms = ase.Atoms(numbers=bpa_atoms.numbers, positions=bpa_atoms.positions) if kind == "molecule" \
        else _cell_of_atoms(4)
    common = dict(ensemble="nve", steps=200, dt_fs=1.0, temperature_K=600.0, seed=0, interval=20)
    runs = {}
    for exact in (True, False):
        positions = {}
        run = run_dynamics(model, [atoms], exact_cutoff_pairs=exact,
                           on_sample=lambda s, step, a: positions.__setitem__(step, a.positions.copy()), **common)
        runs[exact] = run, positions
    (filtered, at), (unfiltered, got) = runs[True], runs[False]
    assert sorted(got) == sorted(at) and len(got) == 11
    assert np.abs(at[200] - at[0]).max() > 0.05
    for step in at:
        np.testing.assert_allclose(got[step], at[step], rtol=0, atol=1e-9)
    np.testing.assert_allclose(unfiltered.systems[0].total_eV, filtered.systems[0].total_eV, rtol=0, atol=1e-10)
    assert unfiltered.neighbour_list_builds == filtered.neighbour_list_builds


def test_planned_rebuild_follows_the_promised_positions():
    rng = np.random.default_rng(5)
    cell = torch.tensor(8.0 * np.eye(3))[None]
    positions = torch.tensor(rng.uniform(0, 8.0, (40, 3)))
    pbc, batch, ptr = torch.ones(1, 3, dtype=torch.bool), torch.zeros(40, dtype=torch.long), torch.tensor([0, 40])
    verlet = VerletList(4.0, 1.0, exact_cutoff_pairs=False)
    edge_index, _ = verlet(positions, cell, pbc, batch, ptr)
    every_pair = _exact_pairs(positions, cell, pbc, ptr, 5.0)
    assert edge_index.shape[1] >= len(every_pair) > len(_exact_pairs(positions, cell, pbc, ptr, 4.0))
    moved = positions.clone()
    moved[7, 1] += 0.49
    verlet.plan(moved)
    again, _ = verlet(moved, cell, pbc, batch, ptr)
    assert verlet.builds == 1 and again is edge_index  # reused as is: no op at all
    moved = moved.clone()
    moved[7, 1] += 0.02  # 0.51 from the build
    verlet.plan(moved)
    verlet(moved, cell, pbc, batch, ptr)
    assert verlet.builds == 2
    verlet(moved, cell.clone(), pbc, batch, ptr)  # no plan, another cell tensor of the same value: reused
    assert verlet.builds == 2
    verlet.plan(moved)
    verlet(moved, 1.01 * cell, pbc, batch, ptr)  # the plan was for another cell: tested again, rebuilt
    assert verlet.builds == 3
