"""Accuracy of a model on labelled structures, and the error a precision adds to the same weights.

`evaluate` compares predictions with reference labels (energy per atom and total, force components,
stress), each over only the structures that carry that label, and keeps the float64 arrays for
parity plots (`lpmace.plots.parity_plot`). `errors_against` is the one comparison of predictions
with reference predictions of the same structures (no labels): what `lpmace bench`, `lpmace demo`
and the readout-quantization section report as "error against fp64" (or against the unquantized
model); `force_error_against` applies it to two precision policies of the same weights.

Units: the model speaks eV and Å; metrics are reported in meV (meV/atom, meV/Å, meV/Å³), the units
MACE papers quote, with the unit in every key of `Metrics.to_dict()`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Iterator, NamedTuple, Optional, Sequence, Union

import numpy as np
import torch

from lpmace.data import batches
from lpmace.data.graph import Graph
from lpmace.errors import InputError
from lpmace.model import MACE
from lpmace.precision import PrecisionPolicy, resolve_policy

__all__ = ["Metrics", "ForceError", "errors_against", "evaluate", "force_error_against", "merge_metrics",
           "metrics_from_arrays"]

Precision = Union[str, PrecisionPolicy, None]
_MEV = 1000.0


@dataclass
class Metrics:
    """Errors of one model under one precision on one set of structures.

    Scalars are None where no structure has the reference. Arrays (float64, eV and Å) hold only
    the structures that have each reference, in input order:
        energy_pred / energy_ref: [n_energy] total energies, eV; energy_atoms: [n_energy] atom counts;
        forces_pred / forces_ref: [n_force_atoms, 3], eV/Å;
        stress_pred / stress_ref: [n_stress, 3, 3], eV/Å³ (ASE sign convention).
    """

    precision: str
    n_configs: int
    n_atoms: int
    n_energy: int
    n_forces: int
    n_stress: int
    energy_rmse_mev_per_atom: Optional[float]
    energy_mae_mev_per_atom: Optional[float]
    energy_rmse_mev: Optional[float]
    energy_mae_mev: Optional[float]
    force_rmse_mev_per_A: Optional[float]
    force_mae_mev_per_A: Optional[float]
    stress_rmse_mev_per_A3: Optional[float]
    stress_mae_mev_per_A3: Optional[float]
    energy_pred: np.ndarray = field(repr=False)
    energy_ref: np.ndarray = field(repr=False)
    energy_atoms: np.ndarray = field(repr=False)
    forces_pred: np.ndarray = field(repr=False)
    forces_ref: np.ndarray = field(repr=False)
    stress_pred: np.ndarray = field(repr=False)
    stress_ref: np.ndarray = field(repr=False)

    _ARRAYS = ("energy_pred", "energy_ref", "energy_atoms", "forces_pred", "forces_ref", "stress_pred", "stress_ref")

    @property
    def energy_per_atom_pred(self) -> np.ndarray:
        """[n_energy] predicted energy per atom, eV/atom."""
        return self.energy_pred / self.energy_atoms

    @property
    def energy_per_atom_ref(self) -> np.ndarray:
        """[n_energy] reference energy per atom, eV/atom."""
        return self.energy_ref / self.energy_atoms

    def predictions(self) -> dict:
        """The predictions in `errors_against`'s form: energy, atoms, forces, stress (None without)."""
        return {"energy": self.energy_pred, "atoms": self.energy_atoms, "forces": self.forces_pred,
                "stress": self.stress_pred if len(self.stress_pred) else None}

    def to_dict(self) -> dict:
        """The scalars (str, int, float or None; NaN stays NaN so a diverged model shows)."""
        return {k: v for k, v in self.__dict__.items() if k not in self._ARRAYS}


class ForceError(NamedTuple):
    """Forces under one precision against another of the same weights (no labels involved)."""

    relative_force_rmse: float  # RMSE(F - F_ref) / RMS(F_ref), over all components
    max_abs_force_error: float  # max |F - F_ref| over all components, eV/Å


def _predictions(
    model: MACE, graphs: Sequence[Graph], policy: PrecisionPolicy, batch_size: int, device: torch.device,
    progress: bool = False,
) -> Iterator[tuple[Graph, dict[str, Optional[torch.Tensor]]]]:
    """(batch on the host, outputs on the host in float64 and detached) for consecutive batches."""
    bar = None
    if progress:
        from tqdm import tqdm

        # disable=None: even when asked for, no bar unless stderr is a terminal (logs stay clean)
        bar = tqdm(total=len(graphs), desc=f"eval {policy.name}", unit="config", dynamic_ncols=True, leave=False,
                   disable=None)
    try:
        for batch in batches(graphs, batch_size):
            want_stress = batch.has_stress is not None and bool(batch.has_stress.any())
            # Forces are autograd derivatives: grad stays on inside the caller's no_grad, and no graph
            # is kept (training=False), so memory is that of one forward and one backward.
            with torch.enable_grad():
                out = model(batch.to(device), precision=policy, compute_forces=True,
                            compute_stress=want_stress, training=False)
            if bar is not None:
                bar.update(batch.num_graphs)
            yield batch, {k: None if v is None else v.detach().to("cpu", torch.float64) for k, v in out.items()}
    finally:
        if bar is not None:
            bar.close()


def _check(model: MACE, graphs: Sequence[Graph], batch_size: int) -> None:
    from lpmace.compile import Compiled

    if not isinstance(model.model if isinstance(model, Compiled) else model, MACE):
        raise InputError(f"evaluate needs an lpmace MACE model, got {type(model).__name__}")
    if len(graphs) == 0:
        raise InputError("no structures to evaluate")
    if batch_size < 1:
        raise InputError(f"batch_size must be at least 1, got {batch_size}")


def _flags(batch: Graph, name: str) -> torch.Tensor:
    """[n_graphs] bool: which structures of `batch` have reference `name`."""
    flags = getattr(batch, "has_" + name)
    if getattr(batch, name) is None:
        return torch.zeros(batch.num_graphs, dtype=torch.bool)
    return torch.ones(batch.num_graphs, dtype=torch.bool) if flags is None else flags


def _rmse_mae(errors: np.ndarray) -> tuple[Optional[float], Optional[float]]:
    if errors.size == 0:
        return None, None
    return math.sqrt(float(np.mean(errors**2))) * _MEV, float(np.mean(np.abs(errors))) * _MEV


@torch.no_grad()
def evaluate(
    model: MACE,
    graphs: Sequence[Graph],
    *,
    precision: Precision = None,
    batch_size: int = 16,
    device: Union[str, torch.device] = "cpu",
    progress: bool = False,
) -> Metrics:
    """Errors of `model` (a MACE, or what `lpmace.backends.use` returns for one) under `precision`
    (preset, YAML path or policy; None: the model's default)
    against the references of `graphs` (single- or multi-structure graphs with energy / forces /
    stress and has_* flags, as `graph_from_configuration` builds them).

    The model is moved to `device` (in place, as Module.to does); results come back as float64.
    Each metric uses only the structures that carry its reference.
    """
    _check(model, graphs, batch_size)
    policy = resolve_policy(precision, default=model.default_precision)
    device = torch.device(device)
    model.to(device)
    parts: dict[str, list[np.ndarray]] = {name: [] for name in Metrics._ARRAYS}
    n_atoms = n_forces = 0
    for batch, out in _predictions(model, graphs, policy, batch_size, device, progress):
        n_atoms += batch.num_atoms
        atoms_per = (batch.ptr[1:] - batch.ptr[:-1]).numpy()
        has_e, has_f, has_s = (_flags(batch, name).numpy() for name in ("energy", "forces", "stress"))
        if has_e.any():
            parts["energy_pred"].append(out["energy"].numpy()[has_e])
            parts["energy_ref"].append(batch.energy.numpy()[has_e])
            parts["energy_atoms"].append(atoms_per[has_e].astype(np.float64))
        n_forces += int(has_f.sum())
        atom_has_f = has_f[batch.batch.numpy()]
        if atom_has_f.any():
            parts["forces_pred"].append(out["forces"].numpy()[atom_has_f])
            parts["forces_ref"].append(batch.forces.numpy()[atom_has_f])
        if has_s.any():
            parts["stress_pred"].append(out["stress"].numpy()[has_s])
            parts["stress_ref"].append(batch.stress.numpy()[has_s])

    shapes = {"energy": (0,), "forces": (0, 3), "stress": (0, 3, 3)}
    arrays = {
        name: np.concatenate(chunks).astype(np.float64) if chunks else np.zeros(shapes[name.split("_")[0]])
        for name, chunks in parts.items()
    }
    return metrics_from_arrays(policy.name, sum(g.num_graphs for g in graphs), n_atoms, n_forces, arrays)


def metrics_from_arrays(precision: str, n_configs: int, n_atoms: int, n_forces: int, arrays: dict) -> Metrics:
    """`Metrics` from the prediction/reference arrays (`Metrics._ARRAYS`) and the counts."""
    energy_error = arrays["energy_pred"] - arrays["energy_ref"]
    e_rmse_atom, e_mae_atom = _rmse_mae(energy_error / arrays["energy_atoms"])
    e_rmse, e_mae = _rmse_mae(energy_error)
    f_rmse, f_mae = _rmse_mae(arrays["forces_pred"] - arrays["forces_ref"])
    s_rmse, s_mae = _rmse_mae(arrays["stress_pred"] - arrays["stress_ref"])
    return Metrics(
        precision=precision,
        n_configs=n_configs,
        n_atoms=n_atoms,
        n_energy=len(arrays["energy_pred"]),
        n_forces=n_forces,
        n_stress=len(arrays["stress_pred"]),
        energy_rmse_mev_per_atom=e_rmse_atom,
        energy_mae_mev_per_atom=e_mae_atom,
        energy_rmse_mev=e_rmse,
        energy_mae_mev=e_mae,
        force_rmse_mev_per_A=f_rmse,
        force_mae_mev_per_A=f_mae,
        stress_rmse_mev_per_A3=s_rmse,
        stress_mae_mev_per_A3=s_mae,
        **arrays,
    )


def merge_metrics(parts: Sequence[Metrics]) -> Metrics:
    """The metrics of the union of the structures of `parts` (e.g. one per data-parallel rank)."""
    arrays = {name: np.concatenate([getattr(m, name) for m in parts]) for name in Metrics._ARRAYS}
    return metrics_from_arrays(parts[0].precision, sum(m.n_configs for m in parts), sum(m.n_atoms for m in parts),
                               sum(m.n_forces for m in parts), arrays)


def _rms(x: np.ndarray) -> float:
    return math.sqrt(float(np.mean(x**2))) if x.size else math.nan


def errors_against(pred: dict, ref: dict) -> dict:
    """Errors of predictions `pred` against reference predictions `ref` of the same structures.

    Both are dicts of float64 arrays: energy [n] eV, atoms [n] atom counts, forces [n_atoms, 3] eV/Å,
    stress [n, 3, 3] eV/Å³ or None. Returns energy RMSE and maximum per atom (meV/atom), force RMSE
    and largest component (meV/Å), force_rel_rmse = RMSE(F - F_ref) / RMS(F_ref) over all components
    (shared/ANCHORS.md's measure) and stress RMSE (meV/Å³; None unless both have stress).
    """
    e = (pred["energy"] - ref["energy"]) / ref["atoms"]
    f = pred["forces"] - ref["forces"]
    scale, rmse = _rms(ref["forces"]), _rms(f)
    row = {
        "energy_rmse_mev_per_atom": _MEV * _rms(e), "energy_max_mev_per_atom": _MEV * float(np.max(np.abs(e))),
        "force_rmse_mev_per_A": _MEV * rmse, "force_max_mev_per_A": _MEV * float(np.max(np.abs(f))) if f.size else 0.0,
        "force_rel_rmse": rmse / scale if scale > 0 else (0.0 if rmse == 0 else math.inf),
        "stress_rmse_mev_per_A3": None,
    }
    if ref.get("stress") is not None and pred.get("stress") is not None:
        row["stress_rmse_mev_per_A3"] = _MEV * _rms(pred["stress"] - ref["stress"])
    return row


@torch.no_grad()
def force_error_against(
    model: MACE,
    graphs: Sequence[Graph],
    precision: Precision,
    reference_precision: Precision = "fp64",
    *,
    batch_size: int = 16,
    device: Union[str, torch.device] = "cpu",
) -> ForceError:
    """Forces of the same weights under `precision` against `reference_precision`, on `graphs`
    (labels unused): `errors_against`'s force_rel_rmse, and its largest component in eV/Å. The
    model is moved to `device`.
    """
    _check(model, graphs, batch_size)
    default = model.default_precision
    policy, reference = resolve_policy(precision, default), resolve_policy(reference_precision, default)
    device = torch.device(device)
    model.to(device)

    def predicted(chosen: PrecisionPolicy) -> dict:
        parts: dict = {"energy": [], "atoms": [], "forces": []}
        for batch, out in _predictions(model, graphs, chosen, batch_size, device):
            parts["energy"].append(out["energy"].numpy())
            parts["atoms"].append((batch.ptr[1:] - batch.ptr[:-1]).numpy())
            parts["forces"].append(out["forces"].numpy().reshape(-1, 3))
        return {**{k: np.concatenate(v) for k, v in parts.items()}, "stress": None}

    low, ref = predicted(policy), predicted(reference)
    if low["forces"].size == 0:
        return ForceError(0.0, 0.0)
    row = errors_against(low, ref)
    return ForceError(row["force_rel_rmse"], row["force_max_mev_per_A"] / _MEV)
