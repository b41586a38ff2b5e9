"""Where lpmace keeps what it builds once per machine, and how long a process has been running.

    cache_dir(name)     ``$LPMACE_CACHE_DIR/name``, default ``~/.cache/lpmace/name`` (one private
                        temporary folder per name and process when that cannot be written, with a
                        warning): the generated conv kernels (``kernels``), Inductor's compiled
                        graphs (``inductor``) and lpmace's compiled steps (``steps``)
    use_compile_cache() points Inductor's cache there unless TORCHINDUCTOR_CACHE_DIR was set when
                        lpmace was imported
                        (Inductor's own default, /tmp/torchinductor_USER, is lost at reboot)
    compiled_graphs()   graphs compiled in this process so far: Inductor's graphs that were not in
                        its cache (0 in a process that found everything there), else torch.compile's
    process_age()       seconds since this process started (Linux: /proc; elsewhere: since lpmace
                        was imported)
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
import warnings
from pathlib import Path

__all__ = ["cache_dir", "compiled_graphs", "is_temporary", "process_age", "use_compile_cache"]

_IMPORTED = time.monotonic()


_TEMPORARY: dict = {}  # (root, name) -> the temporary folder used instead of an unusable one


def cache_dir(name: str) -> Path:
    root = os.environ.get("LPMACE_CACHE_DIR") or os.path.join(os.path.expanduser("~"), ".cache", "lpmace")
    path = Path(root) / name
    try:
        path.mkdir(parents=True, exist_ok=True)
        return path
    except OSError as error:  # a read-only home: one private temporary folder per name, said once
        if (root, name) not in _TEMPORARY:
            _TEMPORARY[root, name] = Path(tempfile.mkdtemp(prefix=f"lpmace-{name}-"))
            warnings.warn(f"lpmace: cannot use the cache folder {path} ({error.strerror}); using "
                          f"{_TEMPORARY[root, name]} for this process (set LPMACE_CACHE_DIR)", stacklevel=2)
        return _TEMPORARY[root, name]


def is_temporary(path: Path) -> bool:
    """Whether `path` is a folder `cache_dir` made for this process only (what it holds is lost)."""
    return path in _TEMPORARY.values()


def use_compile_cache() -> None:
    import lpmace

    # torch's own lookup sets the variable to /tmp/torchinductor_USER when it is unset, which
    # happens before lpmace compiles anything: only a folder the user named at start-up is kept
    if not (lpmace._INDUCTOR_CACHE_NAMED and os.environ.get("TORCHINDUCTOR_CACHE_DIR")):
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(cache_dir("inductor"))


def compiled_graphs() -> int:
    # torch.compile imports torch._dynamo; importing it just to read its counter would cost a
    # process that never compiles almost 2 s of start-up
    if "torch._dynamo" not in sys.modules:
        return 0
    from torch._dynamo.utils import counters

    inductor = counters["inductor"]
    if any(inductor[k] for k in ("fxgraph_cache_hit", "fxgraph_cache_miss", "fxgraph_cache_bypass")):
        # Inductor's graphs (a training graph is two: forward and backward) not found in its cache
        return int(inductor["fxgraph_cache_miss"] + inductor["fxgraph_cache_bypass"])
    return int(counters["stats"]["unique_graphs"])  # another backend, or Inductor's cache off


def process_age() -> float:
    try:
        fields = Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()
        started = int(fields[19]) / os.sysconf("SC_CLK_TCK")  # field 22, starttime, in clock ticks since boot
        return float(Path("/proc/uptime").read_text().split()[0]) - started
    except (OSError, ValueError, IndexError, AttributeError):
        return time.monotonic() - _IMPORTED
