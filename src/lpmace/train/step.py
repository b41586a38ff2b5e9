"""One training step: the same code for `Trainer`, `lpmace bench`'s train section and the scripts.

A step is: forward with the force graph kept (``training=True``), the loss, its (loss-scaled) backward
— a double backward, through the forces —, the gradients summed over ranks where there are several,
unscaled, clipped to one global norm, and an optimizer step only if both the loss and that norm are
finite (otherwise the gradients are dropped and the step counts as skipped). The loss scaler is
updated either way, so fp16 runs lower the scale after an overflow. What a caller does around it
(EMA, rolling back non-finite weights, naming the structures of a non-finite batch) is its own.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Optional

import torch

from lpmace.data.graph import Graph
from lpmace.precision import PrecisionPolicy

__all__ = ["StepResult", "training_step"]

LossFunction = Callable[[dict, Graph], torch.Tensor]


@dataclass
class StepResult:
    out: Optional[dict]  # the model's output (None when this rank had no structures)
    local_loss: torch.Tensor  # this rank's loss, [] float64, detached
    loss: float  # the loss summed over ranks (this rank's alone without `reduce`)
    applied: bool  # the optimizer stepped: loss and gradient norm were finite


def training_step(model: torch.nn.Module, graph: Optional[Graph], policy: PrecisionPolicy,
                  optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler, loss_of: LossFunction, *,
                  clip_grad: Optional[float] = None, reduce: Optional[Callable] = None, **forward) -> StepResult:
    """One optimizer step of `model` (a MACE, or what `lpmace.backends.use` returned for it) on the batch
    `graph` (already on the model's device).

    Args:
        policy: the precision the forward runs in.
        scaler: GradScaler (disabled outside fp16: then scaling and unscaling are no-ops).
        loss_of: (model output, graph) -> [] loss tensor.
        clip_grad: largest global gradient norm (None: no clipping; the norm is still checked).
        reduce: (parameters, loss) -> summed loss, summing gradients over ranks (`GradientReducer`).
            With it `graph` may be None on a rank that got no structures of the global batch.
        forward: further keyword arguments of the model call (``compute_stress``, ...).
    """
    optimizer.zero_grad(set_to_none=True)
    out = None
    if graph is None:  # fewer structures in this global batch than ranks
        loss = torch.zeros((), dtype=torch.float64, device=next(model.parameters()).device)
        scaler.scale(loss)  # GradScaler sets up its scale on first use; every rank must
    else:
        out = model(graph, precision=policy, training=True, **forward)
        loss = loss_of(out, graph)
        scaler.scale(loss).backward()
    local_loss = loss.detach()
    if reduce is not None:
        loss = reduce(model.parameters(), loss)
    scaler.unscale_(optimizer)
    # One norm over all gradients: non-finite if any gradient is (one device sync per step).
    norm = torch.nn.utils.clip_grad_norm_(model.parameters(), clip_grad or math.inf)
    value = float(loss.detach())
    applied = math.isfinite(value) and bool(torch.isfinite(norm))
    if applied:
        scaler.step(optimizer)
    else:
        optimizer.zero_grad(set_to_none=True)
    scaler.update()
    return StepResult(out=out, local_loss=local_loss, loss=value, applied=applied)
