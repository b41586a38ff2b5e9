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
    auto        triton on CUDA when triton imports, else reference.

An explicitly requested backend never falls back: "triton" without triton, or on a CPU without
TRITON_INTERPRET=1, and "compiled" without what it needs are errors that say so.
"""

from __future__ import annotations

import torch

from lpmace.errors import InputError
from lpmace.kernels.polynomial import polynomial_contraction, triton_available

__all__ = ["BACKENDS", "polynomial_contraction", "resolve_backend", "triton_available"]

BACKENDS = ("auto", "reference", "triton", "compiled")


def resolve_backend(name: str, device: torch.device | str) -> str:
    """The backend that `name` means on `device`: "auto" resolved, others checked and returned."""
    if name not in BACKENDS:
        raise InputError(f"backend must be one of {', '.join(BACKENDS)}, got {name!r}")
    if name == "auto":
        return "triton" if torch.device(device).type == "cuda" and triton_available() else "reference"
    if name == "triton" and not triton_available():
        raise InputError("backend 'triton' needs the triton package (pip install triton)")
    if name == "compiled":
        from lpmace.kernels.compiled import compiled_available

        reason = compiled_available(device)
        if reason:
            raise InputError(reason)
    return name
