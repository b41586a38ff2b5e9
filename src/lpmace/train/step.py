"""One training step: the same code for `Trainer`, `lpmace bench`'s train section and the scripts.

A step is: forward with the force graph kept (``training=True``), the loss, its (loss-scaled) backward
— a double backward, through the forces —, the gradients summed over ranks where there are several,
unscaled, clipped to one global norm, and an optimizer step that takes effect only if both the loss
and that norm are finite (otherwise the step counts as skipped). The gradients are dropped at the
end either way. The loss scaler is updated either way, so fp16 runs lower the scale after an overflow.
What a caller does around it (EMA, rolling back non-finite weights, naming the structures of a
non-finite batch) is its own.

No host synchronisation: the decision "finite or not" stays on the device as `StepResult.ok`, and
an optimizer that can skip its own update on a device flag — a fused Adam/AdamW (`adam`), through
the `found_inf` tensor torch's GradScaler also uses — is handed it, so `training_step` launches its
work and returns without waiting for the GPU. `StepResult.loss` and `.applied` read the device
when asked (one sync each). Any other optimizer falls back to reading the flag back on the host
(one sync per step) and stepping or not, as lpmace did before. Clipping (torch's clip_grad_norm_:
one foreach norm, gradients scaled by min(1, clip / norm) on the device) is sync-free already.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Optional

import torch

from lpmace.data.graph import Graph
from lpmace.precision import PrecisionPolicy

__all__ = ["StepResult", "adam", "set_fused", "skips_on_device", "training_step"]

LossFunction = Callable[[dict, Graph], torch.Tensor]


@dataclass
class StepResult:
    out: Optional[dict]  # the model's output (None when this rank had no structures)
    local_loss: torch.Tensor  # this rank's loss, [] float64, detached
    total: torch.Tensor  # the loss summed over ranks (this rank's alone without `reduce`), [] detached
    ok: torch.Tensor  # [] bool on the device: the update took effect (loss and gradient norm finite)

    @property
    def loss(self) -> float:
        """`total` as a float (one device sync)."""
        return float(self.total)

    @property
    def applied(self) -> bool:
        """Whether the optimizer stepped (one device sync)."""
        return bool(self.ok)


def _fused_devices() -> list:
    try:
        from torch.utils._foreach_utils import _get_fused_kernels_supported_devices
        return _get_fused_kernels_supported_devices()
    except ImportError:  # an older or newer torch without it: the host-side skip
        return []


def adam(groups, device: str, **options) -> torch.optim.Adam:
    """torch.optim.Adam over `groups` on `device`, fused where torch has the fused kernel for the
    device (CUDA and CPU in torch >= 2.4): the same update as the default (foreach) Adam, in one
    kernel, and able to skip itself on a device flag (`skips_on_device`). Elsewhere the foreach one."""
    fused = torch.device(device).type in _fused_devices()
    return torch.optim.Adam(groups, fused=fused or None, **options)


def skips_on_device(optimizer: torch.optim.Optimizer) -> bool:
    """True if `optimizer` skips its update when its `found_inf` tensor is 1 (fused Adam/AdamW)."""
    return bool(getattr(optimizer, "_step_supports_amp_scaling", False)
                and all(group.get("fused") for group in optimizer.param_groups))


def set_fused(optimizer: torch.optim.Optimizer, fused: bool) -> None:
    """After `optimizer.load_state_dict` (which takes the saved groups' flags): make the groups fused or
    not, as this process built the optimizer (`skips_on_device` of the fresh one), whatever saved the
    state — e.g. a checkpoint of a foreach Adam. A fused Adam reads each parameter's step count on the
    parameter's device: moved there. `capturable` is cleared. Counts and moments are unchanged."""
    for group in optimizer.param_groups:
        # capturable: set by whoever records the step in a CUDA graph (`StepGraphs`), not by the checkpoint
        group["fused"], group["foreach"], group["capturable"] = (True if fused else None), None, False
        for p in group["params"]:
            state = optimizer.state.get(p)
            if fused and state and torch.is_tensor(state.get("step")) and state["step"].device != p.device:
                state["step"] = state["step"].to(dtype=torch.float32, device=p.device)


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
    total = loss.detach()
    scaler.unscale_(optimizer)
    # One norm over all gradients: non-finite if any gradient is.
    norm = torch.nn.utils.clip_grad_norm_(model.parameters(), clip_grad or math.inf)
    ok = torch.isfinite(total) & torch.isfinite(norm)
    if skips_on_device(optimizer):
        skip = (~ok).to(torch.float32)
        if scaler.is_enabled():  # the scaler's own overflow flag (gradients already unscaled above)
            for found in scaler._found_inf_per_device(optimizer).values():
                skip = torch.maximum(skip, found.to(skip.device))
        ok = skip == 0
        optimizer.found_inf = skip  # read by the fused kernel: no update, step counts unchanged
        try:
            optimizer.step()
        finally:
            del optimizer.found_inf
    elif bool(ok):  # host-side skip: one sync
        scaler.step(optimizer)
    scaler.update()
    optimizer.zero_grad(set_to_none=True)
    # The predictions without their autograd graph: it would keep the step's saved tensors and the
    # parameters' gradient-accumulation nodes alive into the next step (CUDA graphs record those nodes'
    # streams: `lpmace.train.cuda_graphs`).
    if out is not None:
        out = {k: v.detach() if torch.is_tensor(v) else v for k, v in out.items()}
    return StepResult(out=out, local_loss=local_loss, total=total, ok=ok)
