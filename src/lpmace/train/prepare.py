"""Everything a run needs before its first step: data, statistics, model.

Deterministic given the config: the train/valid split and the model's initial weights depend only
on `seed`, so a resumed run rebuilds exactly the same data.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Tuple

import numpy as np
import torch

from lpmace.data import (
    Configuration,
    Graph,
    average_num_neighbours,
    e0s_from_isolated_atoms,
    energy_shift_and_force_scale,
    fit_e0s,
    graph_from_configuration,
    read_configurations,
)
from lpmace.conversions import rebuild
from lpmace.datasets import resolve_path
from lpmace.elements import check_configurations
from lpmace.errors import InputError
from lpmace.model import MACE, MACEConfig
from lpmace.train.config import COMPRESSION_KEYS, TrainConfig, model_config, model_conversions


@dataclass
class RunData:
    train: List[Graph]
    valid: List[Graph]
    tests: Dict[str, List[Graph]]
    model_config: MACEConfig
    train_sources: List[str] = field(default_factory=list)  # train[i] came from train_sources[i]
    initial_weights: Optional[Dict[str, torch.Tensor]] = None  # the foundation model's, if any
    conversions: List[dict] = field(default_factory=list)  # applied to the built model (lpmace.conversions)


def _read(cfg: TrainConfig, name: str) -> List[Configuration]:
    configs = read_configurations(
        resolve_path(name), energy_key=cfg.energy_key, forces_key=cfg.forces_key, stress_key=cfg.stress_key
    )
    if not configs:
        raise InputError(f"{name}: no configurations")
    return configs


def _is_isolated_atom(c: Configuration) -> bool:
    return c.num_atoms == 1 and not bool(np.any(c.pbc))


def prepare(cfg: TrainConfig, log=print) -> RunData:
    """Read the data, split, compute E0s/avg_num_neighbors/scale/shift, build graphs."""
    everything = _read(cfg, cfg.train_file)
    isolated = [c for c in everything if _is_isolated_atom(c)]
    train = [c for c in everything if not _is_isolated_atom(c)]
    if cfg.valid_file:
        valid = _read(cfg, cfg.valid_file)
    else:
        order = np.random.default_rng(cfg.seed if cfg.split_seed is None else cfg.split_seed).permutation(len(train))
        n_valid = int(round(cfg.valid_fraction * len(train)))
        valid = [train[i] for i in order[:n_valid]]
        train = [train[i] for i in order[n_valid:]]
    if not train:
        raise InputError(f"{cfg.train_file}: no training configurations left after the validation split")
    tests = {name: _read(cfg, name) for name in cfg.test_files}

    elements = sorted({int(z) for c in train + valid for z in c.numbers})
    foundation, weights, conversions = None, None, model_conversions(cfg.model)
    if cfg.foundation_model is not None:  # its elements, not the data's, are the model's
        files = {cfg.train_file: train, cfg.valid_file or "valid": valid, **tests}
        foundation, weights, conversions = foundation_start(cfg, files)
    else:
        for configs in tests.values():  # found now, not after the whole run
            check_configurations(configs, elements, "the training data")
    if foundation is None and cfg.e0s == "isolated":
        source = cfg.isolated_atoms_file or cfg.train_file
        if cfg.isolated_atoms_file:
            isolated = read_configurations(resolve_path(cfg.isolated_atoms_file), energy_key=cfg.energy_key,
                                           forces_key=None, stress_key=None)
        if not isolated:
            raise InputError(f"{source}: e0s=isolated but no isolated atoms found; set "
                             "isolated_atoms_file or e0s=fit")
        try:
            e0s = e0s_from_isolated_atoms(isolated, elements)
        except InputError as err:
            raise InputError(f"{source}: {err}") from err
    elif foundation is None:
        e0s = fit_e0s(train, elements)

    r_max = foundation.r_max if foundation else float(cfg.model.get("r_max", MACEConfig.r_max))
    to_graphs = lambda configs: [graph_from_configuration(c, r_max) for c in configs]  # noqa: E731
    train_graphs, valid_graphs = to_graphs(train), to_graphs(valid)
    if foundation is not None:  # its E0s, scale, shift and avg_num_neighbors stand
        mcfg = foundation
    else:
        shift, scale = energy_shift_and_force_scale(train, e0s)
        mcfg = model_config(cfg, elements, e0s, average_num_neighbours(train_graphs), scale, shift)
    log(f"data: {len(train)} train, {len(valid)} valid"
        + "".join(f", {len(v)} test ({k})" for k, v in tests.items())
        + f"; elements {elements}; avg_num_neighbors {mcfg.avg_num_neighbors:.2f}; "
        f"scale {mcfg.scale:.4f}; shift {mcfg.shift:.4f}" + (f"; from {cfg.foundation_model}" if foundation else ""))
    return RunData(train_graphs, valid_graphs, {k: to_graphs(v) for k, v in tests.items()}, mcfg,
                   [c.source for c in train], weights, conversions)


def foundation_start(cfg: TrainConfig, data: Dict[str, List[Configuration]]
                     ) -> Tuple[MACEConfig, Dict[str, torch.Tensor], List[dict]]:
    """The MACEConfig, weights and conversions of `cfg.foundation_model`, checked against the run:
    every model.* key must repeat the file's value (the architecture, E0s, statistics and species
    compression are the file's, so that the weights mean what they meant), and every element of
    `data` ({file name: configurations}) must be one the model knows (a subset: the model keeps
    all of its elements, and the weights of those the data lacks are trained only through what
    they share with the others)."""
    from lpmace.quantize import quantization_info

    name = cfg.foundation_model
    path = resolve_path(name)
    if not path.is_file():
        raise InputError(f"foundation_model {name}: no such file")
    model = _foundation_file(cfg, path)
    if quantization_info(model) is not None:
        raise InputError(f"foundation_model {name}: its readouts are quantized (for inference only); "
                         "start from the unquantized model file")
    if cfg.correlation_schedule is not None:
        raise InputError("training config: correlation_schedule cannot start from a foundation_model "
                         "(it would zero the model's trained higher-order weights)")
    config = model.config
    compression = {key: default for key, (_, default) in COMPRESSION_KEYS.items()}
    for entry in model.conversions:  # the file's species compression, as the model section says it
        if entry["name"] == "species_compression":
            compression = {key: entry[key] for key in COMPRESSION_KEYS}
    for key, value in cfg.model.items():
        if key in COMPRESSION_KEYS:
            asked, has = value, compression[key]
        else:
            try:  # through MACEConfig, so that e.g. correlation 3 equals the file's (3, 3)
                asked = getattr(dataclasses.replace(config, **{key: value}), key)
            except (InputError, TypeError, ValueError):
                asked = value
            has = getattr(config, key)
        if asked != has:
            raise InputError(f"model.{key}={value!r} contradicts foundation_model {name}, which has "
                             f"{key} {has!r}: leave model.{key} out")
    for configs in data.values():
        check_configurations(configs, config.atomic_numbers, f"foundation_model {name}")
    return config, model.state_dict(), list(model.conversions)


def _foundation_file(cfg: TrainConfig, path) -> MACE:
    """The model in `path`: an lpmace .safetensors, or a mace-torch pickle imported (lpmace.interop)
    with its head `cfg.foundation_head`, which only `trust_mace_model` lets us unpickle."""
    from lpmace.io import load

    name = cfg.foundation_model
    if path.suffix == ".safetensors":
        if cfg.foundation_head is not None:
            raise InputError(f"foundation_head {cfg.foundation_head!r}: foundation_model {name} is an lpmace "
                             "model with one head; leave foundation_head out")
        return load(path)
    if not cfg.trust_mace_model:
        raise InputError(f"foundation_model {name}: a mace-torch .model file is a pickle that runs code when "
                         "loaded; set trust_mace_model: true if you trust it (or convert it once with lpmace convert)")
    from lpmace.interop import from_mace_torch, load_mace_torch_model
    from lpmace.interop.mace_torch import head_index

    try:
        mace = load_mace_torch_model(str(path))
    except InputError as err:
        raise InputError(f"foundation_model {name}: {str(err).removeprefix(f'{path}: ')}") from None
    try:
        head_index(mace, cfg.foundation_head)  # a multi-head model without a head: the list of its heads
    except InputError as err:
        raise InputError(f"foundation_model {name}: {err}; here: foundation_head: NAME") from None
    try:
        return from_mace_torch(mace, head=cfg.foundation_head)
    except InputError as err:
        raise InputError(f"foundation_model {name}: {err}") from None


def build_model(mcfg: MACEConfig, seed: int, params_dtype: torch.dtype, device: str,
                weights: Optional[Dict[str, torch.Tensor]] = None, conversions: Optional[List[dict]] = None) -> MACE:
    """MACE(mcfg) seeded, given the structure of `conversions` (random species factors: the start of
    a compressed model trained from scratch), then `weights` if given, in `params_dtype` on `device`."""
    torch.manual_seed(seed)
    model = rebuild(MACE(mcfg), conversions or []).to(dtype=params_dtype)
    if weights is not None:  # a foundation model's, cast to the run's parameter dtype (not rounded on the way)
        model.load_state_dict(weights)
    return model.to(device=device)


def parameter_groups(model: MACE, weight_decay: float):
    """mace-torch's grouping: weight decay on interaction linears/skips and product weights only."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        wd = name.startswith("products.") or (
            name.startswith("interactions.") and (".linear.weights" in name or ".skip.weights" in name)
        )
        (decay if wd else no_decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
