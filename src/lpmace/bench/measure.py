"""Honest timing: warm-up, CUDA synchronisation around every repeat, median and spread; peak memory;
and the environment every result is reported with (device, driver, versions, git commit, date)."""

from __future__ import annotations

import datetime
import math
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable, Optional

import torch

__all__ = ["back_to_back", "environment", "is_out_of_memory", "peak_memory_mb", "release_memory", "synchronize",
           "timed"]


def synchronize(device: str) -> None:
    if str(device).startswith("cuda"):
        torch.cuda.synchronize(torch.device(device))


def timed(fn: Callable[[], object], device: str, repeats: int, warmup: int) -> dict:
    """Run `fn` `warmup` times untimed, then `repeats` times, each timed between device synchronisations.

    Returns {repeats, median_ms, iqr_ms (75th − 25th percentile), min_ms, max_ms}.
    """
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(max(repeats, 1)):
        synchronize(device)
        start = time.perf_counter()
        fn()
        synchronize(device)
        times.append(1000.0 * (time.perf_counter() - start))
    quartiles = statistics.quantiles(times, n=4) if len(times) > 1 else [times[0]] * 3
    return {"repeats": len(times), "median_ms": statistics.median(times), "iqr_ms": quartiles[2] - quartiles[0],
            "min_ms": min(times), "max_ms": max(times)}


def back_to_back(fn: Callable[[], object], device: str, repeats: int) -> float:
    """Mean time (ms) of `repeats` calls of `fn` launched one after another between one pair of device
    synchronisations: the rate of a loop that does not wait for each call, as a trainer steps (the
    host prepares the next call while the device runs this one). Call after `timed` (warmed up)."""
    repeats = max(repeats, 1)
    synchronize(device)
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    synchronize(device)
    return 1000.0 * (time.perf_counter() - start) / repeats


def peak_memory_mb(fn: Callable[[], object], device: str) -> Optional[float]:
    """Peak memory allocated by torch on a CUDA device during one call of `fn`, in MiB (None on a CPU:
    torch keeps no allocator statistics there). It includes what is resident: the inputs and the
    weights of every engine of the run (a few MB each for MACE), next to the call's own activations."""
    if not str(device).startswith("cuda"):
        return None
    dev = torch.device(device)
    synchronize(device)
    torch.cuda.reset_peak_memory_stats(dev)
    fn()
    synchronize(device)
    return torch.cuda.max_memory_allocated(dev) / 2**20


def release_memory(device: str) -> None:
    """Drop unreferenced tensors and return torch's cached CUDA blocks (between measurements, and
    before a subprocess shares the GPU)."""
    import gc

    gc.collect()
    if str(device).startswith("cuda") and torch.cuda.is_available():
        torch.cuda.empty_cache()


def is_out_of_memory(err: BaseException) -> bool:
    """True for a CUDA out-of-memory error (and the CPU allocator's "can't allocate memory")."""
    return isinstance(err, torch.OutOfMemoryError) or "can't allocate memory" in str(err).lower()


def _git_commit(package: Optional[Path] = None) -> Optional[str]:
    """The commit of lpmace's own source tree ("+dirty" with uncommitted changes), or None when the
    imported package is not a git checkout (an installed wheel: the report's lpmace version says it).

    git answers for whatever repository encloses a folder, and a virtual environment inside a user's
    project puts site-packages/lpmace in the user's repository; so the package's own files must be
    tracked there, and GIT_DIR / GIT_WORK_TREE (which override the folder) are dropped.
    """
    import os

    import lpmace

    package = Path(package or Path(lpmace.__file__).resolve().parent)
    env = {k: v for k, v in os.environ.items() if k not in ("GIT_DIR", "GIT_WORK_TREE")}

    def git(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(["git", *args], cwd=package, env=env, capture_output=True, text=True, timeout=10)

    try:
        tracked = git("ls-files", "--error-unmatch", "--", "__init__.py")
        if tracked.returncode != 0:
            return None
        out = git("rev-parse", "HEAD")
        dirty = git("status", "--porcelain", "--untracked-files=no", "--", ".")
    except (OSError, subprocess.SubprocessError):
        return None
    if out.returncode != 0:
        return None
    return out.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")


def _version(module: str) -> Optional[str]:
    try:
        from importlib.metadata import version

        return version(module)
    except Exception:  # not installed (any metadata error means the same to a report)
        return None


def environment(device: str, command: str) -> dict:
    """What the results were measured on, for results.json and the report's first table."""
    import lpmace

    cuda = str(device).startswith("cuda")
    driver = None
    if cuda:
        try:
            out = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                                 capture_output=True, text=True, timeout=20)
            driver = out.stdout.strip().splitlines()[0] if out.returncode == 0 and out.stdout.strip() else None
        except (OSError, subprocess.SubprocessError):
            driver = None
    return {
        "device": str(device),
        "device_name": torch.cuda.get_device_name(torch.device(device)) if cuda else (platform.processor() or "cpu"),
        "cpu_threads": torch.get_num_threads(),
        "driver": driver,
        "cuda": torch.version.cuda if cuda else None,
        "torch": torch.__version__,
        "triton": _version("triton"),
        "e3nn": _version("e3nn"),
        "mace_torch": _version("mace-torch"),
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "lpmace": lpmace.__version__,
        "git_commit": _git_commit(),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "command": command,
    }


def strict_json(value):
    """results.json is strict JSON: NaN and infinities become null (the reports show them as "—")."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: strict_json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [strict_json(v) for v in value]
    return value
