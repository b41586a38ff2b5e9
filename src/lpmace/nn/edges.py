"""Edges: what every interaction reads about the graph's edges, computed once per model call.

    index      [2, E] senders (row 0) and receivers (row 1)
    sh         [E, (max_ell+1)²] spherical harmonics of the edge directions
    radial     [E, num_bessel] radial basis of the edge lengths (envelope included)
    num_nodes  atoms in the graph
    cutoff     [E, 1] cutoff envelope u(r), when the model applies it to the per-edge weights and
               densities instead of the radial basis (mace-torch's apply_cutoff=False); else None
    segments   the edges grouped by receiver and by sender (`lpmace.kernels.convolution.EdgeSegments`),
               made on first use (a sort) and kept for the other interactions of the same call: only
               the fused tensor product reads them
"""

from __future__ import annotations

from typing import Optional

import torch

from lpmace.kernels.convolution import EdgeSegments, edge_segments


class Edges:
    def __init__(self, index: torch.Tensor, sh: torch.Tensor, radial: torch.Tensor, num_nodes: int,
                 cutoff: Optional[torch.Tensor] = None):
        self.index, self.sh, self.radial, self.num_nodes = index, sh, radial, num_nodes
        self.cutoff = cutoff
        self._segments = None

    @property
    def segments(self) -> EdgeSegments:
        if self._segments is None:
            self._segments = edge_segments(self.index, self.num_nodes)
        return self._segments
