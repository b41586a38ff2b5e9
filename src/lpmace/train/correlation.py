"""Progressive correlation order: train the symmetric contraction at body order ν < correlation first.

`set_correlation(model, ν)` makes every product's contraction use the orders 1..min(ν, its
correlation) (`SymmetricContraction.active_correlation`) and sets to zero every weight
``products.t.contraction.weights.L{L}_nu{k}`` of an order k above the lower of the old and the new
active order, in the model, in the EMA's shadow and (by dropping it) in the optimizer's state:

- lowering (a fresh model starting the schedule): the left-out weights are zero, so the model with
  all orders, as saved to a file or imported elsewhere, computes the same function as the one trained;
- raising (`correlation_schedule` reaching its next epoch): the newly active weights start at zero,
  so energies and forces are unchanged at the switch, and from then on they are trained.

An inactive weight is outside the autograd graph: its gradient stays None, so Adam (AMSGrad too)
neither steps it nor creates state for it, weight decay included. Once active, its optimizer state
starts from nothing (step 0, zero moments and zero max_exp_avg_sq) like any parameter's first
step, and its EMA from the zero it was set to. Both are idempotent, so a resumed run, which calls
`set_correlation` with the order of its last finished epoch, matches the uninterrupted one.
"""

from __future__ import annotations

from typing import Dict, Optional

import torch

from lpmace.errors import InputError
from lpmace.train.ema import EMA

__all__ = ["active_correlation", "contraction_weights_above", "set_correlation"]


def active_correlation(model) -> int:
    """The highest body order any interaction of `model` (a MACE) uses now."""
    return max(product.contraction.active_correlation for product in model.products)


def contraction_weights_above(model, nu: int) -> Dict[str, torch.nn.Parameter]:
    """{parameter name: weight} of the contraction terms of order > `nu`, over all interactions."""
    found = {}
    for t, product in enumerate(model.products):
        for key, weight in product.contraction.weights.items():
            if int(key.rsplit("_nu", 1)[1]) > nu:
                found[f"products.{t}.contraction.weights.{key}"] = weight
    return found


@torch.no_grad()
def set_correlation(model, nu: int, *, ema: Optional[EMA] = None,
                    optimizer: Optional[torch.optim.Optimizer] = None) -> None:
    """Use orders 1..ν (each interaction capped at its own correlation); zero the weights above
    min(old, new) order in `model`, `ema` and `optimizer` as the module docstring says."""
    top = max(model.config.correlation)
    if isinstance(nu, bool) or not isinstance(nu, int) or not 1 <= nu <= top:
        raise InputError(f"correlation order {nu!r} must be an integer in 1..{top} (the model's correlation)")
    for name, weight in contraction_weights_above(model, min(active_correlation(model), nu)).items():
        weight.zero_()
        if ema is not None:
            ema.shadow[name].zero_()
        if optimizer is not None:
            optimizer.state.pop(weight, None)
    for product in model.products:
        product.contraction.active_correlation = min(nu, product.contraction.correlation)
