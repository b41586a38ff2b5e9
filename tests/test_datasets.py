"""Embedded datasets: present, complete, and identical to their sources."""

from __future__ import annotations

import pytest

from lpmace import datasets
from lpmace.data import read_configurations
from lpmace.errors import InputError
from shared_data import shared_data_dir



@pytest.mark.parametrize("name, count", [("train_300K.xyz", 500), ("test_300K.xyz", 300), ("iso_atoms.xyz", 4)])
def test_3bpa_files_have_the_documented_sizes(name, count):
    path = datasets.path(f"3bpa/{name}")
    forces_key = None if name == "iso_atoms.xyz" else "REF_forces"
    configs = read_configurations(path, forces_key=forces_key)
    assert len(configs) == count
    assert all(c.energy is not None for c in configs)
    assert {int(z) for c in configs for z in c.numbers} <= {1, 6, 7, 8}


def test_licence_notice_ships_with_the_data():
    folder = datasets.path("3bpa/train_300K.xyz").parent
    assert "MIT License" in (folder / "LICENSE").read_text()
    assert "first 300" in (folder / "README.md").read_text()


def test_unknown_file_is_an_input_error():
    with pytest.raises(InputError, match="nope.xyz"):
        datasets.path("3bpa/nope.xyz")


def test_subset_is_a_byte_identical_prefix_of_the_full_test_set():
    shared_3bpa = shared_data_dir() / "3bpa"  # the full source files; absent fails
    subset = datasets.path("3bpa/test_300K.xyz").read_bytes()
    full = (shared_3bpa / "test_300K.xyz").read_bytes()
    assert full[: len(subset)] == subset
    assert full[len(subset) :].startswith(b"27\n")  # the subset ends at a frame boundary
    assert datasets.path("3bpa/train_300K.xyz").read_bytes() == (shared_3bpa / "train_300K.xyz").read_bytes()
