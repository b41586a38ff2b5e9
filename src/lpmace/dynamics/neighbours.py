"""A Verlet neighbour list for MD states (a stand-in: built per system on the host with vesin).

The list is built within ``cutoff + skin`` and reused while no atom has moved more than skin/2 from
where it was at the build (raw displacement of the unwrapped positions: no pair can then have come
from beyond cutoff + skin to within cutoff). Each call filters the cached pairs to exactly `cutoff`,
so the model sees the same edges as a fresh list. Edge vectors follow lpmace's convention:
``positions[receiver] - positions[sender] + unit_shifts @ cell[batch[receiver]]``.

This stand-in syncs the host at every call (the displacement test and the filter's edge count) and
builds on the CPU; a device list with the same interface replaces it.
"""

from __future__ import annotations

import numpy as np
import torch

from lpmace.data.neighbours import neighbour_list

__all__ = ["VerletList"]


class VerletList:
    """Pairs within `cutoff` (Å) of a batch of systems, rebuilt only when an atom moved more than skin/2.

    ``builds`` counts the full builds so far; ``reset()`` forces the next call to build.
    """

    def __init__(self, cutoff: float, skin: float = 1.0) -> None:
        if not cutoff > 0 or not skin >= 0:
            raise ValueError(f"need cutoff > 0 and skin >= 0, got {cutoff} and {skin}")
        self.cutoff, self.skin = float(cutoff), float(skin)
        self.builds = 0
        self.reset()

    def reset(self) -> None:
        self._reference = self._pairs = self._shifts = None

    def _needs_build(self, positions: torch.Tensor) -> bool:
        if self._reference is None or self._reference.shape != positions.shape:
            return True
        if self.skin == 0:
            return True
        moved = (positions - self._reference).square().sum(-1).max()
        return bool(moved > (0.5 * self.skin) ** 2)

    def _build(self, positions, cell, pbc, ptr) -> None:
        host = positions.detach().to("cpu", torch.float64).numpy()
        cells, periodic, offsets = cell.detach().cpu().double().numpy(), pbc.cpu().numpy(), ptr.cpu().tolist()
        pairs, shifts = [], []
        for s in range(len(offsets) - 1):
            start, stop = offsets[s], offsets[s + 1]
            edge_index, unit_shifts = neighbour_list(host[start:stop], cells[s], periodic[s], self.cutoff + self.skin)
            pairs.append(edge_index + start)
            shifts.append(unit_shifts)
        self._pairs = torch.from_numpy(np.concatenate(pairs, axis=1)).to(positions.device)
        self._shifts = torch.from_numpy(np.concatenate(shifts)).to(positions.device, positions.dtype)
        self._reference = positions.detach().clone()
        self.builds += 1

    def __call__(self, positions: torch.Tensor, cell: torch.Tensor, pbc: torch.Tensor, batch: torch.Tensor,
                 ptr: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Pairs within the cutoff.

        Args:
            positions: [N, 3] float64 or float32, Å, unwrapped.
            cell: [S, 3, 3] lattice vectors as rows (zero rows along open directions).
            pbc: [S, 3] bool.
            batch: [N] int64 system of each atom.
            ptr: [S + 1] int64 atom offsets of the systems.

        Returns:
            edge_index [2, E] int64 (sender, receiver) sorted by receiver; unit_shifts [E, 3] in
            positions' dtype.
        """
        if self._needs_build(positions):
            self._build(positions, cell, pbc, ptr)
        sender, receiver = self._pairs
        vectors = positions[receiver] - positions[sender] + torch.einsum(
            "ek,ekx->ex", self._shifts, cell.to(positions.dtype)[batch[receiver]])
        keep = vectors.square().sum(-1) < self.cutoff**2
        return self._pairs[:, keep], self._shifts[keep]
