"""Real spherical harmonics Y_l(r̂), l = 0..lmax, e3nn's basis with "component" normalisation.

Built by the recursion Y_{l+1} ∝ CG(1, l, l+1) · (Y_1 ⊗ Y_l), which defines e3nn's real basis;
each step's constant is fixed so that |Y_l(r̂)|² = 2l + 1 on the unit sphere. The tables are float64
buffers; evaluation runs in the dtype of the input vectors (DESIGN.md: never below float32 — the
precision policy enforces that floor).
"""

from __future__ import annotations

import math

import torch

from lpmace.nn.constants import ExactConstants
from lpmace.o3.clebsch_gordan import wigner_3j
from lpmace.o3.irreps import num_components


def _recursion_tables(lmax: int) -> list[torch.Tensor]:
    tables = []
    y1 = torch.tensor([0.3, -0.5, 0.8], dtype=torch.float64)
    y1 = math.sqrt(3.0) * y1 / y1.norm()
    yl = y1
    for l in range(1, lmax):
        c = wigner_3j(1, l, l + 1)
        nxt = torch.einsum("i,j,ijk->k", y1, yl, c)
        scale = math.sqrt(2 * l + 3) / float(nxt.norm())
        tables.append(c * scale)
        yl = nxt * scale
    return tables


class SphericalHarmonics(ExactConstants):
    """Y(r̂) for l = 0..lmax of edge vectors.

    Input: vectors [n_edges, 3] (need not be normalised). Output: [n_edges, (lmax+1)**2] in the
    input's dtype; Y_0 = 1, Y_1 = √3 r̂.
    """

    def __init__(self, lmax: int):
        super().__init__()
        self.lmax = lmax
        for l, t in enumerate(_recursion_tables(lmax), start=1):
            self.register_constant(f"step_{l}", t)

    def forward(self, vectors: torch.Tensor) -> torch.Tensor:
        r_hat = vectors / vectors.norm(dim=-1, keepdim=True)
        y1 = math.sqrt(3.0) * r_hat
        out = [torch.ones_like(r_hat[:, :1])]
        if self.lmax >= 1:
            out.append(y1)
        yl = y1
        for l in range(1, self.lmax):
            table = getattr(self, f"step_{l}").to(vectors.dtype)
            # (y1 ⊗ yl) @ table, not a 3-operand einsum: its contraction path fixes the edge count
            # when the model is traced for backend "compiled"
            outer = (y1[:, :, None] * yl[:, None, :]).reshape(yl.shape[0], y1.shape[1] * yl.shape[1])
            yl = outer @ table.reshape(outer.shape[1], -1)
            out.append(yl)
        result = torch.cat(out, dim=-1)
        assert result.shape[-1] == num_components(self.lmax)
        return result
