"""Atoms without neighbours: the interaction's message is zero, also when the graph has no edges at all.

A one-atom structure (an isolated-atom reference, a single ion) or a dilute gas below the cutoff
gives a graph with zero edges; the block must return zero messages, not fail.
"""

from __future__ import annotations

import pytest
import torch

from lpmace.nn.edges import Edges
from lpmace.nn.interaction import Interaction
from lpmace.o3.spherical_harmonics import SphericalHarmonics
from lpmace.precision import PRESETS

CHANNELS, N_ELEMENTS, MAX_ELL, NUM_BESSEL = 4, 2, 2, 3


def block(lmax_in: int, residual: bool) -> Interaction:
    torch.manual_seed(0)
    return Interaction(
        channels=CHANNELS, lmax_in=lmax_in, max_ell=MAX_ELL, lmax_sc=lmax_in, num_elements=N_ELEMENTS,
        num_bessel=NUM_BESSEL, radial_mlp=(8,), avg_num_neighbors=2.0, residual=residual,
    ).double()


def node_inputs(n: int, lmax_in: int):
    g = torch.Generator().manual_seed(1)
    h = torch.randn(n, CHANNELS, (lmax_in + 1) ** 2, generator=g, dtype=torch.float64)
    one_hot = torch.nn.functional.one_hot(torch.arange(n) % N_ELEMENTS, N_ELEMENTS).double()
    return h, one_hot


@pytest.mark.parametrize("lmax_in, residual", [(0, True), (0, False), (1, True)])
def test_graph_without_edges_gives_zero_messages(lmax_in, residual):
    interaction = block(lmax_in, residual)
    h, one_hot = node_inputs(3, lmax_in)
    no_sh = torch.zeros(0, (MAX_ELL + 1) ** 2, dtype=torch.float64)
    no_radial = torch.zeros(0, NUM_BESSEL, dtype=torch.float64)
    no_edges = torch.zeros(2, 0, dtype=torch.int64)
    a, sc = interaction(h, one_hot, Edges(no_edges, no_sh, no_radial, 3), PRESETS["fp64"])
    assert a.shape == (3, CHANNELS, (MAX_ELL + 1) ** 2)
    assert torch.all(a == 0.0)
    assert (sc is not None) == residual


@pytest.mark.parametrize("lmax_in, residual", [(0, True), (0, False), (1, True)])
def test_atom_without_edges_in_a_graph_with_edges_gets_zero_message(lmax_in, residual):
    interaction = block(lmax_in, residual)
    h, one_hot = node_inputs(3, lmax_in)
    vectors = torch.tensor([[1.0, 0.2, -0.3], [-1.0, -0.2, 0.3]], dtype=torch.float64)
    edge_sh = SphericalHarmonics(MAX_ELL)(vectors)
    edge_radial = torch.rand(2, NUM_BESSEL, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    edge_index = torch.tensor([[0, 1], [1, 0]])  # atom 2 has no neighbours
    a, _ = interaction(h, one_hot, Edges(edge_index, edge_sh, edge_radial, 3), PRESETS["fp64"])
    assert torch.all(a[2] == 0.0)
    assert a[:2].abs().max() > 1e-6
