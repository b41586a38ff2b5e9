"""Covalent radii of the model's elements: the length scale of close contacts between two atoms.

R(z) in Å from `ase.data.covalent_radii` (Cordero et al., Dalton Trans. 2008, 2832), the table
mace-torch's ZBL repulsion and Agnesi transform read. They are constants, not weights: held in
float64 whatever dtype the model is cast to (lpmace.nn.constants), and rounded only to the dtype a
block computes in.
"""

from __future__ import annotations

from typing import Sequence

import torch

from lpmace.nn.constants import ExactConstants


class CovalentRadii(ExactConstants):
    """Per-element covalent radii and atomic numbers, float64 buffers indexed by element index."""

    def __init__(self, atomic_numbers: Sequence[int]):
        super().__init__()
        from ase.data import covalent_radii

        radii = [float(covalent_radii[int(z)]) for z in atomic_numbers]
        self.register_constant("radii", torch.tensor(radii, dtype=torch.float64))
        self.register_constant("numbers", torch.tensor([float(z) for z in atomic_numbers], dtype=torch.float64))

    def of_edges(self, species: torch.Tensor, edge_index: torch.Tensor, dtype: torch.dtype):
        """(R_sender + R_receiver [E, 1], Z_sender [E, 1], Z_receiver [E, 1]) in `dtype`, from element
        indices `species` [n_atoms] and `edge_index` [2, E]."""
        s = torch.index_select(species, 0, edge_index[0])
        r = torch.index_select(species, 0, edge_index[1])
        radii, numbers = self.radii.to(dtype), self.numbers.to(dtype)
        pair = torch.index_select(radii, 0, s) + torch.index_select(radii, 0, r)
        return pair[:, None], torch.index_select(numbers, 0, s)[:, None], torch.index_select(numbers, 0, r)[:, None]
