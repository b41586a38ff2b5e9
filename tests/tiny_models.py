"""The tiny random MACE the tests share, importable from any test folder (`from tiny_models import
tiny_model`): `from conftest import ...` resolves to whichever folder's conftest was imported first."""

from __future__ import annotations

import torch

from lpmace.compress import compress
from lpmace.model import MACE, MACEConfig

# Isolated-atom energies of 3BPA (eV), from the embedded iso_atoms.xyz.
BPA_E0S = {1: -13.587222780835477, 6: -1029.4889999855063, 7: -1484.9814568572233, 8: -2041.9816003861047}


def tiny_config(**overrides) -> MACEConfig:
    """A MACEConfig for H, C, N, O small enough to evaluate in milliseconds on a CPU."""
    values = dict(
        atomic_numbers=tuple(BPA_E0S),
        E0s=tuple(BPA_E0S.values()),
        r_max=4.0,
        num_bessel=4,
        max_ell=2,
        channels=8,
        max_L=1,
        correlation=(2, 2),
        readout_mlp=4,
        radial_mlp=(8, 8),
        avg_num_neighbors=8.0,
        scale=0.7,
        shift=0.1,
    )
    values.update(overrides)
    return MACEConfig(**values)


def tiny_model(dtype: torch.dtype = torch.float64, seed: int = 0, species_rank=None, int8_embedding=False,
               **overrides) -> MACE:
    """A randomly initialised (seeded) tiny MACE with parameters in `dtype`; with species_rank or
    int8_embedding, its species weights compressed as for training from scratch (random factors)."""
    torch.manual_seed(seed)
    model = MACE(tiny_config(**overrides))
    if species_rank is not None or int8_embedding:
        model = compress(model, species_rank, int8_embedding, how="random")
    return model.to(dtype)
