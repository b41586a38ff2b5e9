"""The `lpmace active` config: frozen sections read from YAML, every key and value checked before any work.

A bad key or value is an InputError naming the file and the dotted key (``sample.dt_fs``). The
``train`` section is a training config (`lpmace.train.TrainConfig`) less the keys the loop sets
itself (`LOOP_TRAIN_KEYS`), plus ``retrain_epochs``; it is checked by building the first round's
TrainConfig. The oracle is imported and constructed here too, so a bad import path stops the run
before the first model is trained.
"""

from __future__ import annotations

import dataclasses
import math
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Optional, Tuple

import yaml

from lpmace.errors import InputError
from lpmace.train.config_types import ConfigLoader, ConfigValueError, typed

# Training keys the loop owns: data files, where members go, their seeds, warm starts, devices.
LOOP_TRAIN_KEYS = ("train_file", "valid_file", "test_files", "output_dir", "foundation_model", "trust_mace_model",
                   "foundation_head", "seed", "split_seed", "device", "backend", "energy_key", "forces_key", "stress_key",
                   "isolated_atoms_file", "max_time")
# Training defaults of the loop: single-element data has no isolated atoms, so E0s are fitted.
TRAIN_DEFAULTS = {"e0s": "fit", "valid_fraction": 0.1, "progress": False, "epochs": 40, "batch_size": 4}
ENERGY_KEY, FORCES_KEY = "REF_energy", "REF_forces"  # the labels the loop writes and trains on

_POSITIVE = (lambda v: math.isfinite(v) and v > 0, "a finite number > 0")
_NON_NEGATIVE = (lambda v: math.isfinite(v) and v >= 0, "a finite number >= 0")
_COUNT = (lambda v: v >= 1, "an integer >= 1")
_COUNT0 = (lambda v: v >= 0, "an integer >= 0")


@dataclass(frozen=True)
class Structures:
    """Rattled crystals, generated from the run's seed: ``bulk(symbol, crystal, a, cubic)`` repeated
    ``repeat`` times along each axis, positions moved by normal noise of ``rattle`` Å."""

    symbol: str = "Cu"
    crystal: str = "fcc"
    a: float = 3.61
    repeat: int = 2
    rattle: float = 0.05
    count: int = 8  # starting structures
    test_count: int = 20  # held-out test structures (another random stream of the same seed)
    test_rattle: Optional[float] = None  # None: rattle
    RANGES = {"a": _POSITIVE, "repeat": _COUNT, "rattle": _NON_NEGATIVE, "count": _COUNT, "test_count": _COUNT,
              "test_rattle": _NON_NEGATIVE, "crystal": (lambda v: v in ("fcc", "bcc", "hcp", "sc", "diamond"),
                                                         "one of fcc, bcc, hcp, sc, diamond")}


@dataclass(frozen=True)
class Sample:
    """Committee MD from ``starts`` dataset structures per temperature: all trajectories advanced
    together by the torch engine (`lpmace.dynamics.run_dynamics`), or one after another through ASE
    (`lpmace.md.run_md`); ``engine`` auto: torch on CUDA, ASE elsewhere."""

    engine: str = "auto"
    precision: str = "fp32"
    ensemble: str = "nvt"
    temperatures_K: Tuple[float, ...] = (300.0,)
    starts: int = 2
    steps: int = 200
    dt_fs: float = 2.0
    interval: int = 5
    friction_per_fs: float = 0.02
    RANGES = {"ensemble": (lambda v: v in ("nve", "nvt"), "nve or nvt"), "starts": _COUNT, "steps": _COUNT,
              "engine": (lambda v: v in ("auto", "torch", "ase"), "auto, torch or ase"),
              "dt_fs": _POSITIVE, "interval": _COUNT, "friction_per_fs": _POSITIVE,
              "temperatures_K": (lambda v: len(v) > 0 and all(math.isfinite(t) and t >= 0 for t in v),
                                 "a non-empty list of temperatures >= 0")}


@dataclass(frozen=True)
class Select:
    """The ``k`` most uncertain MD frames above ``threshold`` (eV/Å, largest per-atom force spread) and
    not above ``max_uncertainty`` (None: no limit; frames the committee disagrees on that much are
    usually unphysical, just before a blow-up, where a DFT oracle may fail), at least
    ``min_separation_fs`` apart within a trajectory; ``random`` random frames for comparison."""

    k: int = 4
    threshold: float = 0.0
    max_uncertainty: Optional[float] = None
    min_separation_fs: float = 20.0
    random: int = 4
    RANGES = {"k": _COUNT, "threshold": _NON_NEGATIVE, "min_separation_fs": _NON_NEGATIVE, "random": _COUNT0,
              "max_uncertainty": (lambda v: math.isfinite(v) and v > 0, "a finite number > 0 (or null: no limit)")}


@dataclass(frozen=True)
class ActiveConfig:
    """Everything `lpmace active` needs; see "Active learning" in docs/usage.md."""

    output_dir: str = "runs/active"
    seed: int = 0
    rounds: int = 3
    committee: int = 3
    oracle: str = "ase.calculators.emt:EMT"  # module:Class of an ASE calculator, or "none"
    oracle_kwargs: Dict[str, Any] = field(default_factory=dict)
    data_file: Optional[str] = None  # labelled starting data (extxyz); None: generate `structures`
    test_file: Optional[str] = None  # labelled held-out set; None: generate `structures`
    structures: Structures = field(default_factory=Structures)
    train: Dict[str, Any] = field(default_factory=dict)
    retrain_epochs: int = 15
    sample: Sample = field(default_factory=Sample)
    select: Select = field(default_factory=Select)
    device: str = "auto"  # lpmace.devices.resolve_device: cuda when present, else cpu
    backend: str = "auto"
    RANGES = {"rounds": _COUNT, "committee": (lambda v: v >= 2, "an integer >= 2"), "retrain_epochs": _COUNT,
              "seed": _COUNT0, "output_dir": (lambda v: v.strip() != "", "a non-empty string"),
              "oracle": (lambda v: v == "none" or ":" in v, "module:Class (e.g. ase.calculators.emt:EMT) or none")}

    def to_dict(self) -> dict:
        return json_ready(dataclasses.asdict(self))


def json_ready(value):
    """Tuples as lists, recursively (what YAML and JSON read back)."""
    if isinstance(value, dict):
        return {k: json_ready(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_ready(v) for v in value]
    return value


def _build(cls, data: Any, prefix: str):
    """`cls` from the mapping `data`, every key known and every value typed and in range."""
    if not isinstance(data, dict):
        raise ConfigValueError(prefix.rstrip("."), f"{prefix.rstrip('.')} must be a mapping, got {data!r}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = [str(k) for k in data if k not in fields]
    if unknown:
        raise ConfigValueError([prefix + k for k in unknown], f"unknown key(s) {', '.join(prefix + k for k in unknown)} "
                               f"(known: {', '.join(prefix + k for k in fields)})")
    values = {}
    for name, value in data.items():
        hint = hints[name]
        if dataclasses.is_dataclass(hint):
            values[name] = _build(hint, value, f"{prefix}{name}.")
            continue
        value = typed(prefix + name, value, hint)
        check = cls.RANGES.get(name)
        if value is not None and check is not None and not check[0](value):
            raise ConfigValueError(prefix + name, f"{prefix}{name} must be {check[1]}, got {value!r}")
        values[name] = value
    return cls(**values)


def member_train_config(cfg: ActiveConfig, *, train_file: str, output_dir: str, seed: int,
                        warm_start: Optional[str] = None, device: Optional[str] = None):
    """The TrainConfig of one committee member: the `train` section over the loop's defaults, from
    scratch (round 1: `train.epochs`) or from `warm_start`'s weights (`retrain_epochs`), on `device`
    (None: the config's). Members differ in `seed` (initial weights, batch order); they share the
    validation split (`split_seed`: the run's seed), so the data's statistics and the model
    configuration are the same for all, and the compiled training step of the first serves the others."""
    from lpmace.train import TrainConfig

    unknown = sorted(set(cfg.train) - {f.name for f in dataclasses.fields(TrainConfig)})
    if unknown:
        raise ConfigValueError(unknown, f"unknown training key(s) {', '.join('train.' + k for k in unknown)}")
    values = {**TRAIN_DEFAULTS, **cfg.train, "train_file": train_file, "test_files": [], "output_dir": output_dir,
              "seed": seed, "split_seed": cfg.seed, "device": cfg.device if device is None else device, "backend": cfg.backend, "energy_key": ENERGY_KEY,
              "forces_key": FORCES_KEY, "stress_key": None, "isolated_atoms_file": None}
    if warm_start is not None:  # the file's architecture and statistics: the model section must go
        values.update(foundation_model=warm_start, epochs=cfg.retrain_epochs, model={})
    return TrainConfig(**values)


def load_active_config(path: str, output_dir: Optional[str] = None) -> tuple[ActiveConfig, Any]:
    """(config, oracle calculator or None) from the YAML file `path`; `output_dir` overrides its own.
    InputError naming `path` and the key for anything wrong, before any work is done."""
    try:
        data = yaml.load(Path(path).read_text(), ConfigLoader) or {}
    except OSError as err:
        raise InputError(f"{path}: cannot read active-learning config ({err.strerror})") from err
    except yaml.YAMLError as err:
        raise InputError(f"{path}: not valid YAML ({' '.join(str(err).split())})") from err
    if output_dir is not None:
        data["output_dir"] = output_dir
    try:
        cfg = _build(ActiveConfig, data, "")
        bad = [k for k in cfg.train if k in LOOP_TRAIN_KEYS or k == "retrain_epochs"]
        if bad:
            raise ConfigValueError([f"train.{k}" for k in bad], f"train.{bad[0]} is set by the loop itself "
                                   f"(the loop owns {', '.join(LOOP_TRAIN_KEYS)}; retrain_epochs is a top-level key)")
        from lpmace.precision import resolve_policy

        try:
            resolve_policy(cfg.sample.precision)
        except InputError as err:
            raise ConfigValueError("sample.precision", f"sample.precision: {err}") from err
        try:
            member_train_config(cfg, train_file="dataset.xyz", output_dir="member", seed=cfg.seed)
        except ConfigValueError as err:
            raise ConfigValueError([f"train.{k}" for k in err.keys], err.message.replace("training config: ", "")) from err
    except ConfigValueError as err:
        raise InputError(f"{path}: {err.message}") from err
    if cfg.oracle == "none" and (cfg.data_file is None or cfg.test_file is None):
        raise InputError(f"{path}: oracle none cannot label generated structures: give data_file and test_file")
    for key in ("data_file", "test_file"):
        name = getattr(cfg, key)
        if name is not None and not Path(name).is_file():
            raise InputError(f"{path}: {key} {name}: no such file")
    from lpmace.active.oracle import load_oracle

    oracle = load_oracle(cfg.oracle, cfg.oracle_kwargs, where=str(path))
    return cfg, oracle
