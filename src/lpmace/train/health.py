"""Is the run still training? Non-finite weights, the structures behind a non-finite loss, epochs
in which most steps did nothing, and a final model no one should use.

What the trainer does with the answers (skip, roll back, warn, fail) is in lpmace.train.trainer.
"""

from __future__ import annotations

import math
from typing import Dict, List, Sequence

import torch

from lpmace.precision import PrecisionPolicy


def weights_finite(parameters: Sequence[torch.Tensor]) -> bool:
    """True if every weight is finite: one fused 2-norm per tensor (a sum, which carries NaN and inf
    on every backend, as in clip_grad_norm_) and one device sync. Master weights are >= fp32, so
    the norm of sane weights does not overflow."""
    norms = torch._foreach_norm([p.detach() for p in parameters], 2)
    return bool(torch.isfinite(torch.stack(norms)).all())


def nonfinite_mask(out: dict, graph) -> torch.Tensor:
    """[n_graphs] bool on the device: the structures of the batch with a non-finite predicted energy
    or force. Nothing is read back (the step loop keeps it until its next read-back)."""
    bad = ~torch.isfinite(out["energy"].detach())
    if out.get("forces") is not None:
        atoms = ~torch.isfinite(out["forces"].detach()).all(dim=-1)
        bad = bad | (torch.zeros_like(bad, dtype=torch.int64).index_add_(0, graph.batch, atoms.long()) > 0)
    return bad


def structures_in(mask: torch.Tensor) -> List[int]:
    """Positions in the batch where `mask` (`nonfinite_mask`) is True; all of them when none is (the
    loss overflowed on finite predictions). One device sync."""
    return mask.nonzero().flatten().tolist() or list(range(mask.shape[0]))


def structure_names(indices: Sequence[int], sources: Sequence[str], limit: int = 8) -> str:
    """'train.xyz:frame 3, 17' for the training structures read from frames 3 and 17 of train.xyz."""
    names = [sources[i] if i < len(sources) else f"training structure {i}" for i in indices[:limit]]
    parts, previous = [], None
    for name in names:  # the file once per run of frames from it
        path, sep, frame = name.rpartition(":frame ")
        parts.append(frame if sep and path == previous else name)
        previous = path if sep else None
    more = f" and {len(indices) - limit} more" if len(indices) > limit else ""
    return ", ".join(parts) + more


def advice(lr: float, policy: PrecisionPolicy) -> str:
    lower = f"lower lr (now {lr:g})"
    return f"{lower} or use a wider precision than {policy.name}" if policy.is_16bit else lower


def epoch_warnings(epoch: int, *, steps: int, kept: int, skipped: int, restored: int, culprits: Dict[int, int],
                   nonfinite: int, sources: Sequence[str], loss_scale, hint: str) -> List[str]:
    """What the user has to act on after an epoch of `steps` steps, of which `kept` still count:
    `skipped` skipped (`restored` of them by a rollback), `nonfinite` for a non-finite loss, from the
    training structures `culprits` (index -> times)."""
    warnings = []
    # A few structures: likely bad input, named. Non-finite losses all over the epoch: the model
    # diverged (the warning below), and a list of most of the data would only mislead.
    if culprits and (len(culprits) <= 8 or 2 * nonfinite < steps):
        order = sorted(culprits, key=lambda i: (-culprits[i], i))
        warnings.append(f"epoch {epoch}: {nonfinite} step(s) skipped for a non-finite loss, from "
                        f"{structure_names(order, sources)} (a structure named in every epoch is likely bad input)")
    if steps and 2 * (steps - kept) >= steps:
        why = [f"{skipped - restored} skipped (non-finite loss or gradients)"]
        if restored:
            why.append(f"{restored} rolled back to the epoch's start (non-finite weights)")
        if loss_scale is not None:
            why.append(f"loss scale now {loss_scale:g}")
        warnings.append(f"epoch {epoch}: only {kept} of {steps} steps took effect ({'; '.join(why)}); {hint}")
    return warnings


def nonfinite_metrics(metrics: dict) -> Dict[str, float]:
    """The validation RMSEs that are not finite."""
    return {k: v for k, v in metrics.items() if (k.endswith("rmse_mev_per_atom") or k.endswith("rmse_mev_per_A"))
            and isinstance(v, float) and not math.isfinite(v)}
