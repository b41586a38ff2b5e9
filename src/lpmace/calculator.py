"""An ASE calculator for lpmace models: energy, free_energy, forces, and stress for periodic cells.

The calculator never changes torch's global default dtype: the model computes in the dtypes of its
own weights under the precision policy given at construction (default: the model's own, fp64 for
float64 weights), and results come back to ASE as float64 numpy arrays.
"""

from __future__ import annotations

import os
import threading
from typing import Sequence

import ase
import numpy as np
import torch
from ase.calculators.calculator import Calculator as ASECalculator
from ase.calculators.calculator import PropertyNotImplementedError, all_changes
from ase.stress import full_3x3_to_voigt_6_stress

from lpmace.data.batching import atoms_source, graph_from_atoms
from lpmace.data.graph import Graph
from lpmace.elements import check_known_elements
from lpmace.errors import InputError
from lpmace.model import MACE
from lpmace.precision import PrecisionPolicy, resolve_policy

__all__ = ["Calculator"]


class Calculator(ASECalculator):
    """ASE calculator around an lpmace `MACE` model.

    Args:
        model: a `MACE` module, or the path of an lpmace ``.safetensors`` model file.
        device: torch device to evaluate on ("cpu", "cuda", ...; "auto": cuda when present, else cpu).
        precision: a preset name ("bf16-mixed", ...), a YAML policy file or a `PrecisionPolicy`;
            None: the model's default (fp64 for float64 weights, else fp32). Checked here, so a bad
            precision is an InputError at construction, not at the first energy.
        backend: "auto" (triton on CUDA when available, else reference), "reference", "triton" or
            "compiled" (see `lpmace.backends`; for MD, compiled pays its compile time once and then
            reuses the graph at every step); the chosen one is ``calculator.backend``.
        cuda_graphs: replay each shape's call from a CUDA graph (`lpmace.cuda_graphs.ForwardGraphs`:
            structures padded to a few sizes, a shape's first call eager, its second recorded); None:
            on for CUDA devices. It removes the host's launch time, which otherwise bounds the call
            below a few thousand atoms.
        **kwargs: passed to `ase.calculators.calculator.Calculator` (e.g. ``label``).

    Results (ASE units: eV, Å): ``energy`` and ``free_energy`` (the same number; MACE has no
    electronic entropy), ``forces`` [n_atoms, 3], and ``stress`` (Voigt order xx yy zz yz xz xy,
    eV/Å³, ASE sign convention), which exists only for cells periodic in all three directions.
    Forces are always computed; stress is computed on every call for fully periodic cells.

    One calculator may be shared by threads: ASE keeps the last atoms and results on the calculator,
    so two unguarded calls would read each other's results; a lock makes each property request
    (state check, calculation and the read of its result) one step. Calls are serialised, so
    threads gain nothing in speed; give each thread its own calculator for that.

    Structures with atoms closer than `lpmace.data.batching.MIN_DISTANCE` raise InputError.
    """

    implemented_properties = ["energy", "free_energy", "forces", "stress"]

    def __init__(
        self,
        model: MACE | str | os.PathLike,
        device: str | torch.device = "cpu",
        precision: str | os.PathLike | PrecisionPolicy | None = None,
        backend: str = "auto",
        cuda_graphs: bool | None = None,
        **kwargs,
    ) -> None:
        super().__init__(**kwargs)
        from lpmace.devices import resolve_device

        device = resolve_device(device, "device")  # InputError for "gpu" or cuda on a CPU-only machine
        self._lock = threading.RLock()  # reentrant: get_property holds it while calling calculate
        if isinstance(model, (str, os.PathLike)):
            from lpmace.io import load

            model = load(model, device=device)
        if not isinstance(model, MACE):
            raise InputError(f"Calculator needs an lpmace MACE model or a model file path, got {type(model).__name__}")
        self.device = device
        self.model = model.to(self.device).eval()
        self.r_max = float(model.config.r_max)
        self.atomic_numbers = tuple(int(z) for z in model.config.atomic_numbers)
        self.precision = resolve_policy(precision, default=model.default_precision)
        from lpmace.backends import resolve, use

        self.backend = resolve(backend, self.device)  # checked here; "auto" resolved and kept
        self._run = use(self.model, self.backend, self.device)  # the model, or its compiled wrapper
        if cuda_graphs is None:
            cuda_graphs = self.device.type == "cuda"
        elif cuda_graphs and self.device.type != "cuda":
            raise InputError(f"cuda_graphs=True needs a CUDA device, got {self.device}")
        if cuda_graphs:
            from lpmace.cuda_graphs import ForwardGraphs

            self._run = ForwardGraphs(self.model, self._run, self.device)

    def get_property(self, name: str, atoms: ase.Atoms | None = None, allow_calculation: bool = True):
        with self._lock:
            return super().get_property(name, atoms, allow_calculation)

    def calculate(
        self,
        atoms: ase.Atoms | None = None,
        properties: Sequence[str] = ("energy",),
        system_changes: Sequence[str] = all_changes,
    ) -> None:
        with self._lock:
            self._calculate(atoms, properties, system_changes)

    def _calculate(self, atoms: ase.Atoms | None, properties: Sequence[str], system_changes: Sequence[str]) -> None:
        super().calculate(atoms, properties, system_changes)
        atoms = self.atoms
        periodic = bool(np.all(atoms.pbc))
        if "stress" in properties and not periodic:
            raise PropertyNotImplementedError(
                f"stress needs a cell periodic in all three directions; these atoms have pbc={atoms.pbc.tolist()}"
            )
        graph = self._graph(atoms)
        out = self._evaluate(graph.to(self.device), compute_stress=periodic)

        energy = float(out["energy"].detach().to("cpu", torch.float64)[0])
        self.results["energy"] = energy
        self.results["free_energy"] = energy
        self.results["forces"] = out["forces"].detach().to("cpu", torch.float64).numpy()
        if periodic:
            stress = out["stress"].detach().to("cpu", torch.float64).numpy()[0]
            self.results["stress"] = full_3x3_to_voigt_6_stress(stress)

    def _graph(self, atoms: ase.Atoms) -> Graph:
        """The float64 graph of `atoms` within the model's cutoff; InputError for elements it lacks."""
        check_known_elements(atoms.numbers, self.atomic_numbers, atoms_source(atoms))
        return graph_from_atoms(atoms, self.r_max)

    def _evaluate(self, graph: Graph, *, compute_stress: bool) -> dict[str, torch.Tensor]:
        """One model call: energy [1] float64, forces [n_atoms, 3], stress [1, 3, 3] or None."""
        with torch.enable_grad():  # forces are autograd derivatives, even if the caller is in no_grad
            return self._run(
                graph, precision=self.precision, compute_forces=True, compute_stress=compute_stress, training=False
            )

