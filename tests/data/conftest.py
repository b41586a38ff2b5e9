"""Shared fixtures for the data tests."""

from pathlib import Path

import pytest

from shared_data import shared_data_dir


@pytest.fixture
def data_dir() -> Path:
    """The shared datasets (3bpa/, rmd17_ethanol/, si_zuo2020/)."""
    return shared_data_dir()
