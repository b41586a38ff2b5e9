"""Subcommands of the `lpmace` command line, one module each (see `lpmace.cli`)."""

from __future__ import annotations

from pathlib import Path


def check_model_paths(source: Path, target: Path, force: bool) -> None:
    """Refuse, before anything is read or written, a missing input or an output that is not a new
    (or, with --force, replaceable) .safetensors file in an existing folder."""
    from lpmace.errors import InputError

    if not source.is_file():
        open(source, "rb").close()  # the OS's own words: no such file, is a directory, ...
    if target.suffix != ".safetensors":
        raise InputError(f"{target}: the output file name must end in .safetensors")
    if target.exists() and not force:
        raise InputError(f"{target}: exists; pass --force to overwrite it")
    if not target.parent.is_dir():
        raise InputError(f"{target}: folder {target.parent} does not exist")
