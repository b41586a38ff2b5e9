"""Atomic file writes: a reader (or a run killed mid-write) sees the old file or the new one whole."""

from __future__ import annotations

import os
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Union


@contextmanager
def atomic_open(path: Union[str, Path], mode: str = "w") -> Iterator:
    """Open a temporary file beside `path`; on success it is synced and renamed over `path`, on any
    error it is deleted and `path` is untouched. `mode` is "w" (text) or "wb"."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
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
