"""The monomial table of the fused symmetric contraction, and how derivatives act on it.

Every polynomial the contraction needs (the product basis of MACE Eq. 10–11, and its first and
second derivatives) is a linear combination of the monomials of degree ≤ ν in the D = (lmax+1)²
components of one node's features. They are listed once, sorted by degree, as rows of an index
table ``[R, ν]`` padded with D, which stands for the constant 1: a degree-d monomial has ν − d pads.
Sorting by degree makes "all monomials of degree ≤ d" a prefix of the table.

The derivative of monomial r with respect to component j is k·(r with one j removed), where k is the
multiplicity of j in r. Read from the other side, every (monomial r' of degree < ν, component j) pair has
exactly one source: the derivative table's entry (r', j) is k·T[r' with j added], so `derivative_table`
is a gather (no sums, no atomics), and its gradient, a gather of at most ν entries per source row. The
derivative of a polynomial is again a polynomial over the same table (one degree shorter), and one kernel
evaluates all of them.
"""

from __future__ import annotations

import functools
import itertools
import math

import torch

__all__ = ["MonomialTable", "monomial_table"]


class MonomialTable:
    """Monomials of degree ≤ `degree` in `dim` variables.

    Attributes:
        index: [R, degree] int64, sorted variable indices of each monomial, padded with `dim`.
        rows_up_to: rows_up_to[d] = number of monomials of degree ≤ d (a prefix of the table).
        row: {sorted tuple of variable indices: row}.
    """

    def __init__(self, dim: int, degree: int):
        self.dim, self.degree = dim, degree
        rows = [m for d in range(degree + 1) for m in itertools.combinations_with_replacement(range(dim), d)]
        self.row = {m: i for i, m in enumerate(rows)}
        self.rows_up_to = [math.comb(dim + d, d) for d in range(degree + 1)]
        self.index = torch.tensor([list(m) + [dim] * (degree - len(m)) for m in rows], dtype=torch.int64)
        # gather: target (r', j), r' of degree < degree, flat r'·dim + j -> its source row and multiplicity
        lower = rows[: self.rows_up_to[degree - 1]] if degree > 0 else []
        self._gather = [[self.row[tuple(sorted(m + (j,)))] for m in lower for j in range(dim)],
                        [m.count(j) + 1 for m in lower for j in range(dim)]]
        # scatter (the gather's transpose): source row -> its ≤ degree targets, padded with (0, multiplicity 0)
        targets = [[] for _ in rows]
        for flat, (source, k) in enumerate(zip(*self._gather)):
            targets[source].append((flat, k))
        self._scatter = [[[t for t, _ in ts] + [0] * (degree - len(ts)) for ts in targets],
                         [[k for _, k in ts] + [0] * (degree - len(ts)) for ts in targets]]

    def rows_of(self, monos: torch.Tensor) -> torch.Tensor:
        """Rows [n] of the monomials `monos` [n, d] (variable indices, any order)."""
        return torch.tensor([self.row[tuple(sorted(m))] for m in monos.tolist()], dtype=torch.int64)

    def derivative_tensors(self) -> tuple:
        """(gather [2, R'·dim], scatter [2, R, degree]) int64 on the CPU, R' = rows of degree < `degree`.

        gather[:, r'·dim + j] = (source row, multiplicity) of derivative entry (r', j); scatter[:, r, k] =
        (flat target, multiplicity) of source row r's k-th entry (multiplicity 0: padding). A model keeps
        them as buffers, so that a traced graph takes them as inputs rather than holding them as
        constants (a compiled graph with constants on a GPU cannot be saved, torch 2.11). For the
        table's first `rows` rows (a whole-degree prefix) use gather[:, :rows_up_to[d - 1]·dim] and
        scatter[:, :rows]."""
        return torch.tensor(self._gather, dtype=torch.int64), torch.tensor(self._scatter, dtype=torch.int64)

    def derivative_table(self, table: torch.Tensor, entries: tuple | None = None) -> torch.Tensor:
        """Coefficients of the derivatives of the polynomials in `table`.

        Args:
            table: [S, C, R, P] coefficients of P polynomials per element and channel (rows: this
                table's first R, whole degrees).
            entries: `derivative_tensors()` on table's device (a model's buffers), or None: made here.

        Returns:
            [S, C, R', dim, P] with R' = the rows of degree ≤ (degree of row R−1) − 1:
            out[s, c, r', j, p] = k · table[s, c, r' with j added, p]. Differentiable in `table` to any
            order (its gradient is the transposed gather, whose gradient is this gather).
        """
        s, c, r, p = table.shape
        r = int(r)  # whole degrees of a fixed table: specialise under tracing
        top = next(d for d, n in enumerate(self.rows_up_to) if n >= r)
        if self.rows_up_to[top] != r:
            raise ValueError(f"a table must cover whole degrees: {r} rows is not one of {self.rows_up_to}")
        r_out = self.rows_up_to[top - 1] if top > 0 else 0
        if r_out == 0:
            return table.new_zeros(s, c, 0, self.dim, p)
        if entries is None:
            entries = tuple(x.to(table.device) for x in self.derivative_tensors())
        gather, scatter = entries[0][:, : r_out * self.dim], entries[1][:, :r]
        return _DerivativeMap.apply(table, gather, scatter, False).view(s, c, r_out, self.dim, p)


def _gather_rows(x: torch.Tensor, gather: torch.Tensor) -> torch.Tensor:
    """x [S, C, R, P] -> [S, C, G, P]: x[..., gather[0, g], :] · gather[1, g]."""
    return x.index_select(2, gather[0]) * gather[1].to(x.dtype)[:, None]


def _scatter_rows(y: torch.Tensor, scatter: torch.Tensor) -> torch.Tensor:
    """The transpose of `_gather_rows`: y [S, C, G, P] -> [S, C, R, P], a gather of ≤ ν entries per row."""
    s, c, _, p = y.shape
    r, nu = scatter.shape[1:]
    terms = y.index_select(2, scatter[0].reshape(-1)).view(s, c, r, nu, p)
    weight = scatter[1][:, :, None]
    # padding reads entry 0 with weight 0: masked, so that an inf there stays out of other rows
    return (terms * weight.to(y.dtype)).masked_fill(weight == 0, 0).sum(3)


class _DerivativeMap(torch.autograd.Function):
    """The derivative table's gather (transposed=False) or its transpose; each is the other's gradient."""

    @staticmethod
    def forward(x, gather, scatter, transposed):
        return _scatter_rows(x, scatter) if transposed else _gather_rows(x, gather)

    @staticmethod
    def setup_context(ctx, inputs, output):
        ctx.save_for_backward(*inputs[1:3])
        ctx.transposed = inputs[3]

    @staticmethod
    def backward(ctx, grad):
        gather, scatter = ctx.saved_tensors
        return _DerivativeMap.apply(grad, gather, scatter, not ctx.transposed), None, None, None


@functools.lru_cache(maxsize=None)
def monomial_table(dim: int, degree: int) -> MonomialTable:
    return MonomialTable(dim, degree)
