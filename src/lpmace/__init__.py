"""lpmace: low-precision training and inference for MACE interatomic potentials."""

import os as _os
from importlib import import_module

__version__ = "0.1.0"

# Whether the user named Inductor's cache folder: torch sets TORCHINDUCTOR_CACHE_DIR itself the first
# time it looks the folder up, so later the variable no longer says (`lpmace.cache.use_compile_cache`).
_INDUCTOR_CACHE_NAMED = "TORCHINDUCTOR_CACHE_DIR" in _os.environ

_PUBLIC = {
    "MACE": "lpmace.model",
    "MACEConfig": "lpmace.model",
    "PrecisionPolicy": "lpmace.precision",
    "Graph": "lpmace.data.graph",
    "graph_from_atoms": "lpmace.data.batching",
    "InputError": "lpmace.errors",
    "save": "lpmace.io",
    "load": "lpmace.io",
    "from_mace_torch": "lpmace.interop.mace_torch",
    "Calculator": "lpmace.calculator",
    "Committee": "lpmace.committee",
    "Trainer": "lpmace.train.trainer",
}
__all__ = list(_PUBLIC)


def __getattr__(name):
    # Lazy so `import lpmace` stays cheap and `lpmace --help` does not import ASE or e3nn.
    if name in _PUBLIC:
        return getattr(import_module(_PUBLIC[name]), name)
    raise AttributeError(f"module 'lpmace' has no attribute {name!r}")
