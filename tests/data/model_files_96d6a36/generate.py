"""How the model files in this folder were written: by lpmace at commit 96d6a36 (before conversions
were recorded as a list), with this script run from a checkout of that commit:

    PYTHONPATH=src python tests/data/model_files_96d6a36/generate.py

It cannot run with later lpmace (MACEConfig then had species_rank and int8_embedding fields); it is
kept as the record of what the files hold. expected.json holds the energies and forces that code
computed for the first 3BPA test molecule (float64 parameters, fp64 precision; the quantized model
float32 parameters, fp32 precision), so tests/test_old_model_files.py can check that today's
lpmace.io.load gives back the same model.
"""

import json
import pathlib

import torch

import lpmace.io
from lpmace import datasets
from lpmace.data import graph_from_configuration, read_configurations
from lpmace.model import MACE, MACEConfig
from lpmace.quantize import quantize_readouts

HERE = pathlib.Path(__file__).parent
BASE = dict(atomic_numbers=(1, 6, 7, 8), E0s=(-13.6, -1029.5, -1485.0, -2042.0), r_max=4.0, num_bessel=4,
            max_ell=1, channels=4, max_L=1, correlation=(2, 2), readout_mlp=8, radial_mlp=(8,),
            avg_num_neighbors=8.0, scale=0.7, shift=0.1)


def built(dtype, **extra):
    torch.manual_seed(0)
    return MACE(MACEConfig(**BASE, **extra)).to(dtype)


models = {
    "plain": (built(torch.float64), "fp64"),
    "species_rank2_int8_embedding": (built(torch.float64, species_rank=2, int8_embedding=True), "fp64"),
    "readout_int8": (quantize_readouts(built(torch.float32), "int8", log=lambda _: None), "fp32"),
}
graph = graph_from_configuration(read_configurations(datasets.path("3bpa/test_300K.xyz"))[0], BASE["r_max"])
expected = {}
for name, (model, precision) in models.items():
    lpmace.io.save(model, HERE / f"{name}.safetensors")
    out = model(graph, precision=precision)
    expected[name] = {"precision": precision, "energy": float(out["energy"].detach()),
                      "forces": out["forces"].detach().double().tolist()}
(HERE / "expected.json").write_text(json.dumps(expected, indent=1) + "\n")
