"""Which elements a model knows: the one check of structures against them.

A MACE model has element-dependent weights (and an E0) for the elements it was built with and for no
other; a structure holding another element is refused before any work, in one line that names the
structure (file and frame, where it has them), the elements it lacks and those the model knows.
"""

from __future__ import annotations

from typing import Iterable

from lpmace.errors import InputError

__all__ = ["check_configurations", "check_known_elements", "element_names"]


def element_names(numbers: Iterable[int]) -> str:
    """"H, C, Fe" for atomic numbers; a number no element has is written ``Z=200``."""
    from ase.data import chemical_symbols

    return ", ".join(chemical_symbols[z] if 0 < z < len(chemical_symbols) else f"Z={z}" for z in map(int, numbers))


def check_known_elements(numbers: Iterable[int], known: Iterable[int], where: str,
                         known_as: str = "the model") -> None:
    """InputError ``{where}: element(s) Si not in {known_as} (Z=14; the model knows H, C, N, O)`` when the
    atomic numbers `numbers` hold one outside `known`.

    `where` names the structure ("train.xyz:frame 3", "Atoms(C2H6)", "--data FILE"); `known_as` says
    what `known` is when it is not the model itself ("the training data", "foundation_model FILE").
    """
    known = sorted({int(z) for z in known})
    unknown = sorted({int(z) for z in numbers} - set(known))
    if unknown:
        raise InputError(f"{where}: element(s) {element_names(unknown)} not in {known_as} "
                         f"(Z={', '.join(map(str, unknown))}; the model knows {element_names(known)})")


def check_configurations(configurations: Iterable, known: Iterable[int], known_as: str = "the model") -> None:
    """`check_known_elements` for each configuration (anything with ``numbers`` and ``source``, e.g.
    `lpmace.data.Configuration`), naming the first one that holds an unknown element."""
    known = sorted({int(z) for z in known})
    for config in configurations:
        check_known_elements(config.numbers, known, config.source, known_as)
