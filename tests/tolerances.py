"""How far a low-precision result may be from its float64 value: one table per dtype, and the checks
the kernel and backend tests share (imported by tests as `tolerances`).

Two kinds of bound:

- rounding: the same rounded operands summed exactly (in float64) and by the code under test. A sum of
  products computed with unit roundoff u along a chain of at most n roundings is within γ_n·Σ|terms|
  of the exact sum, γ_n = n·u / (1 − n·u) (Higham, "Accuracy and Stability of Numerical Algorithms",
  §3.1); Σ|terms| is the same formula evaluated on the absolute values of its operands. The u that
  counts is the accumulator's (float32 for 16-bit operands, DESIGN.md rule 3), plus the rounding of
  results to their own dtype: a derivative for a 16-bit input is 16-bit, and autograd adds its
  contributions (at most four here) in that dtype. A float16 accumulator is 2¹³ times worse than
  float32 and fails wherever the result is float32 (the forward, and derivatives for float32 inputs).
- end to end (flash-attention's rule for 16-bit): against float64 on the unrounded inputs, the error
  is at most twice plain PyTorch's own error in the same precision.
"""

from __future__ import annotations

import math

import torch

# operand dtype: (unit roundoff u = 2^-(mantissa bits + 1), the dtype its sums accumulate in,
#                 relative error of a whole model's site energies, interaction energy and forces
#                 against fp64 when its operands are in this dtype).
# The model column: 32 u for 16-bit (measured on the tiny test models: bf16-mixed at most 4.1 u,
# fp16-mixed 7.1 u); fp32's ~30 u (1.8e-6 measured) is set by the float32 geometry and readout, so
# 1e-5 there. A model that drops a path or returns only the E0s is off by ~1.
ROUNDING = {
    torch.float64: (2.0**-53, torch.float64, 1e-12),
    torch.float32: (2.0**-24, torch.float32, 1e-5),
    torch.bfloat16: (2.0**-8, torch.float32, 32 * 2.0**-8),
    torch.float16: (2.0**-11, torch.float32, 32 * 2.0**-11),
}


def unit_roundoff(dtype: torch.dtype) -> float:
    return ROUNDING[dtype][0]


def gamma(n: int, u: float) -> float:
    """The relative (to Σ|terms|) error bound of n rounded operations with unit roundoff u."""
    return n * u / (1 - n * u)


def accumulation_bound(roundings: int, dtype: torch.dtype) -> float:
    """γ_n of the accumulator of `dtype` operands."""
    return gamma(roundings, unit_roundoff(ROUNDING[dtype][1]))


def model_bound(dtype: torch.dtype) -> float:
    """Relative error of a model evaluated with `dtype` operands against fp64 (the table's last column)."""
    return ROUNDING[dtype][2]


def assert_rounding_error(got, exact, scale, roundings: int, dtype: torch.dtype, what: str = "") -> None:
    """|got − exact| <= (γ_n(accumulator of dtype) + γ_4(got's dtype))·scale, element by element.

    exact: float64 on the same rounded operands; scale: Σ|terms| (the formula on absolute values)."""
    exact, scale = exact.double(), scale.double()
    allowed = (accumulation_bound(roundings, dtype) + gamma(4, unit_roundoff(got.dtype))) * scale
    allowed = allowed + 4 * torch.finfo(got.dtype).tiny * torch.finfo(got.dtype).eps  # subnormal spacing
    excess = (got.double() - exact).abs() - allowed
    worst = excess.max().item() if excess.numel() else -1.0
    assert worst <= 1e-300, (f"{what}: error exceeds the {dtype} accumulation bound by {worst:.3g} "
                             f"(scale {scale.abs().max().item():.3g})")


def assert_at_most_twice_plain_torch(got, plain, truth, what: str = "") -> None:
    """max|got − truth| <= 2·max|plain − truth| (plain: PyTorch in the same 16-bit precision)."""
    mine = (got.double() - truth.double()).abs().max().item() if truth.numel() else 0.0
    theirs = (plain.double() - truth.double()).abs().max().item() if truth.numel() else 0.0
    if not math.isfinite(theirs):  # plain float16 overflowed (969 monomials at real size): no bound from it
        return
    assert mine <= 2 * theirs, f"{what}: error {mine:.3g} is more than twice plain PyTorch's {theirs:.3g}"


def forward_and_two_derivatives(fn, inputs, weights, v):
    """[out, ∂(Σ weights·out)/∂inputs..., ∂(Σ_k v_k·first_k)/∂inputs...]: the quantities of inference,
    forces and the force loss's gradients. weights and v are float64 (exactly representable in every
    input's dtype, so that projecting does not round); absent derivatives are zeros."""

    def grads(scalar, create_graph):
        found = torch.autograd.grad(scalar, inputs, create_graph=create_graph, allow_unused=True)
        return [torch.zeros_like(x) if g is None else g for g, x in zip(found, inputs)]

    out = fn(*inputs)
    first = grads((out.double() * weights).sum(), True)
    terms = [(f.double() * vk).sum() for f, vk in zip(first, v) if f.requires_grad]
    second = grads(sum(terms), False) if terms else [torch.zeros_like(x) for x in inputs]
    return [out, *first, *second]


def representable(x: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """x rounded to dtype, back in float64: cotangents that no cast in the autograd graph rounds again."""
    return x.to(dtype).double()


def check_low_precision_kernel(kernel, plain, leaves, dtypes, dtype, roundings, names, seed=0, magnitude=None) -> None:
    """A kernel on float64 `leaves` rounded to `dtypes`, forward and two derivatives, against `plain`
    (an independent formula that computes in its first input's dtype; `magnitude`, when given, is the
    same formula with its own constants replaced by their absolute values, for Σ|terms|):

    - within `assert_rounding_error` of float64 sums of the same rounded operands (catches a kernel
      that accumulates in less than float32 and any dropped term);
    - for 16-bit `dtype`, at most twice plain PyTorch's own error in that dtype, both against float64
      on the unrounded leaves.
    """
    device = leaves[0].device
    gen = torch.Generator(device=device).manual_seed(seed)

    def randn_as(x, d):
        return representable(torch.randn(x.shape, generator=gen, device=device, dtype=torch.float64), d)

    rounded = [x.detach().to(d) for x, d in zip(leaves, dtypes)]
    with torch.no_grad():
        shape = plain(*[r.double() for r in rounded]).shape
    weights = representable(torch.randn(shape, generator=gen, device=device, dtype=torch.float64), dtype)
    v = [randn_as(x, d) for x, d in zip(leaves, dtypes)]

    def chain(fn, inputs, w=weights, v=v):
        return forward_and_two_derivatives(fn, [x.detach().clone().requires_grad_() for x in inputs], w, v)

    got = chain(kernel, rounded)
    exact = chain(plain, [r.double() for r in rounded])
    scale = chain(magnitude or plain, [r.double().abs() for r in rounded], weights.abs(), [x.abs() for x in v])
    labels = ["forward"] + [f"d/d{n}" for n in names] + [f"d²/d{n}" for n in names]
    for label, g, e, s in zip(labels, got, exact, scale):
        assert g.shape == e.shape, label
        assert_rounding_error(g, e, s, roundings, dtype, f"{dtype} {label}")
    if dtype.itemsize == 2:
        truth = chain(plain, [x.double() for x in leaves])
        same_precision = chain(plain, rounded)
        for label, g, p, t in zip(labels, got, same_precision, truth):
            assert_at_most_twice_plain_torch(g, p, t, f"{dtype} {label}")
