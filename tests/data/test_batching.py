"""Graphs from configurations, collation offsets, and the batch iterator."""

import dataclasses

import numpy as np
import pytest
import torch

from lpmace.data import Configuration, batches, collate, graph_from_configuration
from lpmace.errors import InputError


def molecule(n_atoms, seed, energy=None, forces=True):
    rng = np.random.default_rng(seed)
    positions = rng.uniform(0, 2.5, (n_atoms, 3))
    return Configuration(
        numbers=rng.integers(1, 9, n_atoms),
        positions=positions,
        cell=20.0 * np.eye(3),
        pbc=np.zeros(3, bool),
        energy=energy,
        forces=rng.normal(size=(n_atoms, 3)) if forces else None,
        source=f"molecule {seed}",
    )


def crystal(seed):
    rng = np.random.default_rng(seed)
    cell = np.array([[3.0, 0.0, 0.0], [0.7, 3.2, 0.0], [0.3, -0.4, 2.9]])
    return Configuration(
        numbers=np.array([14, 14, 6]),
        positions=rng.uniform(0, 1, (3, 3)) @ cell,
        cell=cell,
        pbc=np.array([True, True, True]),
        energy=-5.0,
        forces=rng.normal(size=(3, 3)),
        stress=np.diag([0.01, 0.02, 0.03]),
    )


def edge_vectors(graph):
    sender, receiver = graph.edge_index
    cells = graph.cell[graph.batch[receiver]]  # [E, 3, 3]
    shift = torch.einsum("ei,eij->ej", graph.unit_shifts, cells)
    return graph.positions[receiver] - graph.positions[sender] + shift


def test_single_graph_fields_and_edge_lengths():
    graph = graph_from_configuration(crystal(0), r_max=4.0)
    assert graph.positions.dtype == torch.float64 and graph.unit_shifts.dtype == torch.float64
    assert graph.cell.shape == (1, 3, 3) and graph.pbc.shape == (1, 3) and graph.ptr.tolist() == [0, 3]
    assert graph.num_edges > 0 and torch.all(edge_vectors(graph).norm(dim=1) < 4.0)
    assert graph.has_energy.tolist() == [True] and graph.has_stress.tolist() == [True]
    assert graph.stress[0, 2, 2].item() == 0.03 and graph.energy.tolist() == [-5.0]


def test_open_directions_have_zero_cell_and_missing_labels_are_flagged():
    graph = graph_from_configuration(molecule(5, seed=1), r_max=3.0)
    assert torch.all(graph.cell == 0)
    assert graph.has_energy.tolist() == [False] and graph.energy.tolist() == [0.0]
    assert graph.has_forces.tolist() == [True] and graph.has_stress.tolist() == [False]


def test_collate_offsets_edges_and_builds_batch_and_ptr():
    configs = [molecule(4, seed=2, energy=-1.0), crystal(3), molecule(6, seed=4, forces=False)]
    graphs = [graph_from_configuration(c, r_max=3.5) for c in configs]
    batch = collate(graphs)
    assert batch.ptr.tolist() == [0, 4, 7, 13]
    assert batch.batch.tolist() == [0] * 4 + [1] * 3 + [2] * 6
    expected_edges = torch.cat([g.edge_index + offset for g, offset in zip(graphs, [0, 4, 7])], dim=1)
    assert torch.equal(batch.edge_index, expected_edges)
    assert torch.all(batch.batch[batch.edge_index[0]] == batch.batch[batch.edge_index[1]])
    assert torch.all(batch.edge_index[1, 1:] >= batch.edge_index[1, :-1]), "receiver order lost"
    torch.testing.assert_close(edge_vectors(batch), torch.cat([edge_vectors(g) for g in graphs]))
    assert batch.has_energy.tolist() == [True, True, False] and batch.energy.tolist() == [-1.0, -5.0, 0.0]
    assert batch.has_forces.tolist() == [True, True, False] and torch.all(batch.forces[7:] == 0)
    assert batch.stress.shape == (3, 3, 3) and batch.has_stress.tolist() == [False, True, False]


def test_collate_of_batches_equals_flat_collate():
    graphs = [graph_from_configuration(molecule(n, seed=n), r_max=3.0) for n in (2, 3, 5, 4)]
    nested = collate([collate(graphs[:3]), graphs[3]])
    flat = collate(graphs)
    for name in ("positions", "edge_index", "unit_shifts", "batch", "ptr", "forces", "has_energy"):
        assert torch.equal(getattr(nested, name), getattr(flat, name)), name


def test_collate_with_references_absent_everywhere_gives_none():
    graph = graph_from_configuration(molecule(3, seed=5), r_max=3.0)
    bare = dataclasses.replace(graph, stress=None, has_stress=None)
    assert collate([bare, bare]).stress is None
    with pytest.raises(InputError):
        collate([])


def first_positions(batch_iterator):
    """[n_graphs, 3] position of each graph's first atom, in batch order."""
    return torch.cat([b.positions[b.ptr[:-1]] for b in batch_iterator])


def test_batches_cover_every_graph_once_and_shuffle_reproducibly():
    graphs = [graph_from_configuration(molecule(1 + i % 3, seed=i), r_max=3.0) for i in range(10)]
    sizes = [b.num_graphs for b in batches(graphs, 4)]
    assert sizes == [4, 4, 2] and [b.num_graphs for b in batches(graphs, 4, drop_last=True)] == [4, 4]
    a = first_positions(batches(graphs, 3, shuffle=True, seed=7))
    b = first_positions(batches(graphs, 3, shuffle=True, seed=7))
    c = first_positions(batches(graphs, 3, shuffle=True, seed=8))
    unshuffled = first_positions(batches(graphs, 3))
    assert torch.equal(a, b) and not torch.equal(a, c) and not torch.equal(a, unshuffled)
    assert sorted(a[:, 0].tolist()) == sorted(unshuffled[:, 0].tolist())


@pytest.mark.parametrize(
    "positions, cell, pbc, fragment",
    [
        # a duplicated atom in a molecule
        ([[0, 0, 0], [1.0, 0, 0], [1.0, 0, 0]], np.zeros((3, 3)), [False] * 3, "atoms 1 and 2 are 0 Å apart"),
        # the same position modulo the cell: one lattice vector apart
        ([[0.5, 0.5, 0.5], [1.0, 0, 0], [3.5, 0.5, 0.5]], 3.0 * np.eye(3), [True] * 3,
         "atoms 0 and 2 are 0 Å apart across the periodic boundary"),
        # an atom on its own image: a cell with a 0.001 Å lattice vector (volume 0.1 Å³, not singular)
        ([[0, 0, 0]], np.diag([1e-3, 10.0, 10.0]), [True] * 3, "atom 0 is 0.001 Å from its own periodic image"),
    ],
)
def test_overlapping_atoms_are_refused_naming_structure_and_atoms(positions, cell, pbc, fragment):
    config = Configuration(numbers=[1] * len(positions), positions=positions, cell=cell, pbc=pbc,
                           source="water.xyz:frame 7")
    with pytest.raises(InputError) as err:
        graph_from_configuration(config, r_max=2.0)
    assert str(err.value).startswith("water.xyz:frame 7: ") and fragment in str(err.value)


def test_atoms_just_beyond_the_overlap_distance_are_accepted():
    from lpmace.data.batching import MIN_DISTANCE

    config = Configuration(numbers=[1, 1], positions=[[0, 0, 0], [1.01 * MIN_DISTANCE, 0, 0]], cell=np.zeros((3, 3)),
                           pbc=[False] * 3)
    assert graph_from_configuration(config, r_max=2.0).num_edges == 2
