"""lpmace: low-precision training and inference for MACE interatomic potentials."""

from importlib import import_module

__version__ = "0.1.0"

_PUBLIC = {
    "MACE": "lpmace.model",
    "MACEConfig": "lpmace.model",
    "Graph": "lpmace.data.graph",
    "InputError": "lpmace.errors",
    "save": "lpmace.io",
    "load": "lpmace.io",
    "Calculator": "lpmace.calculator",
}
__all__ = list(_PUBLIC)


def __getattr__(name):
    # Lazy so `import lpmace` stays cheap and `lpmace --help` does not import ASE or e3nn.
    if name in _PUBLIC:
        return getattr(import_module(_PUBLIC[name]), name)
    raise AttributeError(f"module 'lpmace' has no attribute {name!r}")
