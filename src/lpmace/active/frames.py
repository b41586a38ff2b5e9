"""Frames of the loop on disk: generated rattled crystals, and labelled or sampled extxyz files.

Labels are stored as ``REF_energy`` (info, eV) and ``REF_forces`` (arrays, eV/Å), the keys the
members train on. Every file is written whole through a temporary file and a rename.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import ase
import ase.io
import numpy as np
from ase.build import bulk

from lpmace.active.config import ENERGY_KEY, FORCES_KEY, Structures
from lpmace.atomic import atomic_open
from lpmace.errors import InputError


def rattled_crystals(spec: Structures, count: int, rattle: float, rng: np.random.Generator) -> list[ase.Atoms]:
    """`count` copies of the crystal of `spec` with positions moved by N(0, rattle²) Å per component."""
    cell = bulk(spec.symbol, spec.crystal, a=spec.a, cubic=spec.crystal != "hcp").repeat(spec.repeat)
    frames = []
    for _ in range(count):
        atoms = cell.copy()
        atoms.positions = atoms.positions + rng.normal(0.0, rattle, atoms.positions.shape)
        frames.append(atoms)
    return frames


def with_labels(atoms: ase.Atoms, energy: float, forces: np.ndarray) -> ase.Atoms:
    """A copy of `atoms` (no calculator) carrying `energy` (eV) and `forces` [n_atoms, 3] (eV/Å) as labels."""
    out = atoms.copy()
    out.calc = None
    out.info[ENERGY_KEY] = float(energy)
    out.arrays[FORCES_KEY] = np.asarray(forces, dtype=np.float64).reshape(len(out), 3)
    return out


def labels_of(atoms: ase.Atoms, where: str) -> tuple[float, np.ndarray]:
    """(energy, forces) of a labelled frame: REF_energy/REF_forces, else its calculator's results."""
    if ENERGY_KEY in atoms.info and FORCES_KEY in atoms.arrays:
        return float(atoms.info[ENERGY_KEY]), np.asarray(atoms.arrays[FORCES_KEY], dtype=np.float64)
    if atoms.calc is not None:
        try:
            return float(atoms.get_potential_energy()), np.asarray(atoms.get_forces(), dtype=np.float64)
        except Exception:  # noqa: BLE001 - a single-point calculator without those results
            pass
    raise InputError(f"{where}: no energy and forces (expected info {ENERGY_KEY} and arrays {FORCES_KEY}, "
                     "or energy= and forces written by ASE)")


def read_frames(path: Path) -> list[ase.Atoms]:
    try:
        return list(ase.io.read(path, index=":", format="extxyz"))
    except FileNotFoundError:
        raise
    except Exception as err:  # noqa: BLE001 - ASE's parser raises many kinds
        raise InputError(f"{path}: not a readable extxyz file ({type(err).__name__}: {err})") from None


def read_labelled(path: Path) -> list[ase.Atoms]:
    """The frames of `path` as `with_labels` copies (InputError for a frame without labels)."""
    return [with_labels(a, *labels_of(a, f"{path} frame {i}")) for i, a in enumerate(read_frames(path))]


def write_frames(path: Path, frames: Sequence[ase.Atoms]) -> Path:
    """Write `frames` as extxyz to `path`, atomically (the old file or the whole new one)."""
    with atomic_open(path, "w") as f:
        if frames:
            ase.io.write(f, list(frames), format="extxyz")
    return path
