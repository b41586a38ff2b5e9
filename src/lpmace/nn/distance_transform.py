"""Distance transforms: the edge length the radial basis sees, stretched where atoms are close.

Agnesi transform (ACEpotentials.jl: Witt et al., J. Chem. Phys. 159, 164101 (2023), "radial
transformations"; mace-torch's `distance_transform="Agnesi"`):

    x(r) = 1 / (1 + a (r/r0)^q / (1 + (r/r0)^(q - p))),    r0 = (R(z_i) + R(z_j)) / 2

with R the covalent radii (lpmace.nn.covalent_radii) and a = 1.0805, q = 0.9183, p = 4.5791.
x falls from 1 at r = 0 towards 0, steepest around r0: the Bessel functions of x resolve the
element-pair-dependent region of close contacts, where a fixed-frequency basis in r is coarse. The
cutoff envelope still acts on r, so features vanish at r_max as without the transform.

Precision: computed in the dtype of the lengths it is given (the policy's geometry dtype, never
below float32): (r/r0)^(q-p) spans many decades at short range, and x is subtracted from 1 in effect.
"""

from __future__ import annotations

from typing import Sequence

import torch

from lpmace.errors import InputError
from lpmace.nn.covalent_radii import CovalentRadii

DISTANCE_TRANSFORMS = ("none", "agnesi")
AGNESI = {"a": 1.0805, "q": 0.9183, "p": 4.5791}  # mace-torch's AgnesiTransform defaults


class AgnesiTransform(torch.nn.Module):
    """lengths [E, 1] (geometry dtype) -> x(r) [E, 1] in the same dtype."""

    def __init__(self, atomic_numbers: Sequence[int]):
        super().__init__()
        self.covalent_radii = CovalentRadii(atomic_numbers)

    def forward(self, lengths: torch.Tensor, species: torch.Tensor, edge_index: torch.Tensor) -> torch.Tensor:
        pair_radius, _, _ = self.covalent_radii.of_edges(species, edge_index, lengths.dtype)
        ratio = lengths / (0.5 * pair_radius)
        a, q, p = AGNESI["a"], AGNESI["q"], AGNESI["p"]
        return 1.0 / (1.0 + a * ratio**q / (1.0 + ratio ** (q - p)))


def distance_transform(name: str, atomic_numbers: Sequence[int]):
    """The transform module called `name` (one of DISTANCE_TRANSFORMS), or None for "none"."""
    if name not in DISTANCE_TRANSFORMS:
        raise InputError(f"distance_transform must be one of {DISTANCE_TRANSFORMS}, got {name!r}")
    return AgnesiTransform(atomic_numbers) if name == "agnesi" else None
