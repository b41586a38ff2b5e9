"""MACEConfig's fields for the foundation-model blocks (interaction kinds, element-agnostic product,
edge irreps): refused with one line when wrong, saved and loaded as JSON, set from a training config,
and the `density` precision component that their neighbour densities run in (never below float32)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import lpmace.io
from lpmace.cli import main
from lpmace.compress import compress
from lpmace.errors import InputError
from lpmace.model import MACE, MACEConfig
from lpmace.precision import PRESETS, PrecisionPolicy

FOUNDATION = dict(first_interaction="density", interaction="nonlinear_residual", agnostic_product=True,
                  edge_channels=6, edge_max_L=2, edge_irreps_first=True)


@pytest.mark.parametrize("override, key", [
    (dict(interaction="attention"), "interaction"),
    (dict(first_interaction="density_plain"), "first_interaction"),
    (dict(agnostic_product="yes"), "agnostic_product"),
    (dict(edge_irreps_first=1), "edge_irreps_first"),
    (dict(edge_channels=0), "edge_channels"),
    (dict(edge_channels=True), "edge_channels"),
    (dict(edge_channels=4.0), "edge_channels"),
    (dict(edge_max_L=-1), "edge_max_L"),
    (dict(edge_max_L=3), "edge_max_L"),  # above max_ell = 2
])
def test_bad_values_are_one_line_input_errors_naming_the_key(make_config, override, key):
    with pytest.raises(InputError, match=key) as err:
        make_config(**override)
    assert "\n" not in str(err.value)


def test_defaults_keep_the_model_of_an_old_config(make_model):
    """A config without the new keys builds the model it always built (same tensors)."""
    old = {k: v for k, v in make_model().config.to_dict().items() if k not in FOUNDATION}
    assert set(MACE(MACEConfig.from_dict(old)).state_dict()) == set(make_model().state_dict())


def test_foundation_config_saves_as_json_and_loads_the_same_model(make_model, tmp_path, bpa_atoms):
    from lpmace.data import graph_from_configuration, read_configurations
    from lpmace import datasets

    model = make_model(**FOUNDATION)
    assert MACEConfig.from_dict(json.loads(json.dumps(model.config.to_dict()))) == model.config
    loaded = lpmace.io.load(lpmace.io.save(model, tmp_path / "m.safetensors"))
    assert loaded.config == model.config
    graph = graph_from_configuration(read_configurations(datasets.path("3bpa/test_300K.xyz"), index=":1")[0], 4.0)
    assert torch.equal(loaded(graph)["forces"], model(graph)["forces"])


def test_training_config_sets_the_new_model_keys():
    from lpmace.train import load_train_config

    cfg = load_train_config(None, ("model.interaction=density_residual", "model.edge_channels=4",
                                   "model.agnostic_product=true"))
    assert (cfg.model["interaction"], cfg.model["edge_channels"], cfg.model["agnostic_product"]) == \
        ("density_residual", 4, True)


def test_species_compression_of_an_element_agnostic_product(make_model):
    model = compress(make_model(agnostic_product=True), species_rank=2)
    assert model.products[0].contraction.weights["L0_nu1"].shape[0] == 1  # shared: left as it is
    assert type(model.interactions[0].skip.weights[0]).__name__ == "LowRankElementWeight"


def test_density_precision_is_at_least_float32_and_shown(capsys):
    assert all(p.density in (torch.float32, torch.float64) for p in PRESETS.values())
    with pytest.raises(InputError, match="density=bfloat16 is below the floor float32"):
        PrecisionPolicy("low", density=torch.bfloat16)
    assert main(["precision", "show", "bf16-full"]) == 0
    assert "\ndensity              float32 " in capsys.readouterr().out


@pytest.mark.parametrize("alone", [True, False], ids=["one-atom-graph", "far-from-water"])
def test_isolated_atom_of_a_density_plain_model_has_energy_e0_plus_shift(alone):
    """No neighbours: ρ = 0, the message is 0 / (1 + 0) = 0, and a plain first interaction adds no skip
    (the same energy as test_model_physics's plain model); the non-linear block after it sees zero
    features and its residual of zero: exactly E0 + shift, zero force."""
    from test_model_physics import E0S, ELEMENTS, isolated_site, make_model

    model = make_model(E0s=E0S, shift=0.37, first_interaction="density", interaction="nonlinear_residual",
                       edge_channels=6, edge_max_L=2)
    for z, e0 in zip(ELEMENTS, E0S):
        energy, force = isolated_site(model, z, alone)
        assert energy == e0 + 0.37
        assert np.all(force == 0.0)
