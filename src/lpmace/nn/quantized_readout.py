"""Readouts as a chain of `torch.nn.Linear` layers, the form in which their weights can be quantized.

`LinearReadout` and `MLPReadout` keep their weights as [in, out] Parameters scaled by 1/sqrt(in)
at run time (mace-torch's layout, shared by the state dict and the interop). Quantization libraries
(torchao's ``quantize_``) act on `nn.Linear` modules, so `ReadoutLayers.from_readout` swaps a readout
for the same function written with `nn.Linear` layers whose weights [out, in] already carry the
1/sqrt(in) factor:

    site energy = layers[-1]( φ( ... φ( layers[0]( h[:, :, 0] ) ) ) )[:, 0],   φ = scaled SiLU

A layer whose weight was quantized (a torchao tensor subclass) computes with float32 activations,
the dtype its weight was quantized from, whatever the policy's readout dtype: torchao's int8 and
float8 kernels take that dtype and no other, and 8-bit weights gain nothing from wider activations.
Layers that were not quantized compute in the policy's readout dtype, like the readouts they replace.
"""

from __future__ import annotations

from typing import List, Optional, Sequence

import torch

from lpmace.nn.activation import scaled_silu
from lpmace.nn.readout import LinearReadout, MLPReadout
from lpmace.precision import scaled_weight

QUANTIZED_COMPUTE_DTYPE = torch.float32


def is_quantized(weight: torch.Tensor) -> bool:
    """True for a torchao quantized weight (a tensor subclass holding `qdata` and `scale`)."""
    return hasattr(weight, "qdata") and hasattr(weight, "scale")


class _StraightThrough(torch.autograd.Function):
    """y = linear(x, W_q) with dynamically quantized activations; ∂y/∂x = W_deq.

    Rounding the activations makes the energy piecewise constant in them: its exact derivative is
    zero almost everywhere, and torchao's dynamic kernels keep no autograd graph. Forces therefore
    use the straight-through derivative, that of x @ W_deqᵀ (the weight-only function), so they
    are not the exact gradient of the energy this layer returns.
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        ctx.weight = weight
        return torch.nn.functional.linear(x, weight)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        return grad @ ctx.weight.dequantize().to(grad.dtype), None


class ReadoutLayers(torch.nn.Module):
    """h [n, C, D] -> site energy [n] through `nn.Linear` layers (no bias) with scaled SiLU between.

    `modes[i]` names how layer i is quantized ("none" until `lpmace.quantize` converts it); layers
    quantized with dynamic activations (`dynamic[i]`) differentiate straight through the rounding.
    """

    def __init__(self, widths: Sequence[int], dtype: torch.dtype = torch.float32):
        super().__init__()
        self.layers = torch.nn.ModuleList(
            torch.nn.Linear(w_in, w_out, bias=False, dtype=dtype) for w_in, w_out in zip(widths[:-1], widths[1:])
        )
        self.modes: List[str] = ["none"] * len(self.layers)
        self.dynamic: List[bool] = [False] * len(self.layers)
        self.requested = "none"  # the mode `lpmace.quantize.quantize_readouts` was asked for

    @classmethod
    def from_readout(cls, readout: torch.nn.Module) -> "ReadoutLayers":
        """The same function as a `LinearReadout` or `MLPReadout`, in the dtype of its weights."""
        if isinstance(readout, MLPReadout):
            weights = [readout.weight_1, readout.weight_2]
        elif isinstance(readout, LinearReadout):
            weights = [readout.weight]
        else:
            raise TypeError(f"not a readout: {type(readout).__name__}")
        widths = [weights[0].shape[0]] + [w.shape[1] for w in weights]
        out = cls(widths, dtype=weights[0].dtype).to(weights[0].device)
        with torch.no_grad():
            for layer, w in zip(out.layers, weights):
                layer.weight.copy_(scaled_weight(w, w.shape[0], w.dtype).t())
        return out

    def forward(self, h: torch.Tensor, dtype: Optional[torch.dtype] = None) -> torch.Tensor:
        """Computes in `dtype` (default: the input's), quantized layers in float32; returns `dtype`."""
        dtype = dtype or h.dtype
        x = h[:, :, 0]
        for i, layer in enumerate(self.layers):
            if i:
                x = scaled_silu(x)
            w = layer.weight
            if not is_quantized(w):
                x = x.to(dtype) @ w.to(dtype).t()
            elif self.dynamic[i]:
                x = _StraightThrough.apply(x.to(QUANTIZED_COMPUTE_DTYPE), w)
            else:
                x = torch.nn.functional.linear(x.to(QUANTIZED_COMPUTE_DTYPE), w)
        return x[:, 0].to(dtype)
