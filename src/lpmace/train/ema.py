"""Exponential moving average of the weights, used for validation, checkpoints and the final model.

decay_t = min(decay, (1 + t) / (10 + t)) after t updates (the warm-up torch_ema uses, which
mace-torch trains with), so early averages are not dominated by the random initialisation.

Only finite weights are ever averaged in, and the update reads nothing back to the host: the count
t lives on the device, the shadow weights in one flat buffer per (device, dtype) (`shadow` holds
views of it), and an update that must not happen (the step was skipped, or the weights are not
finite) is dropped by a device-side `where`, so a training step never waits for it.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Dict, List, Optional, Tuple

import torch


class EMA:
    def __init__(self, model: torch.nn.Module, decay: float):
        self.decay = decay
        params = {k: v.detach() for k, v in model.named_parameters()}
        groups: Dict[tuple, List[str]] = {}
        for name, p in params.items():
            groups.setdefault((p.device, p.dtype), []).append(name)
        self._flat: List[Tuple[torch.Tensor, List[str]]] = []  # (buffer, the parameters it holds, in order)
        self.shadow: Dict[str, torch.Tensor] = {}
        for names in groups.values():
            buffer = torch.cat([params[k].reshape(-1) for k in names])
            offset = 0
            for k in names:
                n = params[k].numel()
                self.shadow[k] = buffer[offset:offset + n].view_as(params[k])
                offset += n
            self._flat.append((buffer, names))
        device = next(iter(params.values())).device if params else "cpu"
        self._count = torch.zeros((), dtype=torch.float64, device=device)  # t, on the device

    @property
    def updates(self) -> int:
        """t, the number of updates averaged in so far (reads the device: not for the step loop)."""
        return int(self._count.item())

    @torch.no_grad()
    def update(self, model: torch.nn.Module, ok: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Average the weights of `model` in, if they are all finite and `ok` (a [] bool on the device,
        e.g. "the optimizer step took effect"; None: True). Returns whether the weights are all finite
        ([] bool on the device); nothing is read back."""
        params = dict(model.named_parameters())
        current = [torch.cat([params[k].detach().reshape(-1) for k in names]) for _, names in self._flat]
        finite = torch.stack([torch.isfinite(c).all() for c in current]).all()
        keep = finite if ok is None else finite & ok
        self._count += keep
        t = self._count
        weight = 1 - ((1 + t) / (10 + t)).clamp(max=self.decay)  # float64, as the decay in Python
        for (buffer, _), c in zip(self._flat, current):
            buffer.copy_(torch.where(keep, torch.lerp(buffer, c, weight.to(buffer.dtype)), buffer))
        return finite

    @contextmanager
    def applied(self, model: torch.nn.Module):
        """Temporarily load the averaged weights into `model`."""
        params = dict(model.named_parameters())
        saved = {k: p.detach().clone() for k, p in params.items()}
        with torch.no_grad():
            for k, p in params.items():
                p.copy_(self.shadow[k])
        try:
            yield model
        finally:
            with torch.no_grad():
                for k, p in params.items():
                    p.copy_(saved[k])

    def state_dict(self) -> dict:
        return {"decay": self.decay, "updates": self.updates, "shadow": dict(self.shadow)}

    def snapshot(self) -> dict:
        """A copy of the state (state_dict shares the live tensors), to roll back to; reads nothing back."""
        return {"decay": self.decay, "updates": self._count.clone(),
                "shadow": {k: v.detach().clone() for k, v in self.shadow.items()}}

    def load_state_dict(self, state: dict):
        self.decay = float(state["decay"])
        self._count.copy_(torch.as_tensor(state["updates"], dtype=torch.float64))
        for k, v in state["shadow"].items():
            self.shadow[k].copy_(v)
