"""Neighbour lists within a cutoff, under periodic, mixed or no boundary conditions (vesin).

Convention (mace-torch's; checked against brute force in tests/data/test_neighbours.py): an edge
(sender s, receiver r, unit shift S) has vector

    r_vec = positions[r] - positions[s] + S @ cell,    |r_vec| < r_max,

so it points from the sender to the periodic image of the receiver. The list is full (both s→r and
r→s, with opposite shifts), includes an atom's own periodic images (s == r, S != 0) but never the atom
itself (s == r, S == 0), and is sorted by receiver, then sender, then shift: the neighbour sum is a
segment reduction over contiguous rows.
"""

from __future__ import annotations

import numpy as np
import vesin

from lpmace.errors import InputError

__all__ = ["neighbour_list"]


def _box_for_vesin(cell: np.ndarray, pbc: np.ndarray) -> np.ndarray:
    """A cell vesin accepts: fully non-periodic → zeros; mixed → the non-periodic rows replaced.

    Vesin needs an invertible box as soon as one direction is periodic, but a file may write zero
    lattice vectors along its open directions. Shifts along an open direction are always zero, so
    any vector independent of the periodic ones will do there; we use unit vectors orthogonal to them.
    """
    if not pbc.any():
        return np.zeros((3, 3))
    box = cell.copy()
    periodic = cell[pbc]
    # Orthonormal basis whose first rows span the periodic vectors; the rest complete it.
    _, _, vt = np.linalg.svd(periodic)
    complement = vt[periodic.shape[0]:]
    for row, direction in zip(np.flatnonzero(~pbc), complement):
        box[row] = direction
    return box


def neighbour_list(
    positions: np.ndarray, cell: np.ndarray, pbc: np.ndarray, r_max: float
) -> tuple[np.ndarray, np.ndarray]:
    """All (sender, receiver, image) pairs closer than `r_max`.

    Args:
        positions: [n, 3] float64 Cartesian positions, Å (need not be wrapped into the cell).
        cell: [3, 3] float64 lattice vectors as rows, Å; rows of non-periodic directions are ignored.
        pbc: [3] bool periodicity of each lattice direction.
        r_max: cutoff radius, Å (> 0).

    Returns:
        edge_index: [2, n_edges] int64 (sender, receiver), sorted by receiver, then sender, then shift.
        unit_shifts: [n_edges, 3] float64 integer lattice translations; the edge vector is
            ``positions[receiver] - positions[sender] + unit_shifts @ cell``.
    """
    positions = np.ascontiguousarray(positions, dtype=np.float64)
    cell = np.asarray(cell, dtype=np.float64)
    pbc = np.asarray(pbc, dtype=bool).reshape(3)
    if positions.ndim != 2 or positions.shape[1] != 3:
        raise InputError(f"positions must have shape [n, 3], got {positions.shape}")
    if not r_max > 0:
        raise InputError(f"r_max must be positive, got {r_max}")
    if positions.shape[0] == 0:
        return np.zeros((2, 0), dtype=np.int64), np.zeros((0, 3), dtype=np.float64)
    box = _box_for_vesin(cell, pbc)
    calculator = vesin.NeighborList(cutoff=float(r_max), full_list=True)
    i, j, shifts = calculator.compute(points=positions, box=box, periodic=pbc, quantities="ijS", copy=True)
    sender = np.asarray(i, dtype=np.int64)
    receiver = np.asarray(j, dtype=np.int64)
    shifts = np.asarray(shifts, dtype=np.int64).reshape(-1, 3)
    keep = ~((sender == receiver) & ~shifts.any(axis=1))
    sender, receiver, shifts = sender[keep], receiver[keep], shifts[keep]
    order = np.lexsort((shifts[:, 2], shifts[:, 1], shifts[:, 0], sender, receiver))
    edge_index = np.stack([sender[order], receiver[order]])
    return edge_index, shifts[order].astype(np.float64)

