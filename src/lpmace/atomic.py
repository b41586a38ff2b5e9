"""Atomic file writes: a reader (or a run killed mid-write) sees the old file or the new one whole."""

from __future__ import annotations

import os
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Union

from lpmace.errors import InputError


def _umask() -> int:
    """The process umask: from /proc on Linux, as setting it to read it races with other threads."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except OSError:
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


@contextmanager
def atomic_open(path: Union[str, Path], mode: str = "w") -> Iterator:
    """Open a temporary file beside `path`; on success it is synced and renamed over `path`, on any
    error it is deleted and `path` is untouched. `mode` is "w" (text) or "wb".

    The file gets the permissions a plain open() would give it (0666 less the umask): mkstemp
    creates it 0600, which would hide every output from the rest of a group or a web server.
    """
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, 0o666 & ~_umask())
        with os.fdopen(fd, mode) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: Union[str, Path], text: str) -> Path:
    with atomic_open(path, "w") as f:
        f.write(text)
    return Path(path)


def check_writable(path: Union[str, Path], option: str) -> None:
    """InputError naming `option` and `path` unless a file can be created in `path`'s folder.

    It creates (and removes) a temporary file there: permission bits alone do not say it (root,
    read-only mounts, ACLs), and finding out after an hour of work loses the hour.
    """
    folder = Path(path).parent
    if not folder.is_dir():
        raise InputError(f"{option} {path}: folder {folder} does not exist")
    try:
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as err:
        raise InputError(f"{option} {path}: cannot write into folder {folder} ({err.strerror})") from None
