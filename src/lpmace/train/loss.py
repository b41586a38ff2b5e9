"""Weighted energy (per atom), force and stress loss, as mace-torch's "weighted" loss.

    L = λE · mean_g ρ((E_g − Ê_g) / N_g) + λF · mean_{i,α} ρ(F_iα − F̂_iα) + λS · mean_g,αβ ρ(σ − σ̂)

with ρ the square (MSE) or the Huber function. Only structures that have a reference contribute to
each term. Computed in float64 from the model's outputs.
"""

from __future__ import annotations

from typing import Optional

import torch

from lpmace.data.graph import Graph


def _rho(diff: torch.Tensor, kind: str, delta: float) -> torch.Tensor:
    if kind == "huber":
        return torch.nn.functional.huber_loss(diff, torch.zeros_like(diff), reduction="none", delta=delta)
    return diff**2


def _masked_mean(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    count = mask.sum()
    return (values * mask).sum() / count.clamp(min=1)


def weighted_loss(
    out: dict, graph: Graph, *, energy_weight: float, forces_weight: float, stress_weight: float,
    kind: str = "mse", delta: float = 0.01, counts: Optional[dict] = None,
) -> torch.Tensor:
    """Scalar float64 loss of one batch; `out` is the model's output dict.

    counts: what each term averages over, {"energy": structures, "forces": force components,
    "stress": stress components}, when `graph` is one rank's part of a larger global batch (the
    rank losses then add up to the global batch's loss); None: this batch's own counts.
    """
    def mean(values: torch.Tensor, mask: torch.Tensor, key: str) -> torch.Tensor:
        if counts is None:
            return _masked_mean(values, mask)
        return (values * mask).sum() / max(counts[key], 1)

    atoms = (graph.ptr[1:] - graph.ptr[:-1]).to(torch.float64)
    loss = out["energy"].new_zeros(())
    if energy_weight and graph.energy is not None:
        diff = (out["energy"] - graph.energy) / atoms
        loss = loss + energy_weight * mean(_rho(diff, kind, delta), graph.has_energy.to(diff.dtype), "energy")
    if forces_weight and graph.forces is not None and out["forces"] is not None:
        diff = out["forces"].to(torch.float64) - graph.forces
        mask = graph.has_forces[graph.batch].to(diff.dtype)[:, None].expand_as(diff)
        loss = loss + forces_weight * mean(_rho(diff, kind, delta), mask, "forces")
    if stress_weight and graph.stress is not None and out.get("stress") is not None:
        diff = torch.nan_to_num(out["stress"].to(torch.float64)) - graph.stress
        mask = graph.has_stress.to(diff.dtype)[:, None, None].expand_as(diff)
        loss = loss + stress_weight * mean(_rho(diff, kind, delta), mask, "stress")
    return loss
