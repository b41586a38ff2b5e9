"""Datasets shipped inside the package (with their licence notices next to them).

`3bpa/`: the 3BPA molecule (train_300K, the first 300 of test_300K, iso_atoms); see 3bpa/README.md.
Wherever lpmace takes a file name (training config, `lpmace eval`, the bench), ``embedded:3bpa/...``
names one of these files; `resolve_path` is the one place that reads that prefix.
"""

from __future__ import annotations

import importlib.resources
import pathlib
from typing import Optional

from lpmace.errors import InputError

__all__ = ["EMBEDDED", "path", "resolve_path", "display_stem"]

EMBEDDED = "embedded:"


def path(name: str) -> pathlib.Path:
    """The filesystem path of an embedded file, e.g. ``path("3bpa/train_300K.xyz")``.

    Raises `InputError` naming the file (and what exists) when there is no such embedded file.
    """
    root = importlib.resources.files(__name__)
    resource = root.joinpath(*name.split("/"))
    if not resource.is_file():
        available = sorted(
            f"{d.name}/{f.name}"
            for d in root.iterdir()
            if d.is_dir() and not d.name.startswith("__")
            for f in d.iterdir()
            if f.suffix == ".xyz"
        )
        raise InputError(f"no embedded dataset file {name!r}; available: {', '.join(available)}")
    # Installed as plain files (regular or editable install), so this is a real path.
    return pathlib.Path(str(resource))


def resolve_path(name: Optional[str]) -> Optional[pathlib.Path]:
    """The path `name` means: ``embedded:3bpa/test_300K.xyz`` an embedded file (InputError if there is
    no such file), anything else a user path as given; None stays None."""
    if name is None:
        return None
    if name.startswith(EMBEDDED):
        return path(name[len(EMBEDDED):])
    return pathlib.Path(name)


def display_stem(name: str) -> str:
    """The file stem of a user or ``embedded:`` name ("test_300K"), for naming outputs after inputs."""
    return pathlib.Path(name.removeprefix(EMBEDDED)).stem
