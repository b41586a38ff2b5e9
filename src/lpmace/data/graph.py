"""The batch of atomic graphs every model call takes.

One `Graph` holds one or many structures concatenated (like a torch_geometric batch): atoms of
structure g occupy rows ``ptr[g]:ptr[g+1]``. Edges point from a sender atom to a receiver atom;
the edge vector is ``positions[receiver] - positions[sender] + unit_shifts @ cell[g]`` (the image of
the receiver seen from the sender, mace-torch's convention). Geometry is float64 on the host; the
model casts it to the geometry dtype of its precision policy.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Optional

import torch


@dataclass
class Graph:
    """A batch of atomic graphs.

    Attributes:
        positions: [n_atoms, 3] float64, Å.
        numbers: [n_atoms] int64 atomic numbers.
        edge_index: [2, n_edges] int64 (sender, receiver), sorted by receiver.
        unit_shifts: [n_edges, 3] float64 integer lattice translations of each edge.
        cell: [n_graphs, 3, 3] float64 lattice vectors as rows (zeros where non-periodic).
        pbc: [n_graphs, 3] bool.
        batch: [n_atoms] int64 structure index of each atom.
        ptr: [n_graphs + 1] int64 offsets of each structure's atoms.
        energy: optional [n_graphs] float64 reference energies, eV.
        forces: optional [n_atoms, 3] float64 reference forces, eV/Å.
        stress: optional [n_graphs, 3, 3] float64 reference stress, eV/Å³ (ASE sign convention).
        has_energy / has_forces / has_stress: optional [n_graphs] bool, which references exist.
    """

    positions: torch.Tensor
    numbers: torch.Tensor
    edge_index: torch.Tensor
    unit_shifts: torch.Tensor
    cell: torch.Tensor
    pbc: torch.Tensor
    batch: torch.Tensor
    ptr: torch.Tensor
    energy: Optional[torch.Tensor] = None
    forces: Optional[torch.Tensor] = None
    stress: Optional[torch.Tensor] = None
    has_energy: Optional[torch.Tensor] = None
    has_forces: Optional[torch.Tensor] = None
    has_stress: Optional[torch.Tensor] = None

    @property
    def num_graphs(self) -> int:
        return self.ptr.shape[0] - 1  # no int(): it would fix the size when traced

    @property
    def num_atoms(self) -> int:
        return self.positions.shape[0]

    @property
    def num_edges(self) -> int:
        return self.edge_index.shape[1]

    def to(self, device: torch.device | str, non_blocking: bool = False) -> "Graph":
        """A copy with every tensor on `device` (dtypes unchanged). non_blocking: host tensors go to a
        GPU through pinned memory without waiting (a copy from pageable memory first waits for all
        work queued on the GPU: one device sync per tensor)."""
        pin = non_blocking and torch.device(device).type == "cuda"

        def move(v: torch.Tensor) -> torch.Tensor:
            if pin and v.device.type == "cpu":
                v = v.pin_memory()
            return v.to(device, non_blocking=non_blocking)

        moved = {
            f.name: (move(v) if isinstance(v, torch.Tensor) else v)
            for f in dataclasses.fields(self)
            for v in [getattr(self, f.name)]
        }
        return Graph(**moved)
