"""Model files written before conversions were listed (lpmace at 96d6a36: species compression in the
config, readout quantization in its own metadata key) load as the same model: the energies and forces
recorded by that code (tests/data/model_files_96d6a36/expected.json) come back."""

from __future__ import annotations

import json
import pathlib

import pytest
import torch

import lpmace.io
from lpmace import datasets
from lpmace.data import graph_from_configuration, read_configurations

HERE = pathlib.Path(__file__).parent / "data" / "model_files_96d6a36"
EXPECTED = json.loads((HERE / "expected.json").read_text())
CONVERSIONS = {
    "plain": [],
    "species_rank2_int8_embedding": [{"name": "species_compression", "species_rank": 2, "int8_embedding": True}],
    "readout_int8": [{"name": "readout_quantization", "readout": "int8", "torchao": "0.18.0",
                      "layers": {"readouts.0.layers.0": "int8", "readouts.1.layers.0": "int8",
                                 "readouts.1.layers.1": "int8"}}],
}

# precision: (eV, eV/Å) between the recorded and the loaded model's energy and forces
TOLERANCE = {"fp64": (1e-9, 1e-11), "fp32": (1e-4, 1e-5)}


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_a_file_written_at_96d6a36_gives_the_recorded_energy_and_forces(name, tmp_path):
    if name == "readout_int8":
        pytest.importorskip("torchao")
    model = lpmace.io.load(HERE / f"{name}.safetensors")
    assert model.conversions == CONVERSIONS[name]
    graph = graph_from_configuration(read_configurations(datasets.path("3bpa/test_300K.xyz"))[0], model.config.r_max)
    expected = EXPECTED[name]
    # the same weights through the same arithmetic (bit for bit today); the bound leaves room for a
    # reordered sum only: a few hundred roundings of eV-sized terms in that precision
    energy_tol, force_tol = TOLERANCE[expected["precision"]]
    forces = torch.tensor(expected["forces"], dtype=torch.float64)
    for loaded in (model, lpmace.io.load(lpmace.io.save(model, tmp_path / "again.safetensors"))):
        out = loaded(graph, precision=expected["precision"])
        assert abs(float(out["energy"].detach()) - expected["energy"]) <= energy_tol
        assert float((out["forces"].detach().double() - forces).abs().max()) <= force_tol
    # written again, the file says what it holds in the new way
    metadata = lpmace.io._read(tmp_path / "again.safetensors")[0]
    assert "readout_quantization" not in metadata and "species_rank" not in metadata["config"]
    assert json.loads(metadata.get("conversions", "[]")) == CONVERSIONS[name]


def test_info_lists_the_conversions_of_an_old_file(capsys):
    from lpmace.cli import main

    assert main(["info", str(HERE / "species_rank2_int8_embedding.safetensors")]) == 0
    printed = capsys.readouterr().out
    assert "species compression: rank 2, int8 embedding\n" in printed and "  species_rank:" not in printed
