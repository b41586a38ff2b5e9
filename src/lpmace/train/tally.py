"""What the steps of an epoch did, kept on the device and read back every few steps.

A step leaves on the device its loss, whether its update took effect, whether the weights are
finite after it, whether this rank's loss is finite, and which structures of its batch predicted a
non-finite energy or force. `read_back` copies the accumulated records to the host in one sync
(one more per step with a non-finite loss, to name its structures) and replays the steps in order
with the rules the trainer always had: a step whose update took effect counts as kept; one that was
skipped counts as skipped, and if its loss was not finite its structures are named; a step that
took effect but left non-finite weights asks for the epoch's start to be restored (the kept steps
before it are lost). Steps that ran after it, on those non-finite weights, until the read-back
noticed, are skipped too (their losses are not in the mean, their structures are not named).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Dict, List, Optional

import torch

from lpmace.train.health import nonfinite_mask, structures_in
from lpmace.train.step import StepResult


@dataclass
class EpochTally:
    kept: int = 0  # steps whose update is still in the weights
    skipped: int = 0  # steps without effect (restored ones included)
    restored: int = 0  # steps that left non-finite weights (each rolled back to the epoch's start)
    nonfinite: int = 0  # steps skipped for a non-finite loss on this rank
    culprits: Dict[int, int] = field(default_factory=dict)  # training-graph index -> non-finite-loss batches
    total: float = 0.0  # sum of the finite losses
    count: int = 0  # number of finite losses
    last_loss: float = math.nan  # the latest step's loss (for a progress bar)
    pending: List[tuple] = field(default_factory=list)  # steps not read back yet

    def add(self, step: int, result: StepResult, finite: torch.Tensor, graph, indices: List[int]) -> None:
        """Keep step `step`'s result; `finite`: [] bool, the weights after it are finite; `indices`: the
        training graphs of this rank's batch. Reads nothing back."""
        record = torch.stack([result.total.to(torch.float64), result.ok.to(torch.float64),
                              finite.to(torch.float64), torch.isfinite(result.local_loss).to(torch.float64)])
        mask = None if result.out is None else nonfinite_mask(result.out, graph)
        self.pending.append((step, record, mask, indices))

    def read_back(self) -> Optional[int]:
        """Replay the pending steps (see the module docstring); returns the step after which the weights
        were no longer finite (the caller restores the epoch's start), or None."""
        if not self.pending:
            return None
        records = torch.stack([record for _, record, _, _ in self.pending]).tolist()  # the one sync
        bad_after = None
        for (step, _, mask, indices), (loss, ok, finite, local_finite) in zip(self.pending, records):
            self.last_loss = loss
            if bad_after is not None:  # ran on the non-finite weights of an earlier step
                self.skipped += 1
                continue
            if math.isfinite(loss):
                self.total, self.count = self.total + loss, self.count + 1
            if ok and finite:
                self.kept += 1
            elif ok:  # a finite gradient stepped to non-finite weights (a huge lr)
                self.skipped, self.restored, self.kept = self.skipped + 1, self.restored + 1, 0
                bad_after = step
            else:
                self.skipped += 1
                if mask is not None and not local_finite:
                    self.nonfinite += 1
                    for j in structures_in(mask):
                        i = indices[j]  # the training structure at batch position j
                        self.culprits[i] = self.culprits.get(i, 0) + 1
        self.pending.clear()
        return bad_after
