"""Which torch device a command runs on: ``auto`` (the default everywhere) picks CUDA when present.

torch is imported inside `resolve_device` so that `lpmace --help` (which imports every command's
argument definitions, and so DEVICE_HELP) stays fast.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from lpmace.errors import InputError

if TYPE_CHECKING:
    import torch

__all__ = ["AUTO", "DEVICE_HELP", "resolve_device"]

AUTO = "auto"
DEVICE_HELP = "auto, cpu, cuda or cuda:N (default: auto, i.e. cuda when a GPU is present, else cpu)"


def resolve_device(name: str | torch.device | None, what: str = "--device") -> torch.device:
    """The torch.device `name` means on this machine; ``auto`` or None: cuda if available, else cpu.

    InputError naming `what` (the flag or config key) for a name torch does not know (``gpu``) or a
    CUDA device this machine does not have, so the mistake is one line before any work starts.
    """
    import torch

    if name is None or str(name).strip().lower() == AUTO:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError, ValueError):
        raise InputError(f"{what} {name!r}: not a device; use {DEVICE_HELP.split(' (')[0]}") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise InputError(f"{what} {name}: CUDA is not available on this machine (use cpu or auto)")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise InputError(f"{what} {name}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    return device
