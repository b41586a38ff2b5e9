"""Graphs from configurations, and batches of graphs.

Graphs are built once (neighbour lists are the expensive part) and re-batched every epoch by
`collate`, which only concatenates and offsets. Every graph built here carries all three references
(energy, forces, stress) with zeros where a label is missing and ``has_*`` flags saying which exist,
so a batch has the same fields whatever its members hold.
"""

from __future__ import annotations

from typing import Iterator, Optional, Sequence

import numpy as np
import torch

from lpmace.data.extxyz import Configuration
from lpmace.data.graph import Graph
from lpmace.data.neighbours import neighbour_list
from lpmace.errors import InputError

__all__ = ["graph_from_atoms", "graph_from_configuration", "collate", "batches"]

_F64 = torch.float64

# Atoms closer than this (Å) are an error. Nothing physical comes near it (the shortest bond, H2, is
# 0.74 Å; collision cascades stay above ~0.1 Å); what does is a duplicated atom, whose zero-length
# edge makes the direction r/|r| 0/0 and every energy, force and loss of its batch NaN.
MIN_DISTANCE = 1e-2


def graph_from_configuration(config: Configuration, r_max: float) -> Graph:
    """One structure as a single-graph `Graph` (float64 geometry, edges within `r_max`).

    The cell's rows along non-periodic directions are set to zero (they carry no physics; the file's
    box around a molecule is arbitrary). Missing references become zeros with ``has_*`` False.
    Every structure a model sees is built here, so this is where overlapping atoms are refused.

    Raises:
        InputError naming ``config.source`` and the atoms when two atoms (or an atom and a periodic
        image, its own included in a too-small cell) are closer than `MIN_DISTANCE`.

    Returns:
        Graph with n_graphs = 1: positions [n, 3], numbers [n], edge_index [2, E], unit_shifts [E, 3],
        cell [1, 3, 3], pbc [1, 3], batch [n] zeros, ptr [2], energy [1], forces [n, 3],
        stress [1, 3, 3], has_energy / has_forces / has_stress [1].
    """
    n = config.num_atoms
    edge_index, unit_shifts = neighbour_list(config.positions, config.cell, config.pbc, r_max)
    _check_separations(config, edge_index, unit_shifts)
    cell = np.where(config.pbc[:, None], config.cell, 0.0)
    return Graph(
        positions=torch.tensor(config.positions, dtype=_F64),
        numbers=torch.tensor(config.numbers, dtype=torch.int64),
        edge_index=torch.from_numpy(edge_index),
        unit_shifts=torch.from_numpy(unit_shifts),
        cell=torch.tensor(cell, dtype=_F64).unsqueeze(0),
        pbc=torch.tensor(config.pbc, dtype=torch.bool).unsqueeze(0),
        batch=torch.zeros(n, dtype=torch.int64),
        ptr=torch.tensor([0, n], dtype=torch.int64),
        energy=torch.tensor([0.0 if config.energy is None else config.energy], dtype=_F64),
        forces=torch.tensor(np.zeros((n, 3)) if config.forces is None else config.forces, dtype=_F64),
        stress=torch.tensor(np.zeros((3, 3)) if config.stress is None else config.stress, dtype=_F64).unsqueeze(0),
        has_energy=torch.tensor([config.energy is not None]),
        has_forces=torch.tensor([config.forces is not None]),
        has_stress=torch.tensor([config.stress is not None]),
    )


def graph_from_atoms(atoms, r_max: float) -> Graph:
    """The single-graph `Graph` of an `ase.Atoms` (no reference labels), as `graph_from_configuration`;
    errors name it ``Atoms(<formula>)``. What `lpmace.Calculator` evaluates, for a model called directly::

        out = model(graph_from_atoms(atoms, model.config.r_max), compute_forces=True)
    """
    return graph_from_configuration(Configuration(
        numbers=np.asarray(atoms.numbers, dtype=np.int64),
        positions=np.asarray(atoms.positions, dtype=np.float64),
        cell=np.asarray(atoms.cell.array, dtype=np.float64),
        pbc=np.asarray(atoms.pbc, dtype=bool),
        source=atoms_source(atoms),
    ), r_max)


def atoms_source(atoms) -> str:
    """How errors name an `ase.Atoms`: ``Atoms(C2H6)``."""
    return f"Atoms({atoms.get_chemical_formula()})"


def _check_separations(config: Configuration, edge_index: np.ndarray, unit_shifts: np.ndarray) -> None:
    """InputError naming the shortest edge if it is shorter than MIN_DISTANCE (edges within r_max are all that can
    give the model a zero length, so the neighbour list already holds every pair that matters)."""
    if edge_index.shape[1] == 0:
        return
    sender, receiver = edge_index
    vectors = config.positions[receiver] - config.positions[sender] + unit_shifts @ config.cell
    lengths = np.linalg.norm(vectors, axis=1)
    e = int(np.argmin(lengths))
    if lengths[e] >= MIN_DISTANCE:
        return
    s, r, d = int(sender[e]), int(receiver[e]), float(lengths[e])
    image = unit_shifts[e].astype(int).tolist()
    if s == r:
        what = f"atom {s} is {d:.3g} Å from its own periodic image {image} (the cell is too small)"
    elif any(image):
        what = f"atoms {min(s, r)} and {max(s, r)} are {d:.3g} Å apart across the periodic boundary {image}"
    else:
        what = f"atoms {min(s, r)} and {max(s, r)} are {d:.3g} Å apart"
    raise InputError(f"{config.source}: {what} (atom indices from 0); atoms closer than {MIN_DISTANCE} Å "
                     "overlap (a duplicated atom?)")


def _references(
    graphs: Sequence[Graph], name: str, sizes: list[tuple[int, ...]]
) -> tuple[Optional[torch.Tensor], Optional[torch.Tensor]]:
    """Concatenated reference `name` and its per-graph has-flag; None if no graph has a value."""
    values = [getattr(g, name) for g in graphs]
    if all(v is None for v in values):
        return None, None
    parts, flags = [], []
    for graph, value, size in zip(graphs, values, sizes):
        has = getattr(graph, "has_" + name)
        if value is None:
            parts.append(torch.zeros(size, dtype=_F64))
            flags.append(torch.zeros(graph.num_graphs, dtype=torch.bool))
        else:
            parts.append(value)
            flags.append(torch.ones(graph.num_graphs, dtype=torch.bool) if has is None else has)
    return torch.cat(parts), torch.cat(flags)


def collate(graphs: Sequence[Graph]) -> Graph:
    """Concatenate graphs (each may itself be a batch) into one batch.

    Atoms, edges and structures keep their order; each graph's edge_index is offset by the number of
    atoms before it, so edges stay sorted by receiver. References absent from some graphs are zeros
    there with ``has_*`` False; a reference absent from all graphs is None.
    """
    if len(graphs) == 0:
        raise InputError("cannot collate an empty list of graphs")
    atom_counts = torch.tensor([g.num_atoms for g in graphs], dtype=torch.int64)
    atom_offsets = torch.cumsum(atom_counts, 0) - atom_counts
    graph_counts = [g.num_graphs for g in graphs]
    graph_offsets = np.cumsum([0] + graph_counts[:-1]).tolist()
    ptr_parts = [torch.zeros(1, dtype=torch.int64)] + [g.ptr[1:] + off for g, off in zip(graphs, atom_offsets)]
    energy, has_energy = _references(graphs, "energy", [(n,) for n in graph_counts])
    forces, has_forces = _references(graphs, "forces", [(g.num_atoms, 3) for g in graphs])
    stress, has_stress = _references(graphs, "stress", [(n, 3, 3) for n in graph_counts])
    return Graph(
        positions=torch.cat([g.positions for g in graphs]),
        numbers=torch.cat([g.numbers for g in graphs]),
        edge_index=torch.cat([g.edge_index + off for g, off in zip(graphs, atom_offsets)], dim=1),
        unit_shifts=torch.cat([g.unit_shifts for g in graphs]),
        cell=torch.cat([g.cell for g in graphs]),
        pbc=torch.cat([g.pbc for g in graphs]),
        batch=torch.cat([g.batch + off for g, off in zip(graphs, graph_offsets)]),
        ptr=torch.cat(ptr_parts),
        energy=energy,
        forces=forces,
        stress=stress,
        has_energy=has_energy,
        has_forces=has_forces,
        has_stress=has_stress,
    )


def batches(
    graphs: Sequence[Graph], batch_size: int, *, shuffle: bool = False, seed: int = 0, drop_last: bool = False
) -> Iterator[Graph]:
    """Yield collated batches of `batch_size` graphs (the last one smaller unless `drop_last`).

    With `shuffle`, the order is a permutation drawn from `seed` (same seed, same order).
    """
    if len(graphs) == 0:
        raise InputError("no graphs to batch")
    if batch_size < 1:
        raise InputError(f"batch_size must be at least 1, got {batch_size}")
    order = np.random.default_rng(seed).permutation(len(graphs)) if shuffle else np.arange(len(graphs))
    for start in range(0, len(graphs), batch_size):
        chosen = order[start : start + batch_size]
        if drop_last and len(chosen) < batch_size:
            return
        yield collate([graphs[i] for i in chosen])

