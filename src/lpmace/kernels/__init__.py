"""Fused kernels and the backend switch.

A backend names how the model's heavy blocks are computed; parameters and state dicts are the same
whatever the backend, so it is a run-time choice (`MACE.forward(..., backend=...)`, the calculator,
the trainer config, `lpmace bench --backends`):

    reference   plain PyTorch (the definition every fast path is tested against);
    triton      the conv tensor product (`convolution.conv_tensor_product`: neighbour sums without
                [edges, channels, paths] tensors) and the symmetric contraction
                (`polynomial_contraction`) as Triton kernels, forward and all derivatives; on the CPU
                only under TRITON_INTERPRET=1 (slow, for tests);
    compiled    energy → forces (→ stress) traced into one graph, the derivative included, and
                compiled with torch.compile (`lpmace.kernels.compiled`); the heavy blocks inside are
                the Triton kernels on CUDA and the reference ops on the CPU (needs a C++ compiler);
                the first call of each kind of batch pays for tracing and compiling;
    auto        on CUDA with triton: "compiled" for training (`Trainer`: steps repeat for hours, so
                compiling once pays; single process only), "triton" for everything else (the
                calculator, eval, MD: no compile wait); reference without CUDA or triton.
                H200, medium model, 2026-11-26: training step triton 68.8 ms, compiled 32.7 ms;
                4,096-atom inference triton 51.9 ms, compiled 45.7 ms after about 35 s of compiling.

An explicitly requested backend never falls back: "triton" without triton, or on a CPU without
TRITON_INTERPRET=1, and "compiled" without what it needs are errors that say so.
"""

from __future__ import annotations

import torch

from lpmace.errors import InputError
from lpmace.kernels.polynomial import polynomial_contraction, triton_available

__all__ = ["BACKENDS", "polynomial_contraction", "resolve_backend", "triton_available"]

BACKENDS = ("auto", "reference", "triton", "compiled")


def resolve_backend(name: str, device: torch.device | str, training: bool = False) -> str:
    """The backend that `name` means on `device`: "auto" resolved (for a training run if `training`),
    others checked and returned."""
    if name not in BACKENDS:
        raise InputError(f"backend must be one of {', '.join(BACKENDS)}, got {name!r}")
    if name == "auto":
        if not (torch.device(device).type == "cuda" and triton_available()):
            return "reference"
        return "compiled" if training else "triton"
    if name == "triton" and not triton_available():
        raise InputError("backend 'triton' needs the triton package (pip install triton)")
    if name == "compiled":
        from lpmace.kernels.compiled import compiled_available

        reason = compiled_available(device)
        if reason:
            raise InputError(reason)
    return name
