"""Shared fixtures: a tiny random model, the embedded 3BPA data, and a scoped default dtype."""

from __future__ import annotations

import os
import pathlib

import pytest
import torch

# Without a GPU, the Triton kernels are tested under Triton's interpreter. It must be on before
# anything imports triton (lpmace, mace-torch and torch may), so it is set before lpmace is imported.
if not torch.cuda.is_available():
    os.environ["TRITON_INTERPRET"] = os.environ.get("TRITON_INTERPRET") or "1"

from lpmace import datasets
from lpmace.model import MACE

from tiny_models import BPA_E0S, tiny_config, tiny_model  # noqa: E402,F401


@pytest.fixture
def make_config():
    """`tiny_config` for tests in other folders (`from conftest import ...` can resolve to another
    folder's conftest once several are imported)."""
    return tiny_config


@pytest.fixture
def model() -> MACE:
    """Tiny fp64 MACE for H, C, N, O."""
    return tiny_model()


@pytest.fixture
def make_model():
    """`make_model(dtype=float64, seed=0, **config_overrides)`: more tiny models in one test."""
    return tiny_model


@pytest.fixture
def bpa_train_path() -> pathlib.Path:
    return datasets.path("3bpa/train_300K.xyz")


@pytest.fixture
def bpa_test_path() -> pathlib.Path:
    return datasets.path("3bpa/test_300K.xyz")


@pytest.fixture
def bpa_atoms(bpa_test_path):
    """The first 3BPA test molecule as ase.Atoms (27 atoms, not periodic)."""
    import ase.io

    return ase.io.read(bpa_test_path, index=0)


@pytest.fixture
def default_dtype_float64():
    """Set torch's global default dtype to float64 for one test (mace-torch builds in it), then restore."""
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        yield
    finally:
        torch.set_default_dtype(previous)


@pytest.fixture(autouse=True)
def _default_dtype_unchanged():
    """No lpmace code may change torch's global default dtype (DESIGN.md rule 6)."""
    before = torch.get_default_dtype()
    yield
    after = torch.get_default_dtype()
    torch.set_default_dtype(before)
    assert after == before, f"a test left torch's default dtype at {after} (was {before})"



# ---- the `gpu` marker: tests that need CUDA (real Triton compilation, real sizes) ---------------------

_DESELECTED_GPU: list = []


def pytest_collection_modifyitems(config, items):
    """Without CUDA, `gpu` tests are deselected (not skipped: they cannot run here, and a skip would
    read as a silent pass); the terminal summary says how many."""
    if torch.cuda.is_available():
        return
    gpu = [item for item in items if item.get_closest_marker("gpu")]
    if gpu:
        _DESELECTED_GPU.extend(gpu)
        items[:] = [item for item in items if not item.get_closest_marker("gpu")]
        config.hook.pytest_deselected(items=gpu)


def pytest_terminal_summary(terminalreporter):
    if _DESELECTED_GPU:
        terminalreporter.write_line(f"deselected {len(_DESELECTED_GPU)} gpu tests (no CUDA); "
                                    "run them with `pytest -m gpu` on a CUDA machine")
