"""Exponential moving average of the weights, used for validation, checkpoints and the final model.

decay_t = min(decay, (1 + t) / (10 + t)) after t updates (the warm-up torch_ema uses, which
mace-torch trains with), so early averages are not dominated by the random initialisation.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Dict

import torch


class EMA:
    def __init__(self, model: torch.nn.Module, decay: float):
        self.decay = decay
        self.updates = 0
        self.shadow: Dict[str, torch.Tensor] = {
            k: v.detach().clone() for k, v in model.named_parameters()
        }

    @torch.no_grad()
    def update(self, model: torch.nn.Module):
        self.updates += 1
        d = min(self.decay, (1 + self.updates) / (10 + self.updates))
        params = list(model.named_parameters())
        torch._foreach_lerp_([self.shadow[k] for k, _ in params], [p.detach() for _, p in params], 1 - d)

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
        """A copy of the state (state_dict shares the live tensors), to roll back to."""
        return {"decay": self.decay, "updates": self.updates,
                "shadow": {k: v.detach().clone() for k, v in self.shadow.items()}}

    def load_state_dict(self, state: dict):
        self.decay = float(state["decay"])
        self.updates = int(state["updates"])
        for k, v in state["shadow"].items():
            self.shadow[k].copy_(v)
