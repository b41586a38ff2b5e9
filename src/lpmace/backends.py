"""Backends: how a model's heavy blocks are computed, chosen after the model is built.

The heavy blocks (`nn.interaction.ConvTensorProduct`, `nn.product.SymmetricContraction`) each own an
``implementation`` and hold no parameters for it, so state dicts are the same whatever the backend.
`use` walks a model once and sets them all (nequip's ``enable_CuEquivariance`` pattern). A new heavy
block joins by declaring ``IMPLEMENTATIONS`` (a class attribute) and reading ``self.implementation``.

    run = lpmace.backends.use(model, "triton")     # in place; returns what to call: here the model
    out = run(graph, precision="bf16-mixed")

    reference   plain PyTorch (the definition every fast path is tested against);
    triton      the conv tensor product (`kernels.convolution`: neighbour sums without [edges, channels,
                paths] tensors) and the symmetric contraction (`kernels.polynomial`) as Triton kernels,
                forward and all derivatives; on the CPU only under TRITON_INTERPRET=1 (slow, for tests);
    compiled    the blocks as for "triton" on CUDA and "reference" on the CPU, and the model wrapped by
                `lpmace.compile.Compiled`: energy → forces (→ stress) traced into one graph, the derivative
                included, and compiled with torch.compile; the first call of each kind of batch pays for
                tracing and compiling (needs triton on CUDA, a C++ compiler on the CPU);
    auto        on CUDA with triton: "compiled" for training (steps repeat for hours, so compiling once
                pays; single process only), "triton" for everything else (the calculator, eval, MD: no
                compile wait); reference without CUDA or triton.
                H200, medium model, 2026-11-26: training step triton 68.8 ms, compiled 32.7 ms;
                4,096-atom inference triton 51.9 ms, compiled 45.7 ms after about 35 s of compiling.

An explicitly requested backend never falls back: "triton" without triton, or on a CPU without
TRITON_INTERPRET=1, and "compiled" without what it needs are errors that say so. Backends are a
run-time choice: model files do not record them (a file written on a GPU loads on a CPU).

This module imports torch only when called, so the command line can name BACKENDS without it.
"""

from __future__ import annotations

from typing import Callable, Optional

from lpmace.errors import InputError

__all__ = ["BACKENDS", "implementation", "resolve", "use"]

BACKENDS = ("auto", "reference", "triton", "compiled")


def resolve(name: str, device, training: bool = False) -> str:
    """The backend that `name` means on `device`: "auto" resolved (for a training run if `training`),
    the others checked and returned."""
    import torch

    from lpmace.kernels.launch import triton_available

    if name not in BACKENDS:
        raise InputError(f"backend must be one of {', '.join(BACKENDS)}, got {name!r}")
    if name == "auto":
        if not (torch.device(device).type == "cuda" and triton_available()):
            return "reference"
        return "compiled" if training else "triton"
    if name == "triton" and not triton_available():
        raise InputError("backend 'triton' needs the triton package (pip install triton)")
    if name == "compiled":
        from lpmace.compile import compiled_available

        reason = compiled_available(device)
        if reason:
            raise InputError(reason)
    return name


def use(model, name: str = "auto", device=None, *, training: bool = False) -> Callable:
    """Set the implementation of every heavy block of `model` for backend `name` on `device` (default:
    the device of the model's parameters), in place, and return what to call: `model` itself, or for
    "compiled" a `lpmace.compile.Compiled` around it (call it like the model; its other attributes are
    the model's). `training` resolves "auto" for a training run."""
    import torch

    if device is None:
        device = next(model.parameters()).device
    resolved = resolve(name, device, training)
    blocks = "reference"
    if resolved == "triton" or (resolved == "compiled" and torch.device(device).type == "cuda"):
        blocks = "triton"
    for module in model.modules():
        if hasattr(module, "IMPLEMENTATIONS"):  # a block without a fused form keeps its reference
            module.implementation = blocks if blocks in module.IMPLEMENTATIONS else "reference"
    if resolved == "compiled":
        from lpmace.compile import Compiled

        return Compiled(model)
    return model


def implementation(model) -> Optional[str]:
    """The implementation the heavy blocks of `model` hold ("reference" or "triton"), or None if they
    differ (a caller set some by hand)."""
    found = {module.implementation for module in model.modules() if hasattr(module, "IMPLEMENTATIONS")}
    return found.pop() if len(found) == 1 else None
