"""Exact constants of the model: tables the physics defines, not weights a fit learns.

The coupling (Clebsch–Gordan) tables of the convolution, the symmetric-contraction basis, the
spherical-harmonic recursion, the Bessel frequencies, the covalent radii and the E0s (~1e3 eV,
DESIGN.md rule 1) are computed once in float64 and held in float64 whatever dtype the model is
cast to. `Module.float()` would round every floating buffer to float32, and an fp64 evaluation of a
float32 model (the reference every other precision is measured against; the bench and the trainer
build float32 models) would then compute with float32-rounded tables: 1e-12 of the energy and 1e-10
of the forces off, where float64 gives 1e-15. Each block rounds a table to the dtype its policy
gives it (`BlockDtypes.table`, or the dtype of its inputs) where it uses it, so the other precisions
compute exactly what they did with rounded buffers.

A cast leaves a constant's float64 tensor in place (moved to the new device if the cast also moves);
a move moves it; a move to where it is, or a no-op, keeps the tensor itself (a recorded CUDA graph
reads it at its address). Constants stay buffers (a traced graph takes them as inputs,
lpmace.compile) and out of the state dict.
"""

from __future__ import annotations

import torch


class ExactConstants(torch.nn.Module):
    """A module whose buffers registered by `register_constant` stay float64 through every cast."""

    _constant_names: tuple = ()

    def register_constant(self, name: str, table: torch.Tensor) -> None:
        """`table` (computed in float64) as a buffer `name`, not in the state dict, that casts leave float64."""
        assert table.dtype == torch.float64, f"constant {name} computed in {table.dtype}, not float64"
        self.register_buffer(name, table, persistent=False)
        self._constant_names = (*self._constant_names, name)

    def _apply(self, fn, recurse=True):
        exact = {name: self._buffers[name] for name in self._constant_names}
        super()._apply(fn, recurse)
        for name, before in exact.items():
            after = self._buffers[name]
            if after.dtype != before.dtype:  # a cast (perhaps with a move): the float64 tensor, where it went
                self._buffers[name] = before.to(after.device)
        return self
