"""Training configuration: a frozen dataclass loaded from YAML, with `key=value` overrides.

Defaults follow the MACE paper's 3BPA recipe (Batatia et al. 2022; ANCHORS.md W3): AMSGrad, lr 0.01,
plateau scheduler, EMA 0.99, λE = 1, λF = 1000, batch 5, 450/50 train/valid split with seed 1,
E0s from isolated atoms. Paths starting with ``embedded:`` name files shipped in the package.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Optional, Tuple

import yaml

from lpmace.errors import InputError
from lpmace.model import MACEConfig

EMBEDDED = "embedded:"

# Model hyperparameters a training config may set (MACEConfig fields that are not data statistics).
MODEL_KEYS = {
    "r_max", "num_bessel", "num_polynomial_cutoff", "max_ell", "channels", "max_L", "correlation",
    "num_interactions", "readout_mlp", "radial_mlp", "first_interaction", "species_rank", "int8_embedding",
}


@dataclass(frozen=True)
class TrainConfig:
    """Everything a training run needs. See docs in README ("Training")."""

    # data
    train_file: str = "embedded:3bpa/train_300K.xyz"
    valid_file: Optional[str] = None
    valid_fraction: float = 0.1
    test_files: Tuple[str, ...] = ("embedded:3bpa/test_300K.xyz",)
    isolated_atoms_file: Optional[str] = "embedded:3bpa/iso_atoms.xyz"
    e0s: str = "isolated"  # "isolated" (from isolated_atoms_file or the training file) or "fit"
    energy_key: str = "REF_energy"
    forces_key: str = "REF_forces"
    stress_key: str = "REF_stress"
    # model (MACEConfig fields; statistics such as E0s, avg_num_neighbors, scale, shift come from data)
    model: Dict[str, Any] = field(default_factory=lambda: {"channels": 128, "max_L": 1, "correlation": 3})
    # a lpmace .safetensors model to start from: its weights, and its config instead of the data's
    # statistics (lpmace.train.prepare.foundation_start); model.* may only repeat what the file says
    foundation_model: Optional[str] = None
    # precision
    precision: str = "fp32"
    # {epoch: preset}: from that epoch (1-based) on, train with that preset; `precision` until the first
    # (e.g. {31: fp32} after 30 epochs of bf16-mixed). All must keep the same parameter dtype.
    precision_schedule: Optional[Dict[int, str]] = None
    # {epoch: ν}: from that epoch (1-based; 0 also means the first) on, the symmetric contraction uses
    # body orders 1..ν (ν = 1 before the first), newly active weights starting at zero (progressive
    # correlation order, lpmace.train.correlation). ν increases and stays <= model.correlation.
    correlation_schedule: Optional[Dict[int, int]] = None
    backend: str = "auto"  # lpmace.kernels: auto | reference | triton | compiled
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
    max_time: Optional[float] = None  # seconds of wall time; checked after each epoch
    output_dir: str = "runs/train"
    device: str = "cpu"
    tensorboard: bool = False
    progress: bool = True

    def __post_init__(self):
        fix = lambda k, v: object.__setattr__(self, k, v)  # noqa: E731
        fix("test_files", tuple(self.test_files or ()))
        fix("model", dict(self.model or {}))
        unknown = sorted(set(self.model) - MODEL_KEYS)
        if unknown:
            raise InputError(f"unknown model key(s): {', '.join('model.' + k for k in unknown)} "
                             f"(known: {', '.join(sorted(MODEL_KEYS))})")
        checks = [
            (self.epochs >= 1, "epochs must be >= 1"),
            (self.batch_size >= 1 and self.valid_batch_size >= 1, "batch sizes must be >= 1"),
            (0.0 <= self.valid_fraction < 1.0, "valid_fraction must be in [0, 1)"),
            (self.lr > 0, "lr must be positive"),
            (0.0 <= self.ema_decay < 1.0, "ema_decay must be in [0, 1)"),
            (self.loss in ("mse", "huber"), f"loss must be 'mse' or 'huber', got {self.loss!r}"),
            (self.e0s in ("isolated", "fit"), f"e0s must be 'isolated' or 'fit', got {self.e0s!r}"),
            (self.max_time is None or self.max_time > 0, "max_time must be positive"),
            (self.eval_interval >= 1, "eval_interval must be >= 1"),
            (self.allreduce_dtype in ("fp32", "bf16"), f"allreduce_dtype must be fp32 or bf16, got {self.allreduce_dtype!r}"),
        ]
        for ok, message in checks:
            if not ok:
                raise InputError(f"training config: {message}")
        if self.precision_schedule is not None:
            self._check_schedule()
        if self.correlation_schedule is not None:
            self._check_correlation_schedule()

    def _check_schedule(self) -> None:
        from lpmace.precision import resolve_policy

        if not isinstance(self.precision_schedule, dict) or not self.precision_schedule:
            raise InputError("training config: precision_schedule must be a mapping {epoch: preset}, "
                             f"got {self.precision_schedule!r}")
        schedule = {}
        base = resolve_policy(self.precision)
        for epoch, preset in self.precision_schedule.items():
            if not isinstance(epoch, int) or isinstance(epoch, bool) or epoch < 1:
                raise InputError(f"training config: precision_schedule epoch {epoch!r} must be an integer >= 1")
            policy = resolve_policy(preset)
            if policy.params != base.params:
                raise InputError(f"training config: precision_schedule {epoch}: {preset} keeps parameters in "
                                 f"{policy.params}, but precision {self.precision} in {base.params}; "
                                 "a schedule cannot change the master weights' dtype")
            schedule[epoch] = str(preset)
        object.__setattr__(self, "precision_schedule", dict(sorted(schedule.items())))

    def _check_correlation_schedule(self) -> None:
        given = self.correlation_schedule
        if not isinstance(given, dict) or not given:
            raise InputError(f"training config: correlation_schedule must be a mapping {{epoch: order}}, got {given!r}")
        if self.model.get("species_rank") is not None:
            raise InputError("training config: correlation_schedule and model.species_rank cannot be combined yet "
                             "(the schedule zeroes full contraction weights; low-rank ones are factors)")
        correlation = self.model.get("correlation", MACEConfig.correlation)
        try:
            top = max(int(c) for c in (correlation if isinstance(correlation, (list, tuple)) else [correlation]))
        except (TypeError, ValueError) as err:
            raise InputError(f"training config: model.correlation {correlation!r} is not an order") from err
        integer = lambda x: isinstance(x, int) and not isinstance(x, bool)  # noqa: E731
        for epoch, nu in given.items():
            if not integer(epoch) or epoch < 0:
                raise InputError(f"training config: correlation_schedule epoch {epoch!r} must be an integer >= 0")
            if not integer(nu) or not 1 <= nu <= top:
                raise InputError(f"training config: correlation_schedule {epoch}: order {nu!r} must be an integer "
                                 f"in 1..{top} (model.correlation)")
        if 0 in given and 1 in given:
            raise InputError("training config: correlation_schedule epochs 0 and 1 both name the first epoch")
        schedule = dict(sorted(given.items()))
        orders = list(schedule.values())
        if any(b <= a for a, b in zip(orders, orders[1:], strict=False)):
            raise InputError(f"training config: correlation_schedule {schedule}: the order must increase with the epoch")
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


def resolve_path(name: Optional[str]) -> Optional[Path]:
    """A user path, or ``embedded:3bpa/...`` for a file shipped with lpmace."""
    if name is None:
        return None
    if name.startswith(EMBEDDED):
        from lpmace import datasets

        return datasets.path(name[len(EMBEDDED):])
    return Path(name)


def _set_dotted(data: dict, key: str, value: Any):
    parts = key.split(".")
    target = data
    for part in parts[:-1]:
        target = target.setdefault(part, {})
        if not isinstance(target, dict):
            raise InputError(f"override {key}: {part} is not a section")
    target[parts[-1]] = value


def load_train_config(path: Optional[str], overrides: Tuple[str, ...] = ()) -> TrainConfig:
    """TrainConfig from a YAML file (or defaults when path is None) plus `key=value` overrides
    (dotted keys reach into `model`, values parsed as YAML: ``model.channels=64 epochs=5``)."""
    data: dict = {}
    if path is not None:
        try:
            text = Path(path).read_text()
        except OSError as err:
            raise InputError(f"{path}: cannot read training config ({err.strerror})") from err
        try:
            data = yaml.safe_load(text) or {}
        except yaml.YAMLError as err:
            raise InputError(f"{path}: not valid YAML ({err})") from err
        if not isinstance(data, dict):
            raise InputError(f"{path}: expected a mapping of settings")
    for item in overrides:
        if "=" not in item:
            raise InputError(f"override {item!r} is not key=value")
        key, raw = item.split("=", 1)
        try:
            value = yaml.safe_load(raw)
        except yaml.YAMLError:
            value = raw
        _set_dotted(data, key.strip(), value)
    if data.get("foundation_model") is not None and "model" not in data:
        data["model"] = {}  # the default model section would contradict the foundation model's
    names = {f.name for f in dataclasses.fields(TrainConfig)}
    unknown = sorted(set(data) - names)
    if unknown:
        where = f"{path}: " if path else ""
        raise InputError(f"{where}unknown training config key(s): {', '.join(unknown)}")
    try:
        return TrainConfig(**data)
    except TypeError as err:
        raise InputError(f"{path or 'training config'}: {err}") from err


def model_config(cfg: TrainConfig, atomic_numbers, e0s, avg_num_neighbors, scale, shift) -> MACEConfig:
    """The MACEConfig of a run: the config's model section plus statistics from the data."""
    values = dict(cfg.model)
    if isinstance(values.get("correlation"), int):
        values["correlation"] = (values["correlation"],) * int(values.get("num_interactions", 2))
    return MACEConfig(
        atomic_numbers=tuple(atomic_numbers), E0s=tuple(e0s[z] for z in atomic_numbers),
        avg_num_neighbors=avg_num_neighbors, scale=scale, shift=shift, **values,
    )
