"""Data: extended XYZ reading, neighbour lists, graphs and batches, dataset statistics."""

from lpmace.data.batching import batches, collate, graph_from_atoms, graph_from_configuration
from lpmace.data.extxyz import Configuration, isolated_atom_energies, read_configurations
from lpmace.data.graph import Graph
from lpmace.data.neighbours import neighbour_list
from lpmace.data.statistics import (
    average_num_neighbours,
    e0s_from_isolated_atoms,
    energy_shift_and_force_scale,
    fit_e0s,
)

__all__ = [
    "Configuration",
    "Graph",
    "average_num_neighbours",
    "batches",
    "collate",
    "e0s_from_isolated_atoms",
    "energy_shift_and_force_scale",
    "fit_e0s",
    "graph_from_atoms",
    "graph_from_configuration",
    "isolated_atom_energies",
    "neighbour_list",
    "read_configurations",
]
