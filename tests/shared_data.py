"""Where the project's shared files are (imported by tests as `shared_data`)."""

import os
import pathlib

import pytest


def shared_dir(name: str) -> pathlib.Path:
    """The folder `name` of the project's `shared/` (data/, anchors/, ...).

    CI clones the repository next to a copy of `shared/`; LPMACE_SHARED_DATA (the path of shared/data)
    overrides, and its siblings are the other folders. Absent files fail the test (a skipped test would
    be counted as passing).
    """
    override = os.environ.get("LPMACE_SHARED_DATA", "")
    here = pathlib.Path(__file__).resolve().parents[2] / "shared"
    candidates = [here / name]
    if override:
        candidates.insert(0, pathlib.Path(override) if name == "data" else pathlib.Path(override).parent / name)
    for candidate in candidates:
        if candidate.is_dir():
            return candidate
    pytest.fail(f"shared/{name} not found (looked in {[str(c) for c in candidates]}); set LPMACE_SHARED_DATA")


def shared_data_dir() -> pathlib.Path:
    """The project's shared datasets (3bpa/, rmd17_ethanol/, si_zuo2020/)."""
    return shared_dir("data")
