"""Product block: the symmetric contraction (MACE Eq. 10–11), a linear, and the skip connection.

For each node i, channel c and output degree L:

    B_{i,c,LM} = Σ_{ν=1..correlation} Σ_k W^{(L,ν)}_{z_i,k,c} Σ_mono P^{(L,ν)}[mono, M, k] Π_{j∈mono} A_{i,c,j}

P is the polynomial basis of lpmace.o3.symmetric_basis; the weights depend on the element z_i.
The block owns its implementation (`implementation`, set for a whole model by one walk): "reference" forms
the monomials explicitly ([n, C, n_mono]); it is what the fused path is tested against. "triton"
folds weights and basis into one table per element, T[z, c, mono, LM] = Σ_k W[z, k, c] P[mono, LM, k],
and evaluates B = Σ_mono Π A · T with `lpmace.kernels.polynomial_contraction` (monomials formed in
registers; derivatives by the same op). Inside `frozen_weights()` (the model's inference calls) the
fused path keeps the weights out of the autograd graph, so forces do not pay for their gradients.

``active_correlation`` (≤ correlation; a run-time attribute, not in the state dict) leaves the terms
of higher order out of both paths: their weights get no gradient, and the fused path evaluates only
the monomials of degree ≤ the active order. Progressive training (lpmace.train.correlation) keeps
those weights at zero while they are inactive, so a saved model computes the same function at any
order.
"""

from __future__ import annotations

import contextlib
import threading
from typing import Optional

import torch

from lpmace.kernels.monomials import monomial_table
from lpmace.kernels.polynomial import polynomial_contraction
from lpmace.nn.constants import ExactConstants
from lpmace.nn.element_weights import element_weight
from lpmace.nn.linear import EquivariantLinear
from lpmace.o3.symmetric_basis import symmetric_basis
from lpmace.precision import BlockDtypes, PrecisionPolicy

_FROZEN = threading.local()


@contextlib.contextmanager
def frozen_weights(frozen: bool = True):
    """Within it, fused blocks leave their weights out of the autograd graph (like torch.no_grad, for
    the weights only: an inference call differentiates the energy by positions, never by weights)."""
    before = getattr(_FROZEN, "value", False)
    _FROZEN.value = frozen
    try:
        yield
    finally:
        _FROZEN.value = before


class SymmetricContraction(ExactConstants):
    """A [n, C, (lmax_in+1)²], species [n] (indices) -> B [n, C, (lmax_out+1)²].

    Parameters ``weights["L{L}_nu{ν}"]``: [n_elements, n_basis(L, ν), C], initialised N(0,1)/n_basis
    like mace-torch, or their low-rank form; both paths read them through `element_weight`.
    """

    IMPLEMENTATIONS = ("reference", "triton")

    def __init__(self, channels: int, lmax_in: int, lmax_out: int, correlation: int, num_elements: int):
        super().__init__()
        self.implementation = "reference"
        self.lmax_out = lmax_out
        self.correlation = correlation
        self.active_correlation = correlation
        self.weights = torch.nn.ParameterDict()
        table = monomial_table((lmax_in + 1) ** 2, correlation)
        self.rows_up_to = table.rows_up_to  # monomials of degree ≤ d: the first rows_up_to[d] rows
        self.register_buffer("fused_index", table.index, persistent=False)  # [R, ν] monomials of degree ≤ ν
        # the fused kernel's backward: its derivative entries, inputs of a traced graph, not constants
        for name, entries in zip(("gather", "scatter"), table.derivative_tensors()):
            self.register_buffer(f"derivative_{name}", entries, persistent=False)
        for L in range(lmax_out + 1):
            for nu in range(1, correlation + 1):
                monos, coeffs = symmetric_basis(lmax_in, nu, L)
                self.register_buffer(f"monos_L{L}_nu{nu}", monos, persistent=False)
                self.register_buffer(f"rows_L{L}_nu{nu}", table.rows_of(monos), persistent=False)
                self.register_constant(f"coeffs_L{L}_nu{nu}", coeffs)
                k = coeffs.shape[-1]
                self.weights[f"L{L}_nu{nu}"] = torch.nn.Parameter(
                    torch.randn(num_elements, k, channels) / max(k, 1)
                )

    def forward(self, a: torch.Tensor, species: torch.Tensor, dtypes: BlockDtypes,
                grouping: Optional[torch.Tensor] = None):
        """A and the weights are rounded to dtypes.operand; the polynomial and its sums run in
        dtypes.math, with tables in dtypes.table. Output in dtypes.math. Both implementations give the
        same numbers up to summation order. `grouping`: the nodes in element order for the fused
        path's kernels (`lpmace.kernels.launch.element_grouping`, formed once per model call), or None."""
        operand, math_dtype, table_dtype = dtypes.operand, dtypes.math, dtypes.table
        if self.implementation == "triton":
            return self._fused(a, species, operand, math_dtype, table_dtype, grouping)
        a = a.to(operand).to(math_dtype)
        n, c, _ = a.shape
        out = []
        for L in range(self.lmax_out + 1):
            b = a.new_zeros(n, c, 2 * L + 1)
            for nu in range(1, self.active_correlation + 1):
                monos = getattr(self, f"monos_L{L}_nu{nu}")
                coeffs = getattr(self, f"coeffs_L{L}_nu{nu}").to(table_dtype).to(math_dtype)
                if coeffs.shape[-1] == 0:
                    continue
                mono = torch.index_select(a, 2, monos[:, 0])
                for j in range(1, nu):
                    mono = mono * torch.index_select(a, 2, monos[:, j])  # [n, C, n_mono]
                y = (mono @ coeffs.reshape(coeffs.shape[0], -1)).view(n, c, 2 * L + 1, -1)
                w = element_weight(self.weights[f"L{L}_nu{nu}"])
                w = torch.index_select(w.to(operand).to(math_dtype), 0, species)
                b = b + torch.einsum("ncmk,nkc->ncm", y, w)
            out.append(b)
        return torch.cat(out, dim=-1)

    def table(self, operand: torch.dtype, math_dtype: torch.dtype, table_dtype: torch.dtype,
              weight_grads: bool = True) -> torch.Tensor:
        """T [S, C, R, (lmax_out+1)², 1] = Σ_k W[z, k, c] P[mono, LM, k] over the fused monomial rows of
        degree ≤ active_correlation (R of them), in math_dtype."""
        rows = self.rows_up_to[self.active_correlation]
        parts = []
        for L in range(self.lmax_out + 1):
            part = None
            for nu in range(1, self.active_correlation + 1):
                coeffs = getattr(self, f"coeffs_L{L}_nu{nu}").to(table_dtype).to(math_dtype)
                if coeffs.shape[-1] == 0:
                    continue
                w = element_weight(self.weights[f"L{L}_nu{nu}"])
                w = (w if weight_grads else w.detach()).to(operand).to(math_dtype)
                term = torch.einsum("rmk,skc->scrm", coeffs, w)
                full = term.new_zeros(w.shape[0], w.shape[2], rows, 2 * L + 1)
                full = full.index_add(2, getattr(self, f"rows_L{L}_nu{nu}"), term)
                part = full if part is None else part + full
            if part is None:
                first = element_weight(next(iter(self.weights.values())))
                part = first.new_zeros(first.shape[0], first.shape[2], rows, 2 * L + 1, dtype=math_dtype)
            parts.append(part)
        return torch.cat(parts, dim=3).unsqueeze(4)

    def _fused(self, a, species, operand, math_dtype, table_dtype, grouping=None):
        weight_grads = not getattr(_FROZEN, "value", False)
        table = self.table(operand, math_dtype, table_dtype, weight_grads)
        a = a.to(operand) if math_dtype != torch.float64 else a.to(operand).to(math_dtype)
        index = self.fused_index[: table.shape[2]]  # a whole-degree prefix: the active orders' monomials
        derivative = (self.derivative_gather, self.derivative_scatter)
        return polynomial_contraction(a, species, index, table, None, impl="triton", acc=math_dtype,
                                      derivative=derivative, grouping=grouping)


class Product(torch.nn.Module):
    """B = SymmetricContraction(A); h = Linear(B) (+ sc). Output [n, C, (lmax_out+1)²]."""

    def __init__(self, channels: int, lmax_in: int, lmax_out: int, correlation: int, num_elements: int):
        super().__init__()
        self.contraction = SymmetricContraction(channels, lmax_in, lmax_out, correlation, num_elements)
        self.linear = EquivariantLinear([channels] * (lmax_out + 1), channels, lmax_out)

    def forward(self, a, species, sc: Optional[torch.Tensor], policy: PrecisionPolicy,
                grouping: Optional[torch.Tensor] = None):
        """The linear runs in the policy's linear dtype; the skip sum in the accumulate dtype. `grouping`
        as `SymmetricContraction.forward` takes it."""
        b = self.contraction(a, species, policy.block("contraction"), grouping)
        h = self.linear(b, policy.linear)
        if sc is None:
            return h
        return h.to(policy.accumulate) + sc.to(policy.accumulate)
