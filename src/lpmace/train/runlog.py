"""log.jsonl, the run's record: one JSON object per finished epoch, appended as the run goes.

Strict JSON throughout (a NaN metric is written as null: json.dumps would write a bare NaN). A
resumed run drops the rows of epochs after its checkpoint, and a torn last line (the run was killed
mid-write), saying so; a fresh run in a folder without a checkpoint starts a fresh file.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Callable

from lpmace.atomic import atomic_write_text
from lpmace.errors import InputError


def json_safe(value):
    """`value` with every non-finite float (also inside dicts and lists) replaced by None."""
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    return None if isinstance(value, float) and not math.isfinite(value) else value


def trim_log(path: Path, epoch: int, log: Callable[[str], None]):
    """Keep the rows of epochs <= `epoch` (those after it are redone by the resumed run).

    A bad last line is a torn write and is dropped with a note; a bad line elsewhere means the file
    was edited or mixed up, and is refused by its line number."""
    if not path.exists():
        return
    lines = [(n, line) for n, line in enumerate(path.read_text().splitlines(), 1) if line.strip()]
    kept = []
    for i, (n, line) in enumerate(lines):
        try:
            row_epoch = json.loads(line)["epoch"]
        except (ValueError, TypeError, KeyError):
            if i < len(lines) - 1:
                raise InputError(f"{path}:{n}: not a log row of lpmace train; fix or remove the line") from None
            log(f"{path}:{n}: dropped a torn last line (written when the run was stopped)")
            continue
        if row_epoch <= epoch:
            kept.append(line)
    atomic_write_text(path, "".join(line + "\n" for line in kept))


def append_row(path: Path, row: dict):
    try:
        with open(path, "a") as f:
            f.write(json.dumps(json_safe(row)) + "\n")
    except OSError as err:  # a full disk: name the file (a failed write() does not)
        raise OSError(err.errno, err.strerror, str(path)) from err


def row_summary(row: dict) -> str:
    """The console line of an epoch's row."""
    loss = row["train_loss"]
    parts = [f"epoch {row['epoch']}", "loss n/a (every step skipped)" if loss is None else f"loss {loss:.4g}"]
    if "valid_force_rmse_mev_per_A" in row:
        parts += [f"valid E {row.get('valid_energy_rmse_mev_per_atom', float('nan')):.2f} meV/atom",
                  f"F {row['valid_force_rmse_mev_per_A']:.2f} meV/Å"]
    parts.append(f"{row['train_time_s']:.1f} s")
    if row["skipped_steps"]:
        parts.append(f"skipped {row['skipped_steps']}")
    return ", ".join(parts)
