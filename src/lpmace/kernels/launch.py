"""What every Triton kernel of lpmace needs around its launch: availability, the CPU interpreter
check, the launch device, accumulation dtypes and block sizes."""

from __future__ import annotations

import contextlib
import os

import torch

from lpmace.errors import InputError


def triton_available() -> bool:
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    return True


def accumulate_dtype(dtype: torch.dtype) -> torch.dtype:
    """float64 for float64 operands, else float32 (16-bit operands accumulate in float32)."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def next_power_of_2(x: int) -> int:
    return 1 << max(int(x) - 1, 0).bit_length()


def require_interpreter(device: torch.device) -> None:
    """Triton runs CPU tensors only in its interpreter, which must be chosen before triton is imported."""
    if device.type != "cuda" and os.environ.get("TRITON_INTERPRET") != "1":
        raise InputError("backend 'triton' on the CPU runs the Triton interpreter only when TRITON_INTERPRET=1 "
                         "is set before Python starts; use backend 'reference' on a CPU, or a CUDA device")


def launch_context(device: torch.device):
    """Triton launches on the current CUDA device: make it the tensors' device."""
    return torch.cuda.device(device) if device.type == "cuda" else contextlib.nullcontext()
