"""Training configuration: a frozen dataclass loaded from YAML, with `key=value` overrides.

Defaults follow the MACE paper's 3BPA recipe (Batatia et al. 2022; ANCHORS.md W3): AMSGrad, lr 0.01,
plateau scheduler, EMA 0.99, λE = 1, λF = 1000, batch 5, 450/50 train/valid split with seed 1,
E0s from isolated atoms. Paths starting with ``embedded:`` name files shipped in the package.

Every value is checked against its field's declared type and range (`TrainConfig.__post_init__`,
the one owner of these rules) before any data is read; `load_train_config` adds where a bad value
came from (the YAML file or the `key=value` override).
"""

from __future__ import annotations

import dataclasses
import functools
import math
import re
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Optional, Tuple, Union

import yaml

from lpmace.errors import InputError
from lpmace.backends import BACKENDS
from lpmace.model import MACEConfig
from lpmace.train.config_types import ConfigLoader, ConfigValueError, typed


# Model hyperparameters a training config may set (MACEConfig fields that are not data statistics).
MODEL_KEYS = {
    "r_max", "num_bessel", "num_polynomial_cutoff", "max_ell", "channels", "max_L", "correlation",
    "num_interactions", "readout_mlp", "radial_mlp", "first_interaction",
    "interaction", "agnostic_product", "edge_channels", "edge_max_L", "edge_irreps_first",
    "pair_repulsion", "distance_transform", "apply_cutoff",
}
# The model section may also ask for compressed species weights, trained from scratch: a
# "species_compression" conversion of the built model (`model_conversions`), not a MACEConfig field.
COMPRESSION_KEYS = {"species_rank": (Optional[int], None), "int8_embedding": (bool, False)}

# Keys a resumed run may change: they decide how long and where the run goes on, not what the
# finished epochs computed (see `check_resume`). Everything else must match the run's config.yaml.
RESUMABLE_KEYS = ("epochs", "max_time", "output_dir", "device", "backend", "progress", "tensorboard", "cuda_graphs")

_finite = math.isfinite
_POSITIVE = (lambda v: _finite(v) and v > 0, "a finite number > 0")
_NON_NEGATIVE = (lambda v: _finite(v) and v >= 0, "a finite number >= 0")
_COUNT = (lambda v: v >= 1, "an integer >= 1")
_NAMED = (lambda v: v.strip() != "", "a non-empty string")


def _one_of(*choices):
    return (lambda v: v in choices, "one of " + ", ".join(choices))


# The range of each TrainConfig field, checked after its type (None, where allowed, is not checked).
RANGES = {
    "train_file": _NAMED, "valid_fraction": (lambda v: 0 <= v < 1, "in [0, 1)"),
    "e0s": _one_of("isolated", "fit"), "allreduce_dtype": _one_of("fp32", "bf16"),
    "backend": _one_of(*BACKENDS),
    "epochs": _COUNT, "batch_size": _COUNT, "valid_batch_size": _COUNT, "eval_interval": _COUNT,
    "lr": _POSITIVE, "weight_decay": _NON_NEGATIVE,
    "scheduler_patience": (lambda v: v >= 0, "an integer >= 0"),
    "scheduler_factor": (lambda v: 0 < v < 1, "in (0, 1): the plateau scheduler multiplies lr by it"),
    "ema_decay": (lambda v: 0 <= v < 1, "in [0, 1)"),
    "loss_scale_init": _POSITIVE,
    "clip_grad": (lambda v: _finite(v) and v > 0, "a finite number > 0, or null for no clipping"),
    "loss": _one_of("mse", "huber"), "huber_delta": _POSITIVE,
    "energy_weight": _NON_NEGATIVE, "forces_weight": _NON_NEGATIVE, "stress_weight": _NON_NEGATIVE,
    "stage_two_epoch": _COUNT, "stage_two_energy_weight": _NON_NEGATIVE, "stage_two_forces_weight": _NON_NEGATIVE,
    "seed": (lambda v: v >= 0, "an integer >= 0"),
    "split_seed": (lambda v: v >= 0, "an integer >= 0"),  # numpy's generators refuse negative seeds
    "max_time": (lambda v: v > 0, "> 0 seconds, or null for no limit"),
    "output_dir": _NAMED, "foundation_head": _NAMED,
}


@dataclass(frozen=True)
class TrainConfig:
    """Everything a training run needs. See "Training" in docs/usage.md."""

    # data
    train_file: str = "embedded:3bpa/train_300K.xyz"
    valid_file: Optional[str] = None
    valid_fraction: float = 0.1
    test_files: Tuple[str, ...] = ("embedded:3bpa/test_300K.xyz",)  # one name is a one-file list
    isolated_atoms_file: Optional[str] = "embedded:3bpa/iso_atoms.xyz"
    e0s: str = "isolated"  # "isolated" (from isolated_atoms_file or the training file) or "fit"
    energy_key: Optional[str] = "REF_energy"  # null: the files have no such property
    forces_key: Optional[str] = "REF_forces"
    stress_key: Optional[str] = "REF_stress"
    # model (MACEConfig fields; statistics such as E0s, avg_num_neighbors, scale, shift come from data)
    model: Dict[str, Any] = field(default_factory=lambda: {"channels": 128, "max_L": 1, "correlation": 3})
    # a model to start from: its weights, and its config instead of the data's statistics
    # (lpmace.train.prepare.foundation_start); model.* may only repeat what the file says. An lpmace
    # .safetensors, or a mace-torch .model (a pickle: only with trust_mace_model, as lpmace convert)
    foundation_model: Optional[str] = None
    trust_mace_model: bool = False
    foundation_head: Optional[str] = None  # the head a multi-head mace-torch .model keeps
    # precision
    precision: str = "fp32"
    # {epoch: preset}: from that epoch (1-based) on, train with that preset; `precision` until the first
    # (e.g. {31: fp32} after 30 epochs of bf16-mixed). All must keep the same parameter dtype.
    precision_schedule: Optional[Dict[int, str]] = None
    # {epoch: ν}: from that epoch (1-based; 0 also means the first) on, the symmetric contraction uses
    # body orders 1..ν (ν = 1 before the first), newly active weights starting at zero (progressive
    # correlation order, lpmace.train.correlation). ν increases and stays <= model.correlation.
    correlation_schedule: Optional[Dict[int, int]] = None
    backend: str = "auto"  # lpmace.backends: auto | reference | triton | compiled
    cuda_graphs: bool = True  # on one CUDA device: each batch shape's step recorded once, then replayed (lpmace.train.cuda_graphs)
    allreduce_dtype: str = "fp32"  # data-parallel gradient sum on the wire: fp32, or bf16 (half the bytes)
    # optimisation
    epochs: int = 100
    batch_size: int = 5
    valid_batch_size: int = 16
    lr: float = 0.01
    amsgrad: bool = True
    weight_decay: float = 5e-7
    scheduler_patience: int = 50
    scheduler_factor: float = 0.8
    ema_decay: float = 0.99
    loss_scale_init: float = 1024.0  # fp16 only: GradScaler's first scale (it adapts from there)
    clip_grad: Optional[float] = 10.0
    loss: str = "mse"  # "mse" or "huber"
    huber_delta: float = 0.01
    energy_weight: float = 1.0
    forces_weight: float = 1000.0
    stress_weight: float = 1.0
    stage_two_epoch: Optional[int] = None  # from this epoch on, the stage-two weights apply
    stage_two_energy_weight: float = 1000.0
    stage_two_forces_weight: float = 100.0
    # run
    eval_interval: int = 1
    seed: int = 1
    # the validation split's seed (null: seed): runs that differ in seed alone but share split_seed train
    # on the same split, so on the same statistics (E0s, scale, shift, avg_num_neighbors) and one
    # compiled step serves them all (lpmace active's committee members)
    split_seed: Optional[int] = None
    max_time: Optional[float] = None  # seconds of wall time; checked after each epoch
    output_dir: str = "runs/train"
    device: str = "auto"  # lpmace.devices.resolve_device: cuda when present, else cpu
    tensorboard: bool = False
    progress: bool = True

    def __post_init__(self):
        fix = lambda k, v: object.__setattr__(self, k, v)  # noqa: E731
        fix("test_files", () if self.test_files is None else self.test_files)
        fix("model", {} if self.model is None else self.model)
        hints = _field_types()
        for f in dataclasses.fields(self):
            value = typed(f.name, getattr(self, f.name), hints[f.name])
            if value is not None and f.name in RANGES:
                ok, wanted = RANGES[f.name]
                if not ok(value):
                    raise ConfigValueError(f.name, f"{f.name} must be {wanted}, got {value!r}")
            fix(f.name, value)
        fix("model", _checked_model(self.model))
        if self.foundation_head is not None and self.foundation_model is None:
            raise ConfigValueError("foundation_head", "foundation_head is set but foundation_model is not")
        weights = [("energy_weight", "forces_weight")]
        if self.stage_two_epoch is not None:
            weights.append(("stage_two_energy_weight", "stage_two_forces_weight"))
        for pair in weights:
            # validation ranks epochs by the weighted energy and force errors: both 0 ranks nothing
            if not any(getattr(self, k) for k in pair):
                raise ConfigValueError(pair, f"{' and '.join(pair)} are both 0: nothing to train or validate")
        from lpmace.precision import resolve_policy

        try:
            resolve_policy(self.precision)
        except InputError as err:
            raise ConfigValueError("precision", str(err)) from err
        if self.precision_schedule is not None:
            self._check_schedule()
        if self.correlation_schedule is not None:
            self._check_correlation_schedule()

    def _check_schedule(self) -> None:
        from lpmace.precision import resolve_policy

        if not self.precision_schedule:
            raise ConfigValueError("precision_schedule", "precision_schedule must be a mapping {epoch: preset}, "
                                   f"got {self.precision_schedule!r}")
        schedule = {}
        base = resolve_policy(self.precision)
        for epoch, preset in self.precision_schedule.items():
            if not isinstance(epoch, int) or isinstance(epoch, bool) or epoch < 1:
                raise ConfigValueError("precision_schedule",
                                       f"precision_schedule epoch {epoch!r} must be an integer >= 1")
            try:
                policy = resolve_policy(preset)
            except InputError as err:
                raise ConfigValueError("precision_schedule", f"precision_schedule {epoch}: {err}") from err
            if policy.params != base.params:
                raise ConfigValueError(("precision_schedule", "precision"),
                                       f"precision_schedule {epoch}: {preset} keeps parameters in {policy.params}, "
                                       f"but precision {self.precision} in {base.params}; "
                                       "a schedule cannot change the master weights' dtype")
            schedule[epoch] = str(preset)
        object.__setattr__(self, "precision_schedule", dict(sorted(schedule.items())))

    def _check_correlation_schedule(self) -> None:
        given, key = self.correlation_schedule, "correlation_schedule"
        if not given:
            raise ConfigValueError(key, f"correlation_schedule must be a mapping {{epoch: order}}, got {given!r}")
        if self.model.get("species_rank") is not None:
            raise ConfigValueError((key, "model.species_rank"),
                                   "correlation_schedule and model.species_rank cannot be combined yet "
                                   "(the schedule zeroes full contraction weights; low-rank ones are factors)")
        correlation = self.model.get("correlation", MACEConfig.correlation)
        top = max(correlation if isinstance(correlation, (list, tuple)) else [correlation])
        integer = lambda x: isinstance(x, int) and not isinstance(x, bool)  # noqa: E731
        for epoch, nu in given.items():
            if not integer(epoch) or epoch < 0:
                raise ConfigValueError(key, f"correlation_schedule epoch {epoch!r} must be an integer >= 0")
            if not integer(nu) or not 1 <= nu <= top:
                raise ConfigValueError((key, "model.correlation"), f"correlation_schedule {epoch}: order {nu!r} "
                                       f"must be an integer in 1..{top} (model.correlation)")
        if 0 in given and 1 in given:
            raise ConfigValueError(key, "correlation_schedule epochs 0 and 1 both name the first epoch")
        schedule = dict(sorted(given.items()))
        orders = list(schedule.values())
        if any(b <= a for a, b in zip(orders, orders[1:], strict=False)):
            raise ConfigValueError(key, f"correlation_schedule {schedule}: the order must increase with the epoch")
        object.__setattr__(self, "correlation_schedule", schedule)

    def correlation_at(self, epoch: int) -> Optional[int]:
        """The body order that trains epoch `epoch` (1-based); None without a correlation_schedule."""
        if self.correlation_schedule is None:
            return None
        current = 1
        for start, nu in self.correlation_schedule.items():
            if epoch >= start:
                current = nu
        return current

    def precision_at(self, epoch: int) -> str:
        """The preset that trains epoch `epoch` (1-based)."""
        current = self.precision
        for start, preset in (self.precision_schedule or {}).items():
            if epoch >= start:
                current = preset
        return current

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["test_files"] = list(self.test_files)
        return d


@functools.lru_cache(maxsize=None)
def _field_types() -> dict:
    return typing.get_type_hints(TrainConfig)


@functools.lru_cache(maxsize=None)
def _model_types() -> dict:
    hints = typing.get_type_hints(MACEConfig)
    types = {key: hints[key] for key in MODEL_KEYS}
    types.update((key, hint) for key, (hint, _) in COMPRESSION_KEYS.items())
    types["correlation"] = Union[int, hints["correlation"]]  # one order for every interaction
    return types


def _checked_model(model: dict) -> dict:
    """The model section with its values typed (lists, not tuples: config.yaml is plain YAML) and
    checked by MACEConfig, the owner of their ranges, before any data is read."""
    unknown = sorted(set(map(str, model)) - MODEL_KEYS - set(COMPRESSION_KEYS))
    if unknown:
        raise ConfigValueError([f"model.{k}" for k in unknown],
                               f"unknown model key(s): {', '.join('model.' + k for k in unknown)} "
                               f"(known: {', '.join(sorted(MODEL_KEYS | set(COMPRESSION_KEYS)))})")
    types, values = _model_types(), {}
    for key, value in model.items():
        value = typed(f"model.{key}", value, types[key])
        values[key] = list(value) if isinstance(value, tuple) else value
    rank = values.get("species_rank")
    if rank is not None and rank < 1:  # its upper bound, the number of elements, comes with the data
        raise ConfigValueError("model.species_rank", f"model.species_rank must be an integer >= 1 or null, got {rank}")
    try:
        _mace_config(values, (1,))
    except InputError as err:
        named = [k for k in values if re.search(rf"\b{k}\b", str(err))] or list(values)
        raise ConfigValueError([f"model.{k}" for k in named], f"model: {err}") from err
    return values


def _mace_config(model: dict, atomic_numbers, e0s=(), **statistics) -> MACEConfig:
    physics = {k: v for k, v in model.items() if k not in COMPRESSION_KEYS}
    return MACEConfig(atomic_numbers=tuple(atomic_numbers), E0s=tuple(e0s), **statistics, **physics)


def model_conversions(model: dict) -> list:
    """The conversions a run applies to its freshly built model (`lpmace.conversions`): species
    compression with random factors when the model section asks for it, else none."""
    rank, int8 = (model.get(key, default) for key, (_, default) in COMPRESSION_KEYS.items())
    if rank is None and not int8:
        return []
    return [{"name": "species_compression", "species_rank": rank, "int8_embedding": int8, "how": "random"}]


def _set_dotted(data: dict, key: str, value: Any):
    parts = key.split(".")
    target = data
    for part in parts[:-1]:
        target = target.setdefault(part, {})
        if not isinstance(target, dict):
            raise InputError(f"override {key}: {part} is not a section")
    target[parts[-1]] = value


def _source(key: str, sources: dict) -> Optional[str]:
    """Where `key` was set: itself, a section above it (``model``), or a key below it."""
    parts = key.split(".")
    for n in range(len(parts), 0, -1):
        if ".".join(parts[:n]) in sources:
            return sources[".".join(parts[:n])]
    return next((where for k, where in sources.items() if k.startswith(key + ".")), None)


def _where(keys, sources: dict) -> str:
    found = dict.fromkeys(s for s in (_source(str(k), sources) for k in keys) if s)
    return ", ".join(found) or "training config"


def load_train_config(path: Optional[str], overrides: Tuple[str, ...] = (), *, resume: bool = False) -> TrainConfig:
    """TrainConfig from a YAML file (or defaults when path is None) plus `key=value` overrides
    (dotted keys reach into `model`, values parsed as YAML: ``model.channels=64 epochs=5``).
    A bad value is refused naming its key and where it was set (`path` or the override). With
    `resume`, the config must also match the run's config.yaml in output_dir (`check_resume`)."""
    data: dict = {}
    sources: Dict[str, str] = {}  # dotted key -> the file or override that set it
    if path is not None:
        try:
            text = Path(path).read_text()
        except OSError as err:
            raise InputError(f"{path}: cannot read training config ({err.strerror})") from err
        try:
            data = yaml.load(text, ConfigLoader) or {}
        except yaml.YAMLError as err:
            raise InputError(f"{path}: not valid YAML ({err})") from err
        if not isinstance(data, dict):
            raise InputError(f"{path}: expected a mapping of settings")
        sources.update((str(k), str(path)) for k in data)
    for item in overrides:
        if "=" not in item:
            raise InputError(f"override {item!r} is not key=value")
        key, raw = item.split("=", 1)
        key = key.strip()
        try:
            value = yaml.load(raw, ConfigLoader)
        except yaml.YAMLError:
            value = raw
        _set_dotted(data, key, value)
        for below in [k for k in sources if k.startswith(key + ".")]:
            del sources[below]
        sources[key] = f"override {item}"
    if data.get("foundation_model") is not None and "model" not in data:
        data["model"] = {}  # the default model section would contradict the foundation model's
    names = {f.name for f in dataclasses.fields(TrainConfig)}
    unknown = [k for k in data if k not in names]
    if unknown:
        raise InputError(f"{_where(unknown, sources)}: unknown training config key(s): {', '.join(map(str, unknown))}")
    try:
        cfg = TrainConfig(**data)
    except ConfigValueError as err:
        raise InputError(f"{_where(err.keys, sources)}: {err.message}") from err
    if resume:
        check_resume(cfg, sources)
    return cfg


def _comparable(config: dict) -> dict:
    """A config dict as YAML reads it back, flattened, every model key with its effective value."""
    config = yaml.load(yaml.safe_dump(config, sort_keys=False), ConfigLoader)
    flat = {k: v for k, v in config.items() if k != "model"}
    model = config.get("model") if isinstance(config.get("model"), dict) else {}
    try:
        effective = _mace_config(model, (1,))
        model = {**{k: getattr(effective, k) for k in MODEL_KEYS},
                 **{k: model.get(k, default) for k, (_, default) in COMPRESSION_KEYS.items()}}
    except (InputError, TypeError, ValueError):
        pass  # a config.yaml this version cannot read: compare what it says
    flat.update((f"model.{k}", list(v) if isinstance(v, tuple) else v) for k, v in model.items())
    return flat


def check_resume(cfg: TrainConfig, sources: Optional[dict] = None) -> None:
    """Refuse to resume the run in cfg.output_dir with a config that differs from its config.yaml,
    except in RESUMABLE_KEYS. The checkpoint restores the model, optimizer and scheduler, so another
    model or lr would be ignored (and others would mix two recipes in one run), while the rewritten
    config.yaml would claim them. Without config.yaml there is no run to compare with."""
    saved_path = Path(cfg.output_dir) / "config.yaml"
    if not saved_path.exists():
        return
    try:
        saved = yaml.load(saved_path.read_text(), ConfigLoader)
    except (OSError, yaml.YAMLError) as err:
        raise InputError(f"{saved_path}: cannot read the run's config ({err})") from err
    if not isinstance(saved, dict):
        raise InputError(f"{saved_path}: not a training config (expected a mapping of settings)")
    now, then = _comparable(cfg.to_dict()), _comparable(saved)
    changed = [k for k in now if k in then and k not in RESUMABLE_KEYS and now[k] != then[k]]
    if changed:
        what = "; ".join(f"{k} is {now[k]!r} ({_source(k, sources or {}) or 'the default'}) but {then[k]!r} "
                         f"in {saved_path}" for k in changed)
        raise InputError(f"--resume: {what}; a resumed run keeps its config except {', '.join(RESUMABLE_KEYS)} "
                         "(start a new run in another output_dir to change the rest)")


def model_config(cfg: TrainConfig, atomic_numbers, e0s, avg_num_neighbors, scale, shift) -> MACEConfig:
    """The MACEConfig of a run: the config's model section plus statistics from the data."""
    return _mace_config(cfg.model, atomic_numbers, tuple(e0s[z] for z in atomic_numbers),
                        avg_num_neighbors=avg_num_neighbors, scale=scale, shift=shift)
