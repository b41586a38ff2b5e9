"""The SiLU of MACE's radial MLP and readout MLP, scaled to unit second moment.

mace-torch (through e3nn's ``normalize2mom``) multiplies SiLU by a constant c so that
E[(c·silu(z))²] = 1 for z ~ N(0, 1). e3nn estimates c from 10⁶ seeded normal samples, which gives
1.6791767923989418 (the exact integral is 1.67653...). Every mace-torch model carries the sampled
value, so lpmace uses it too: imported models then agree to machine precision.
"""

import torch

SILU_NORMALIZATION = 1.6791767923989418


def scaled_silu(x: torch.Tensor) -> torch.Tensor:
    """c · silu(x), same shape and dtype as x."""
    return torch.nn.functional.silu(x) * SILU_NORMALIZATION

# The same constant for the sigmoid gates of the non-linear interaction (mace-torch's gate.py and
# e3nn's Gate draw it the same way): 1.8467055342154763.
SIGMOID_NORMALIZATION = 1.8467055342154763
