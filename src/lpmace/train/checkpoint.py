"""Training checkpoints: tensors and plain values only, written atomically, read with weights_only.

A checkpoint holds the model, EMA, optimizer, scheduler and loss-scaler states, the epoch and step
counters, the torch RNG state and the run's bookkeeping. Written to a temporary file in the same
folder and renamed over the old one, so a kill at any moment, or a failed write (full disk), leaves
the previous checkpoint intact; a failed write ends the run with `TrainingFailed` naming the path.
"""

from __future__ import annotations

from pathlib import Path

import torch

from lpmace.atomic import atomic_open
from lpmace.errors import InputError, TrainingFailed


def save_checkpoint(state: dict, path: Path):
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        with atomic_open(path, "wb") as f:
            torch.save(state, f)
    except (OSError, RuntimeError) as err:  # a full disk, a quota; torch's writer reports a short write as RuntimeError
        reason = err.strerror if isinstance(err, OSError) and err.strerror else str(err)
        raise TrainingFailed(f"{path}: could not write the checkpoint ({reason}); the previous checkpoint, if any, "
                             "is unchanged: make room and continue with --resume") from err


def load_checkpoint(path: Path) -> dict:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError as err:
        raise InputError(f"{path}: no checkpoint to resume from") from err
    except Exception as err:  # noqa: BLE001 — a corrupt or foreign file is bad input
        raise InputError(f"{path}: not a readable lpmace checkpoint ({type(err).__name__}: {err})") from err
