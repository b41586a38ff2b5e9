"""Batches padded to a few sizes, so that CUDA graphs (one recording per shape) are reused.

`bucket(n)` rounds a count up to one of 8 sizes per octave (at most 1/8 more; `per_octave` sets
another power of two: inference, whose structures repeat one size, pads by at most 1/32 so the
dummy edges cost little of the replayed call's GPU time). `pad_graph` pads a
batch's atoms and edges to bucket sizes with one extra structure of dummy atoms in pairs (a, b)
2·r_max apart, joined by the extra edges a → b: beyond the cutoff the radial envelope, hence every
message and its derivatives, is exactly 0, so the real structures' energies, forces, stresses and
the gradients of any loss over them are those of the unpadded batch. The dummy structure has no
references (``has_energy``/``has_forces``/``has_stress`` False, labels 0), so the masked loss
(`lpmace.train.loss`) ignores it. Real atoms, edges and structures come first.
"""

from __future__ import annotations

import torch

from lpmace.data.graph import Graph

__all__ = ["bucket", "pad_graph"]


def bucket(n: int, per_octave: int = 8) -> int:
    """n rounded up to one of `per_octave` sizes per octave (a power of two), at most n/per_octave more:
    a multiple of 2^(bits(n) - 1 - log2(per_octave))."""
    if per_octave < 1 or per_octave & (per_octave - 1):
        raise ValueError(f"per_octave must be a power of two, got {per_octave}")
    step = 1 << max(0, int(n).bit_length() - per_octave.bit_length())
    return -(-int(n) // step) * step


def _pad_rows(value, rows: int, fill=0):
    """`value` ([k, ...]) with `rows` more rows of `fill`; None stays None."""
    if value is None:
        return None
    return torch.cat([value, value.new_full((rows, *value.shape[1:]), fill)])


def pad_graph(graph: Graph, r_max: float, per_octave: int = 8) -> Graph:
    """`graph` with n atoms padded to bucket(n + 2) (at least two dummies, so the dummy structure is
    never empty) and e edges to bucket(e), `per_octave` sizes per octave; see the module docstring.
    Works on any device without a host sync (the sizes are the tensors' shapes)."""
    n, e, g = graph.num_atoms, graph.num_edges, graph.num_graphs
    n_pad = bucket(n + 2, per_octave)
    pairs = (n_pad - n) // 2
    e_pad = bucket(e, per_octave) if e else 0
    dev, dtype = graph.positions.device, graph.positions.dtype
    # dummy k: pair k // 2 at z = 4 r_max (k // 2) (pairs far from each other too), x = 2 r_max for the
    # second of a pair (an odd atom left over has no edges). Elementwise only: an indexed assignment of
    # a Python number would copy it from the host and wait for the device (a sync per training step).
    k = torch.arange(n_pad - n, device=dev)
    x = (2.0 * r_max) * (k % 2).to(dtype)
    pos = torch.stack([x, torch.zeros_like(x), (4.0 * r_max) * torch.div(k, 2, rounding_mode="floor").to(dtype)], 1)
    a = n + 2 * (torch.arange(e_pad - e, device=dev) % pairs)  # extra edges a -> a + 1, pairs in turn
    return Graph(
        positions=torch.cat([graph.positions, pos]),
        # a copy of the first atom's number (a known element), without a host sync
        numbers=torch.cat([graph.numbers, graph.numbers[:1].expand(n_pad - n) if n else
                           graph.numbers.new_ones(n_pad - n)]),
        edge_index=torch.cat([graph.edge_index, torch.stack([a, a + 1])], dim=1),
        unit_shifts=_pad_rows(graph.unit_shifts, e_pad - e),
        cell=torch.cat([graph.cell, torch.eye(3, dtype=graph.cell.dtype, device=dev)[None]]),
        pbc=_pad_rows(graph.pbc, 1, False),
        batch=_pad_rows(graph.batch, n_pad - n, g),
        ptr=_pad_rows(graph.ptr, 1, n_pad),
        energy=_pad_rows(graph.energy, 1),
        forces=_pad_rows(graph.forces, n_pad - n),
        stress=_pad_rows(graph.stress, 1),
        # no references in the dummy structure; a batch without the flags gets them (all real: True)
        has_energy=None if graph.energy is None else _pad_rows(
            graph.has_energy if graph.has_energy is not None else graph.energy.new_ones(g, dtype=torch.bool), 1, False),
        has_forces=None if graph.forces is None else _pad_rows(
            graph.has_forces if graph.has_forces is not None else graph.forces.new_ones(g, dtype=torch.bool), 1, False),
        has_stress=None if graph.stress is None else _pad_rows(
            graph.has_stress if graph.has_stress is not None else graph.stress.new_ones(g, dtype=torch.bool), 1, False),
    )
