"""The monomial table of the fused symmetric contraction, and how derivatives act on it.

Every polynomial the contraction needs (the product basis of MACE Eq. 10–11, and its first and
second derivatives) is a linear combination of the monomials of degree ≤ ν in the D = (lmax+1)²
components of one node's features. They are listed once, sorted by degree, as rows of an index
table ``[R, ν]`` padded with D, which stands for the constant 1: a degree-d monomial has ν − d pads.
Sorting by degree makes "all monomials of degree ≤ d" a prefix of the table.

The derivative of monomial r with respect to component j is k·(r with one j removed), where k is the
multiplicity of j in r; `derivative_table` applies that to a coefficient table, so the derivative of
a polynomial is again a polynomial over the same table (one degree shorter), and one kernel evaluates
all of them.
"""

from __future__ import annotations

import bisect
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
        derivative: (source row r, variable j, target row r', multiplicity k) as four lists, by source row.
    """

    def __init__(self, dim: int, degree: int):
        self.dim, self.degree = dim, degree
        rows = [m for d in range(degree + 1) for m in itertools.combinations_with_replacement(range(dim), d)]
        self.row = {m: i for i, m in enumerate(rows)}
        self.rows_up_to = [math.comb(dim + d, d) for d in range(degree + 1)]
        self.index = torch.tensor([list(m) + [dim] * (degree - len(m)) for m in rows], dtype=torch.int64)
        source, variable, target, multiplicity = [], [], [], []
        for m, r in self.row.items():
            for j in sorted(set(m)):
                reduced = list(m)
                reduced.remove(j)
                source.append(r)
                variable.append(j)
                target.append(self.row[tuple(reduced)])
                multiplicity.append(m.count(j))
        self.derivative = (source, variable, target, multiplicity)
        self._flat_target = [t * dim + v for t, v in zip(target, variable)]
        self._cache: dict = {}

    def rows_of(self, monos: torch.Tensor) -> torch.Tensor:
        """Rows [n] of the monomials `monos` [n, d] (variable indices, any order)."""
        return torch.tensor([self.row[tuple(sorted(m))] for m in monos.tolist()], dtype=torch.int64)

    def derivative_tensors(self) -> tuple:
        """(source rows, target·dim + variable, multiplicity) of every derivative entry, int64 on the
        CPU: a model keeps them as buffers, so that a traced graph takes them as inputs rather than
        holding them as constants (a compiled graph with constants on a GPU cannot be saved, torch
        2.11). The entries of the first `rows` rows are the first `derivative_count(rows)`."""
        source, _, _, multiplicity = self.derivative
        return (torch.tensor(source, dtype=torch.int64), torch.tensor(self._flat_target, dtype=torch.int64),
                torch.tensor(multiplicity, dtype=torch.int64))

    def derivative_count(self, rows: int) -> int:
        return bisect.bisect_left(self.derivative[0], rows)  # entries are listed by source row

    def _derivative_indices(self, rows: int, like: torch.Tensor) -> tuple:
        """(source rows, target·dim + variable, multiplicity) of the derivative entries of the first
        `rows` rows, on like's device: cached there, but made afresh while tracing (FakeTensor), whose
        mode must create its own constants."""
        from torch._subclasses.fake_tensor import is_fake

        key = (rows, like.device)
        if key in self._cache and not is_fake(like):
            return self._cache[key]
        source, _, _, multiplicity = self.derivative
        count = self.derivative_count(rows)
        made = (torch.tensor(source[:count], dtype=torch.int64, device=like.device),
                torch.tensor(self._flat_target[:count], dtype=torch.int64, device=like.device),
                torch.tensor(multiplicity[:count], dtype=torch.float64, device=like.device))
        if not is_fake(like):
            self._cache[key] = made
        return made

    def derivative_table(self, table: torch.Tensor, entries: tuple | None = None) -> torch.Tensor:
        """Coefficients of the derivatives of the polynomials in `table`.

        Args:
            table: [S, R, Q, C] coefficients of Q·C polynomials per element (rows: this table's first R).
            entries: `derivative_tensors()` on table's device (a model's buffers), or None: made here.

        Returns:
            [S, R', dim, Q, C] with R' = the rows of degree ≤ (degree of row R−1) − 1:
            out[s, r', j, q, c] = Σ_r k · table[s, r, q, c] over the (r, j, r', k) of `derivative`.
            Differentiable in `table`.
        """
        s, r, q, c = table.shape
        r = int(r)  # whole degrees of a fixed table: specialise under tracing
        top = next(d for d, n in enumerate(self.rows_up_to) if n >= r)
        if self.rows_up_to[top] != r:
            raise ValueError(f"a table must cover whole degrees: {r} rows is not one of {self.rows_up_to}")
        r_out = self.rows_up_to[top - 1] if top > 0 else 0
        if entries is None:
            source, flat_target, weight = self._derivative_indices(r, table)
        else:
            count = self.derivative_count(r)
            source, flat_target, weight = (x[:count] for x in entries)
        terms = table.index_select(1, source) * weight.to(table.dtype)[None, :, None, None]
        out = table.new_zeros(s, r_out * self.dim, q, c).index_add(1, flat_target, terms)
        return out.view(s, r_out, self.dim, q, c)


@functools.lru_cache(maxsize=None)
def monomial_table(dim: int, degree: int) -> MonomialTable:
    return MonomialTable(dim, degree)
