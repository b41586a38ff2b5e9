"""`lpmace`'s top-level names: each resolves, and `import lpmace` alone stays off torch."""

import subprocess
import sys

import ase.io
import torch

import lpmace
from lpmace import datasets
from lpmace.data import graph_from_configuration, read_configurations


def test_every_public_name_resolves():
    assert {"PrecisionPolicy", "from_mace_torch", "Trainer", "graph_from_atoms", "Committee"} <= set(lpmace.__all__)
    for name in lpmace.__all__:
        assert getattr(lpmace, name).__name__ == name


def test_import_lpmace_imports_no_torch():
    probe = "import sys, lpmace; print(sorted(m for m in ('torch', 'numpy', 'ase') if m in sys.modules))"
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


def test_graph_from_atoms_is_the_graph_of_the_same_structure_read_from_file(model):
    path = datasets.path("3bpa/test_300K.xyz")
    atoms = ase.io.read(path, index=0)
    graph = lpmace.graph_from_atoms(atoms, model.config.r_max)
    expected = graph_from_configuration(read_configurations(path, index=0)[0], model.config.r_max)
    for field in ("positions", "numbers", "edge_index", "unit_shifts", "cell", "pbc", "batch", "ptr"):
        assert torch.equal(getattr(graph, field), getattr(expected, field)), field
    assert not bool(graph.has_energy.any()) and not bool(graph.has_forces.any())
    atoms.calc = lpmace.Calculator(model)
    energy = model(graph, precision="fp64")["energy"]
    assert abs(float(energy.detach()[0]) - atoms.get_potential_energy()) < 1e-9
