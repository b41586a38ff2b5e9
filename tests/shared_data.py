"""Where the project's shared datasets are (imported by tests as `shared_data`)."""

import pathlib

import pytest


def shared_data_dir() -> pathlib.Path:
    """The project's shared datasets (3bpa/, rmd17_ethanol/, si_zuo2020/).

    CI clones the repository next to a copy of `shared/`; LPMACE_SHARED_DATA overrides. Absent data
    fails the test (a skipped test would be counted as passing).
    """
    import os

    here = pathlib.Path(__file__).resolve().parents[2] / "shared" / "data"
    candidates = [os.environ.get("LPMACE_SHARED_DATA", ""), here]
    for candidate in candidates:
        if candidate and pathlib.Path(candidate).is_dir():
            return pathlib.Path(candidate)
    pytest.fail(f"shared datasets not found (looked in {candidates}); set LPMACE_SHARED_DATA")
