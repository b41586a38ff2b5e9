"""Everything a run needs before its first step: data, statistics, model.

Deterministic given the config: the train/valid split and the model's initial weights depend only
on `seed`, so a resumed run rebuilds exactly the same data.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, List

import numpy as np
import torch
from ase.data import chemical_symbols

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
from lpmace.errors import InputError
from lpmace.model import MACE, MACEConfig
from lpmace.train.config import TrainConfig, model_config, resolve_path


@dataclass
class RunData:
    train: List[Graph]
    valid: List[Graph]
    tests: Dict[str, List[Graph]]
    model_config: MACEConfig
    train_sources: List[str] = field(default_factory=list)  # train[i] came from train_sources[i]


def _read(cfg: TrainConfig, name: str) -> List[Configuration]:
    configs = read_configurations(
        resolve_path(name), energy_key=cfg.energy_key, forces_key=cfg.forces_key, stress_key=cfg.stress_key
    )
    if not configs:
        raise InputError(f"{name}: no configurations")
    return configs


def _check_known_elements(configs: List[Configuration], elements: List[int]) -> None:
    """InputError naming the file and frame if `configs` hold an element the model will not know."""
    for c in configs:
        unknown = sorted({int(z) for z in c.numbers} - set(elements))
        if unknown:
            raise InputError(f"{c.source}: element(s) {', '.join(chemical_symbols[z] for z in unknown)} not in "
                             f"the training data (the model knows {', '.join(chemical_symbols[z] for z in elements)})")


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
        order = np.random.default_rng(cfg.seed).permutation(len(train))
        n_valid = int(round(cfg.valid_fraction * len(train)))
        valid = [train[i] for i in order[:n_valid]]
        train = [train[i] for i in order[n_valid:]]
    if not train:
        raise InputError(f"{cfg.train_file}: no training configurations left after the validation split")
    tests = {name: _read(cfg, name) for name in cfg.test_files}

    elements = sorted({int(z) for c in train + valid for z in c.numbers})
    for configs in tests.values():  # found now, not after the whole run
        _check_known_elements(configs, elements)
    if cfg.e0s == "isolated":
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
    else:
        e0s = fit_e0s(train, elements)

    r_max = float(cfg.model.get("r_max", MACEConfig.r_max))
    to_graphs = lambda configs: [graph_from_configuration(c, r_max) for c in configs]  # noqa: E731
    train_graphs, valid_graphs = to_graphs(train), to_graphs(valid)
    shift, scale = energy_shift_and_force_scale(train, e0s)
    mcfg = model_config(cfg, elements, e0s, average_num_neighbours(train_graphs), scale, shift)
    log(f"data: {len(train)} train, {len(valid)} valid, "
        + ", ".join(f"{len(v)} test ({k})" for k, v in tests.items())
        + f"; elements {elements}; avg_num_neighbors {mcfg.avg_num_neighbors:.2f}; "
        f"scale {scale:.4f}; shift {shift:.4f}")
    return RunData(train_graphs, valid_graphs, {k: to_graphs(v) for k, v in tests.items()}, mcfg,
                   [c.source for c in train])


def build_model(mcfg: MACEConfig, seed: int, params_dtype: torch.dtype, device: str) -> MACE:
    torch.manual_seed(seed)
    return MACE(mcfg).to(dtype=params_dtype, device=device)


def parameter_groups(model: MACE, weight_decay: float):
    """mace-torch's grouping: weight decay on interaction linears/skips and product weights only."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        wd = name.startswith("products.") or (
            name.startswith("interactions.") and (".linear.weights" in name or ".skip.weights" in name)
        )
        (decay if wd else no_decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
