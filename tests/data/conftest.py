"""Shared fixtures for the data tests."""

from pathlib import Path

import pytest

SHARED_DATA = Path("/work/shared/data")


@pytest.fixture
def data_dir() -> Path:
    """The shared datasets (3bpa/, rmd17_ethanol/, si_zuo2020/); tests using it skip where absent."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"shared datasets not found at {SHARED_DATA}")
    return SHARED_DATA
