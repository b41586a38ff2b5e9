"""lpmace: low-precision training and inference for MACE interatomic potentials."""

from lpmace.errors import InputError
from lpmace.data.graph import Graph
from lpmace.model import MACE, MACEConfig
from lpmace.io import load, save
from lpmace.calculator import Calculator

__all__ = ["MACE", "MACEConfig", "Graph", "InputError", "save", "load", "Calculator"]
__version__ = "0.1.0"
