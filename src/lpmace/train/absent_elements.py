"""Fine-tuning: the elements the data lacks keep their element-dependent weights.

A foundation model knows many elements (89 for MPA-0); a fine-tuning set usually has a few. For the
others, the element-dependent weights W[z] (the embedding row, the skip connections' and symmetric
contractions' W[z]: `lpmace.compress.element_weight_slots`) get no gradient from the loss, since no
node of element z occurs. But weight decay (coupled, as in mace-torch: the gradient gets λ·W) still
reaches the skip and contraction weights, and Adam divides that gradient by its own magnitude, so
every step moves them by about lr whatever λ is (measured: 0.06 after six steps at lr 0.01, as much
as the trained element's). A few hundred steps would erase what the model knew of those elements.
`keep_absent_elements` restores their rows after every optimizer step, so the other elements
change only through the weights all elements share (radial MLPs, linears, readouts, a low-rank
basis B). The non-linear block's per-element sender/receiver embeddings get neither gradient nor
decay, so they stay as they are without help.
"""

from __future__ import annotations

from typing import Iterable

import torch

from lpmace.nn.element_weights import LowRankElementWeight

__all__ = ["keep_absent_elements"]


def _element_parameters(model) -> list:
    """The trainable [S, ...] tensors of `model`'s element weights (full weights and low-rank
    coordinates A; int8 tables are not trained)."""
    from lpmace.compress import element_weight_slots

    found = []
    for owner, name, role in element_weight_slots(model):
        stored = getattr(owner, name)
        for w in [stored] if role == "embedding" else list(stored.values() if hasattr(stored, "values") else stored):
            w = w.A if isinstance(w, LowRankElementWeight) else w
            if isinstance(w, torch.nn.Parameter):
                found.append(w)
    return found


def keep_absent_elements(model, optimizer: torch.optim.Optimizer, present: Iterable[int]) -> list:
    """Make every step of `optimizer` leave the element weights of `model`'s elements not in
    `present` (atomic numbers) as they are now; returns those elements' atomic numbers."""
    present = set(int(z) for z in present)
    absent = [z for z in model.config.atomic_numbers if z not in present]
    if not absent:
        return []
    parameters = _element_parameters(model)
    rows = torch.tensor([model.config.atomic_numbers.index(z) for z in absent],
                        device=parameters[0].device if parameters else "cpu")
    saved = [p.detach()[rows].clone() for p in parameters]

    @torch.no_grad()
    def restore(*_):
        for p, rows_then in zip(parameters, saved, strict=True):
            p[rows] = rows_then

    optimizer.register_step_post_hook(restore)
    return absent
