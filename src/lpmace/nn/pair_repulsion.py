"""ZBL pair repulsion: the screened nuclear repulsion that keeps atoms apart at short range.

Ziegler-Biersack-Littmark universal potential (Ziegler, Biersack & Littmark, "The Stopping and
Range of Ions in Solids", 1985), as mace-torch's `pair_repulsion=True` adds it to every site energy:

    E_i = Σ_{j∈N(i)} ½ V(r_ij) u_p(r_ij / (R(z_i) + R(z_j)))
    V(r) = (e²/4πε0) z_i z_j / r · φ(r/a),   e²/4πε0 = 14.3996 eV Å,
    a = 0.4543 · 0.529 Å / (z_i^0.3 + z_j^0.3),
    φ(x) = 0.1818 e^(-3.2 x) + 0.5099 e^(-0.9423 x) + 0.2802 e^(-0.4028 x) + 0.02817 e^(-0.2016 x)

with R the covalent radii (lpmace.nn.covalent_radii) and u_p the radial polynomial envelope
(lpmace.nn.radial, p = the model's num_polynomial_cutoff): the repulsion is switched off smoothly
at the sum of the two covalent radii. Each pair appears as two directed edges, hence the ½.

Precision: per-edge terms in the dtype of the lengths (the policy's geometry dtype, never below
float32: V reaches keV at short range); the sum over neighbours in float64 (the energy dtype), so
it adds nothing to the error of the energy sum (DESIGN.md rule 1).
"""

from __future__ import annotations

from typing import Sequence

import torch

from lpmace.nn.covalent_radii import CovalentRadii
from lpmace.nn.radial import polynomial_envelope

COULOMB = 14.3996  # e²/(4πε0) in eV·Å, as mace-torch writes it
BOHR = 0.529  # Å
SCREENING_LENGTH = 0.4543  # a = SCREENING_LENGTH · BOHR / (z_i^EXPONENT + z_j^EXPONENT)
EXPONENT = 0.300
SCREENING = ((0.1818, 3.2), (0.5099, 0.9423), (0.2802, 0.4028), (0.02817, 0.2016))  # (c_k, d_k) of φ


class ZBLRepulsion(torch.nn.Module):
    """forward(lengths [E, 1] geometry dtype, species [n], edge_index [2, E], energy dtype) ->
    pair energy per atom [n] in the energy dtype (float64)."""

    def __init__(self, atomic_numbers: Sequence[int], num_polynomial_cutoff: int):
        super().__init__()
        self.p = int(num_polynomial_cutoff)
        self.covalent_radii = CovalentRadii(atomic_numbers)

    def forward(self, lengths: torch.Tensor, species: torch.Tensor, edge_index: torch.Tensor,
                energy_dtype: torch.dtype) -> torch.Tensor:
        pair_radius, z_s, z_r = self.covalent_radii.of_edges(species, edge_index, lengths.dtype)
        a = SCREENING_LENGTH * BOHR / (z_s**EXPONENT + z_r**EXPONENT)
        x = lengths / a
        phi = sum(c * torch.exp(-d * x) for c, d in SCREENING)
        v = COULOMB * z_s * z_r / lengths * phi
        per_edge = 0.5 * v * polynomial_envelope(lengths / pair_radius, self.p)
        out = torch.zeros(species.shape[0], dtype=energy_dtype, device=lengths.device)
        return out.index_add(0, edge_index[1], per_edge[:, 0].to(energy_dtype))
