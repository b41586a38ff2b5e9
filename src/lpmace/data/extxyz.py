"""Labelled atomic configurations read from extended XYZ files (through ASE).

Real files spell their labels in many ways: ``REF_energy`` in ``atoms.info``, ``force`` as a per-atom
column, or ``energy=``/``forces=``/``stress=`` which ASE moves into a ``SinglePointCalculator``. A key
is looked up in all three places (info, arrays, calculator results). A key asked for but absent from
every frame of a file is almost always a misspelling, so it is an error that lists the keys present;
a key absent from only some frames gives ``None`` for those frames.

Units are those of the file (eV, Å); stress is eV/Å³ in ASE's sign convention (positive = tensile,
``stress = -virials / volume``).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Optional, Sequence

import ase.io
import numpy as np
from ase.data import chemical_symbols
from ase.io.formats import string2index

from lpmace.errors import InputError

__all__ = ["Configuration", "read_configurations", "isolated_atom_energies"]

# The periodic lattice vectors must span at least this much length/area/volume (Å^k).
_MIN_PERIODIC_MEASURE = 1e-6
_VOIGT_TO_MATRIX = np.array([[0, 5, 4], [5, 1, 3], [4, 3, 2]])  # ASE order xx yy zz yz xz xy
_MAX_ATOMIC_NUMBER = len(chemical_symbols) - 1


def _read_only(array: np.ndarray) -> np.ndarray:
    array = np.array(array, copy=True)
    array.flags.writeable = False
    return array


@dataclass(frozen=True, eq=False)
class Configuration:
    """One labelled structure, validated on construction (its arrays are read-only copies).

    Overlapping atoms are refused one step later, by `graph_from_configuration`, whose neighbour
    list already holds every close pair (periodic images included) at no extra cost.

    Attributes:
        numbers: [n] int64 atomic numbers, 1..118.
        positions: [n, 3] float64, Å.
        cell: [3, 3] float64 lattice vectors as rows, Å (as written in the file).
        pbc: [3] bool periodicity of each lattice direction.
        energy: total energy, eV, or None.
        forces: [n, 3] float64, eV/Å, or None.
        stress: [3, 3] float64, eV/Å³, ASE sign convention, or None.
        config_type: the file's ``config_type`` or None.
        source: where it came from, e.g. ``"train.xyz:frame 12"``; every error message names it.
    """

    numbers: np.ndarray
    positions: np.ndarray
    cell: np.ndarray
    pbc: np.ndarray
    energy: Optional[float] = None
    forces: Optional[np.ndarray] = None
    stress: Optional[np.ndarray] = None
    config_type: Optional[str] = None
    source: str = "<memory>"

    def __post_init__(self) -> None:
        where = self.source
        numbers = np.asarray(self.numbers)
        if numbers.ndim != 1 or not np.issubdtype(numbers.dtype, np.integer):
            raise InputError(
                f"{where}: atomic numbers must be a 1-d integer array, got {numbers.dtype} {numbers.shape}"
            )
        n = numbers.shape[0]
        if n == 0:
            raise InputError(f"{where}: the structure has no atoms")
        bad = numbers[(numbers < 1) | (numbers > _MAX_ATOMIC_NUMBER)]
        if bad.size:
            raise InputError(f"{where}: unknown chemical element with atomic number {int(bad[0])}")
        positions = _float_array(self.positions, (n, 3), where, "positions")
        cell = _float_array(self.cell, (3, 3), where, "cell")
        pbc = np.asarray(self.pbc, dtype=bool).reshape(-1)
        if pbc.shape != (3,):
            raise InputError(f"{where}: pbc must have 3 entries, got {pbc.shape[0]}")
        _check_periodic_cell(cell, pbc, where)
        object.__setattr__(self, "numbers", _read_only(numbers.astype(np.int64)))
        object.__setattr__(self, "positions", _read_only(positions))
        object.__setattr__(self, "cell", _read_only(cell))
        object.__setattr__(self, "pbc", _read_only(pbc))
        if self.energy is not None:
            object.__setattr__(self, "energy", _energy_value(self.energy, where, "energy"))
        if self.forces is not None:
            object.__setattr__(self, "forces", _read_only(_float_array(self.forces, (n, 3), where, "forces")))
        if self.stress is not None:
            object.__setattr__(self, "stress", _read_only(_stress_matrix(self.stress, where, "stress")))

    @property
    def num_atoms(self) -> int:
        return int(self.numbers.shape[0])


def _float_array(value: Any, shape: tuple[int, ...], where: str, key: str) -> np.ndarray:
    try:
        array = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError) as err:
        raise InputError(f"{where}: {key} is not numeric ({err})") from None
    if array.shape != shape:
        raise InputError(f"{where}: {key} has shape {array.shape}, expected {shape}")
    if not np.all(np.isfinite(array)):
        row = np.argwhere(~np.isfinite(array))[0]
        index = tuple(int(i) for i in row)
        raise InputError(f"{where}: {key} has a non-finite value {array[index]} at index {index}")
    return array


def _energy_value(value: Any, where: str, key: str) -> float:
    try:
        array = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError):
        raise InputError(f"{where}: {key} = {value!r} is not a number") from None
    if array.size != 1:
        raise InputError(f"{where}: {key} must be one number, got shape {array.shape}")
    energy = float(array.reshape(()))
    if not np.isfinite(energy):
        raise InputError(f"{where}: {key} = {energy} is not finite")
    return energy


def _stress_matrix(value: Any, where: str, key: str) -> np.ndarray:
    """[3, 3] from a Voigt 6-vector (ASE order), a flat 9-vector (row-major) or a 3x3 matrix."""
    try:
        array = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError):
        raise InputError(f"{where}: {key} is not numeric") from None
    if array.size == 6:
        array = array.reshape(6)[_VOIGT_TO_MATRIX]
    elif array.size == 9:
        array = array.reshape(3, 3)
    else:
        raise InputError(f"{where}: {key} needs 6 (Voigt) or 9 values, got shape {array.shape}")
    return _float_array(array, (3, 3), where, key)


def _check_periodic_cell(cell: np.ndarray, pbc: np.ndarray, where: str) -> None:
    """The periodic lattice vectors must be linearly independent (non-zero length/area/volume)."""
    periodic = cell[pbc]
    if periodic.shape[0] == 0:
        return
    gram = periodic @ periodic.T
    measure = float(np.sqrt(max(np.linalg.det(gram), 0.0)))
    if measure < _MIN_PERIODIC_MEASURE:
        raise InputError(
            f"{where}: cell {cell.tolist()} is singular in its periodic directions pbc={pbc.tolist()} "
            f"(spanned measure {measure:.3g}); a periodic structure needs independent lattice vectors"
        )


def _lookup(atoms: Any, key: str) -> Any:
    """The value of `key` in atoms.info, atoms.arrays or the attached calculator's results, or None."""
    if key in atoms.info:
        return atoms.info[key]
    if key in atoms.arrays:
        return atoms.arrays[key]
    calc = atoms.calc
    if calc is not None and key in getattr(calc, "results", {}):
        return calc.results[key]
    return None


def _keys_present(frames: Sequence[Any]) -> list[str]:
    keys: set[str] = set()
    for atoms in frames:
        keys.update(atoms.info)
        keys.update(k for k in atoms.arrays if k not in ("numbers", "positions"))
        if atoms.calc is not None:
            keys.update(getattr(atoms.calc, "results", {}))
    return sorted(keys)


def _first_malformed_frame(path: str) -> Optional[int]:
    """The first frame whose atom-count line is not an integer or whose atoms run past the end.

    ASE indexes the whole file before yielding any frame, so its header errors carry no frame number.
    """
    with open(path, errors="replace") as handle:
        lines = handle.readlines()
    end = len(lines)
    while end > 0 and not lines[end - 1].strip():
        end -= 1
    line, frame = 0, 0
    while line < end:
        try:
            n_atoms = int(lines[line])
        except ValueError:
            return frame
        if n_atoms < 0 or line + 2 + n_atoms > end:
            return frame
        line, frame = line + 2 + n_atoms, frame + 1
    return None


def _frames(path: str, index: int | slice | str) -> tuple[list[Any], list[int]]:
    """ASE Atoms of the selected frames and their frame numbers in the file."""
    if isinstance(index, str):
        index = string2index(index)
    numbers_known = (isinstance(index, int) and index >= 0) or (
        isinstance(index, slice)
        and (index.start is None or index.start >= 0)
        and (index.stop is None or index.stop >= 0)
        and (index.step is None or index.step > 0)
    )
    selection: int | slice = index if numbers_known else slice(None)
    if isinstance(selection, int):
        expected = iter([selection])
    else:
        expected = iter(range(selection.start or 0, 2**62, selection.step or 1))
    frames: list[Any] = []
    frame_numbers: list[int] = []
    frame = next(expected)
    try:
        for atoms in ase.io.iread(path, selection, format="extxyz"):
            frames.append(atoms)
            frame_numbers.append(frame)
            frame = next(expected, frame)
    except KeyError as err:  # ASE's symbol table raises KeyError for an unknown element
        raise InputError(f"{path}:frame {frame}: unknown chemical symbol {err}") from None
    except Exception as err:
        malformed = _first_malformed_frame(path)
        frame = frame if malformed is None else malformed
        raise InputError(f"{path}:frame {frame}: cannot parse as extended XYZ: {err}") from None
    if not numbers_known:
        try:
            chosen = range(len(frames))[index]
        except IndexError:
            raise InputError(f"{path}: frame index {index} is out of range ({len(frames)} frames)") from None
        chosen_list = [chosen] if isinstance(chosen, int) else list(chosen)
        frames = [frames[i] for i in chosen_list]
        frame_numbers = chosen_list
    return frames, frame_numbers


def read_configurations(
    path: str | os.PathLike,
    *,
    energy_key: Optional[str] = "REF_energy",
    forces_key: Optional[str] = "REF_forces",
    stress_key: Optional[str] = "REF_stress",
    virials_key: Optional[str] = "REF_virials",
    index: int | slice | str = ":",
) -> list[Configuration]:
    """Read and validate the labelled frames of an extended XYZ file.

    A key set to None is not read. `energy_key` and `forces_key` asked for but found in no frame are
    an error (listing the keys the file has); stress and virials are optional labels, so their
    default keys may be absent, but a stress or virials key that is not the default and is found
    nowhere is an error too. Where a frame has both stress and virials, stress wins; virials become
    ``stress = -virials / volume``.

    Returns:
        One `Configuration` per selected frame, in file order; `source` is ``"<path>:frame <i>"``.

    Raises:
        InputError: missing, empty or unparsable file; missing key; non-finite or wrongly shaped
            value; unknown element; singular periodic cell.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise InputError(f"{path}: no such file")
    frames, frame_numbers = _frames(path, index)
    if not frames:
        raise InputError(f"{path}: no frames (empty file or empty selection index={index!r})")

    required = {"energy": energy_key, "forces": forces_key}
    optional = {"stress": stress_key, "virials": virials_key}
    for label, key in list(required.items()) + list(optional.items()):
        if key is None:
            continue
        if any(_lookup(atoms, key) is not None for atoms in frames):
            continue
        default = {"stress": "REF_stress", "virials": "REF_virials"}.get(label)
        if label in optional and key == default:
            continue
        raise InputError(
            f"{path}: {label} key {key!r} is in no frame; keys present: {', '.join(_keys_present(frames))} "
            f"(set {label}_key to null, None in Python, if the file has no {label})"
        )

    configs = []
    for atoms, frame in zip(frames, frame_numbers):
        where = f"{path}:frame {frame}"
        n_atoms = len(atoms)
        get = {label: None if key is None else _lookup(atoms, key) for label, key in {**required, **optional}.items()}
        stress = None
        if get["stress"] is not None:
            stress = _stress_matrix(get["stress"], where, stress_key)
        elif get["virials"] is not None:
            virials = _stress_matrix(get["virials"], where, virials_key)
            volume = abs(float(np.linalg.det(atoms.cell.array)))
            if volume < _MIN_PERIODIC_MEASURE:
                raise InputError(f"{where}: {virials_key} given but the cell has no volume to turn it into stress")
            stress = -virials / volume
        config_type = atoms.info.get("config_type")
        configs.append(
            Configuration(
                numbers=atoms.numbers,
                positions=atoms.positions,
                cell=atoms.cell.array,
                pbc=atoms.pbc,
                energy=None if get["energy"] is None else _energy_value(get["energy"], where, energy_key),
                forces=None if get["forces"] is None else _float_array(get["forces"], (n_atoms, 3), where, forces_key),
                stress=stress,
                config_type=None if config_type is None else str(config_type),
                source=where,
            )
        )
    return configs


def isolated_atom_energies(configs: Sequence[Configuration]) -> dict[int, float]:
    """E0 per element from isolated-atom frames.

    A frame counts if its config_type is ``IsolatedAtom`` (any case), or if it has one atom and no
    periodic direction. Frames without an energy are skipped unless labelled IsolatedAtom.

    Returns:
        {atomic number: energy in eV}; empty if there are no such frames.

    Raises:
        InputError: an IsolatedAtom frame with more than one atom or no energy, or two isolated-atom
            frames of one element whose energies disagree.
    """
    energies: dict[int, float] = {}
    sources: dict[int, str] = {}
    for config in configs:
        labelled = config.config_type is not None and config.config_type.lower() == "isolatedatom"
        if not labelled and not (config.num_atoms == 1 and not config.pbc.any()):
            continue
        if labelled and config.num_atoms != 1:
            raise InputError(f"{config.source}: config_type IsolatedAtom but {config.num_atoms} atoms")
        if config.energy is None:
            if labelled:
                raise InputError(f"{config.source}: config_type IsolatedAtom but no energy")
            continue
        z = int(config.numbers[0])
        if z in energies and abs(energies[z] - config.energy) > 1e-6:
            raise InputError(
                f"{config.source}: isolated {chemical_symbols[z]} energy {config.energy} disagrees with "
                f"{energies[z]} from {sources[z]}"
            )
        energies[z] = config.energy
        sources[z] = config.source
    return energies
