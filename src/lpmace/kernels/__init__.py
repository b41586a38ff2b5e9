"""lpmace's fused kernels, each next to its plain PyTorch reference.

    convolution          the conv tensor product (neighbour sums of per-edge tensor products) and its derivatives
    convolution_triton   its kernels, generated per (L, max_ell) with the CG non-zeros as literals
    polynomial           the polynomial contraction behind the symmetric contraction and its derivatives
    monomials            the monomial tables the contraction evaluates
    launch               what every Triton launch needs (availability, the CPU interpreter, block sizes)

Which one a model uses is set on its blocks by `lpmace.backends.use`; nothing here knows the model.
"""

from __future__ import annotations

from lpmace.kernels.convolution import conv_tensor_product
from lpmace.kernels.polynomial import polynomial_contraction, triton_available

__all__ = ["conv_tensor_product", "polynomial_contraction", "triton_available"]
