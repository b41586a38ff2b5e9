"""The oracle: an ASE calculator named by import path (``module:Class``) that labels frames.

Every failure is an InputError naming the oracle (the CLI's one line, exit 2): an import path that
does not exist, a class that will not construct, a calculation that raises or returns non-finite
numbers. Labelling writes nothing itself, so a failed label phase leaves the round as it was.
"""

from __future__ import annotations

import importlib
from typing import Any, Optional, Sequence

import numpy as np

from lpmace.errors import InputError


def load_oracle(spec: str, kwargs: dict, where: str = "config") -> Optional[Any]:
    """The calculator ``Class(**kwargs)`` for ``spec = "module:Class"``; None for ``"none"``."""
    if spec == "none":
        return None
    module_name, _, name = spec.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as err:
        raise InputError(f"{where}: oracle {spec}: cannot import {module_name} ({err})") from None
    cls = getattr(module, name, None)
    if cls is None:
        raise InputError(f"{where}: oracle {spec}: {module_name} has no {name!r}")
    try:
        return cls(**kwargs)
    except Exception as err:  # noqa: BLE001 - any constructor failure is the config's to fix
        raise InputError(f"{where}: oracle {spec} with oracle_kwargs {kwargs}: {type(err).__name__}: {err}") from None


def label(oracle, frames: Sequence, name: str, what: str) -> list[tuple[float, np.ndarray]]:
    """(energy eV, forces [n_atoms, 3] eV/Å) of each of `frames` (ase.Atoms, not changed) from `oracle`.

    The oracle is reset (`Calculator.reset`) before each frame, so a label depends on its frame alone,
    not on what the oracle computed before (EMT, for one, reuses its neighbour list between calls,
    which moves energies in their last digits; a resumed run's oracle has another history)."""
    labels = []
    for i, frame in enumerate(frames):
        atoms = frame.copy()
        if hasattr(oracle, "reset"):
            oracle.reset()
        atoms.calc = oracle
        try:
            energy, forces = float(atoms.get_potential_energy()), np.array(atoms.get_forces(), dtype=np.float64)
        except Exception as err:  # noqa: BLE001 - the oracle is user code: report, do not crash
            raise InputError(f"oracle {name} failed on frame {i} of {what}: {type(err).__name__}: {err}") from None
        if not (np.isfinite(energy) and np.isfinite(forces).all()):
            raise InputError(f"oracle {name} returned non-finite energy or forces for frame {i} of {what}")
        labels.append((energy, forces))
    return labels
