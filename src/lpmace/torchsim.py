"""lpmace models in TorchSim (``torch-sim-atomistic``, an optional extra; Python >= 3.12).

`LpmaceModel` implements ``torch_sim.models.interface.ModelInterface`` for any lpmace model (a
`lpmace.model.MACE` or the path of an lpmace ``.safetensors`` file) under any precision policy, so
TorchSim's batched integrators, optimisers and autobatchers run it:

    import torch_sim as ts
    from lpmace.torchsim import LpmaceModel

    model = LpmaceModel("model.safetensors", device="cuda", precision="bf16-mixed")
    final = ts.integrate(atoms_list, model, integrator=ts.Integrator.nve, n_steps=1000,
                         temperature=300.0, timestep=0.0005)   # K, ps

Importing lpmace or this module never imports torch_sim: the class is made on first use of the name
`LpmaceModel`, and without torch_sim that use is one InputError line naming the package. The work
itself (state -> graph -> energy, forces, stress) is `SimStatePotential`, which needs no torch_sim:
it reads SimState's fields from any object that has them.

Conventions, from torch_sim 0.6.2's source (state.py, models/interface.py, quantities.py):
  - ``state.cell`` [S, 3, 3] holds the lattice vectors as COLUMNS (``state.row_vector_cell`` = its
    transpose = ASE's rows); lpmace's graphs take rows, so the cell is transposed here.
  - ``state.pbc`` is one [3] bool for all systems; ``state.atomic_numbers`` may be int32.
  - stress is (1/V) dE/d(strain), eV/Å^3, [S, 3, 3]: ASE's sign (negative under compression;
    TorchSim's pressure is (2 K / V - trace(stress)) / 3) and what mace-torch's TorchSim model
    returns, which is mace's own stress unchanged. lpmace's model computes the same quantity
    (`lpmace.Calculator`'s stress in 3x3 form). A system of zero cell volume (a molecule) gets zero
    stress, as from mace-torch, not NaN.
  - positions may be wrapped or not: the neighbour list (`lpmace.dynamics.neighbours.VerletList`)
    takes the positions as given; an atom wrapped back into the cell moves a lattice vector, which
    rebuilds the list (never a stale shift).
"""

from __future__ import annotations

import functools
import os
from types import SimpleNamespace

import torch

from lpmace.errors import InputError

__all__ = ["LpmaceModel", "SimStatePotential"]

TORCH_SIM_MISSING = ("lpmace.torchsim.LpmaceModel needs the torch-sim-atomistic package (Python >= 3.12): "
                     "pip install torch-sim-atomistic")


def _watched(t: torch.Tensor) -> tuple:
    """What tells that `t` is another tensor or was changed in place."""
    return id(t), t._version, t.data_ptr(), tuple(t.shape), t.dtype, t.device


class SimStatePotential(torch.nn.Module):
    """Energies, forces and stresses of a TorchSim state from an lpmace model (no torch_sim needed).

    Args:
        model: a `lpmace.model.MACE`, or the path of an lpmace ``.safetensors`` model file
            (`lpmace.io.load`).
        device: torch device ("cpu", "cuda", ...; "auto": cuda when present).
        dtype: float64 or float32: the dtype of the states TorchSim makes for this model (positions,
            momenta, cell) and of the outputs. The model computes under `precision` whatever it is;
            its geometry is never below float32.
        precision: preset name, YAML path or `lpmace.precision.PrecisionPolicy`; None: the model's
            default (fp64 for float64 weights, else fp32).
        backend: `lpmace.backends` name ("auto": triton on CUDA when available, else reference).
        compute_forces, compute_stress: what `forward` returns besides the energy (both settable).
        skin: Verlet skin, Å: the pair list is rebuilt only when an atom moved more than skin/2 or
            the cell, pbc or systems changed (0: built at every call).
        exact_cutoff_pairs: hand the model only pairs within r_max (True), or all pairs within
            r_max + skin (same energies and forces: `lpmace.dynamics.neighbours`).
        cuda_graphs: replay model calls from CUDA graphs (None: on CUDA devices).

    ``forward(state)`` takes an object with SimState's fields: positions [N, 3] Å, cell [S, 3, 3]
    (columns), pbc [3] (or [S, 3]) bool, atomic_numbers [N] int, system_idx [N] int64 (sorted,
    systems 0..S-1). It returns detached tensors in `dtype`: "energy" [S] eV, "forces" [N, 3] eV/Å
    if compute_forces, "stress" [S, 3, 3] eV/Å^3 if compute_stress (module docstring: sign).
    """

    def __init__(self, model, *, device="cpu", dtype: torch.dtype = torch.float64, precision=None,
                 backend: str = "auto", compute_forces: bool = True, compute_stress: bool = True,
                 skin: float = 0.5, exact_cutoff_pairs: bool = True, cuda_graphs: bool | None = None) -> None:
        super().__init__()
        from lpmace.devices import resolve_device
        from lpmace.dynamics.potential import ModelPotential
        from lpmace.model import MACE

        device = resolve_device(device, "device")
        if isinstance(model, (str, os.PathLike)):
            from lpmace.io import load

            model = load(model, device=device)
        if not isinstance(model, MACE):
            raise InputError(f"LpmaceModel needs an lpmace MACE model or a model file path, got {type(model).__name__}")
        if dtype not in (torch.float32, torch.float64):
            raise InputError(f"dtype must be torch.float32 or torch.float64 (positions, cell), got {dtype}")
        if not skin >= 0:
            raise InputError(f"skin must be >= 0 Å, got {skin}")
        self.potential = ModelPotential(model, device=device, precision=precision, backend=backend, skin=skin,
                                        exact_cutoff_pairs=exact_cutoff_pairs, cuda_graphs=cuda_graphs)
        self.model = self.potential.model
        self._device, self._dtype = device, dtype
        self._compute_forces, self._compute_stress = bool(compute_forces), bool(compute_stress)
        self._memory_scales_with = "n_atoms_x_density"  # a radial cutoff: edges grow with density
        self._layout: tuple | None = None  # (key of its sources, the sources, the tensors made from them)

    @property
    def device(self) -> torch.device:
        return self._device

    @property
    def dtype(self) -> torch.dtype:
        return self._dtype

    @property
    def compute_forces(self) -> bool:
        return self._compute_forces

    @compute_forces.setter
    def compute_forces(self, value: bool) -> None:
        self._compute_forces = bool(value)

    @property
    def compute_stress(self) -> bool:
        return self._compute_stress

    @compute_stress.setter
    def compute_stress(self, value: bool) -> None:
        self._compute_stress = bool(value)

    @property
    def memory_scales_with(self) -> str:
        return self._memory_scales_with

    @property
    def precision(self):
        """The resolved `lpmace.precision.PrecisionPolicy` the model runs under."""
        return self.potential.policy

    def _tensors_other_than_positions(self, state) -> SimpleNamespace:
        """numbers [N] int64, cell [S, 3, 3] rows, pbc [S, 3], batch [N], ptr [S + 1] of `state`, made
        again only when its cell, pbc, atomic_numbers or system_idx is another tensor or changed in
        place: the same tensors at every MD step let the neighbour list and the CUDA graphs skip work.
        No host synchronisation (S is the cell's first dimension)."""
        pbc = state.pbc  # a tensor, or Python bools: keyed by value (as_tensor makes a new tensor each call)
        sources = (state.atomic_numbers, state.cell, torch.as_tensor(pbc), state.system_idx)
        key = (_watched(sources[0]), _watched(sources[1]), _watched(pbc) if torch.is_tensor(pbc) else repr(pbc),
               _watched(sources[3]))
        if self._layout is not None and self._layout[0] == key:
            return self._layout[2]
        numbers, cell, pbc, system_idx = sources
        n_systems = cell.shape[0]
        if cell.shape != (n_systems, 3, 3) or system_idx.shape != numbers.shape:
            raise InputError(f"state shapes disagree: cell {tuple(cell.shape)} (expected [S, 3, 3]), atomic_numbers "
                             f"{tuple(numbers.shape)}, system_idx {tuple(system_idx.shape)}")
        for name, t in (("positions", state.positions), ("cell", cell), ("system_idx", system_idx)):
            if t.device.type != self.device.type or self.device.index not in (None, t.device.index):
                raise InputError(f"state.{name} is on {t.device}, the model on {self.device}")
        batch = system_idx.to(torch.long)
        counts = torch.zeros(n_systems, dtype=torch.long, device=self.device).index_add_(0, batch, torch.ones_like(batch))
        layout = SimpleNamespace(
            numbers=numbers.to(torch.long),
            cell=cell.mT.contiguous(),  # TorchSim's columns -> lpmace's rows
            pbc=pbc.to(device=self.device, dtype=torch.bool).expand(n_systems, 3).contiguous(),
            batch=batch,
            ptr=torch.cat([counts.new_zeros(1), counts.cumsum(0)]),
        )
        self._layout = (key, sources, layout)  # sources held, so their ids are not reused
        return layout

    def graph(self, state):
        """The `lpmace.data.graph.Graph` of `state` within the model's cutoff (positions shared)."""
        layout = self._tensors_other_than_positions(state)
        return self.potential.graph(SimpleNamespace(positions=state.positions, **vars(layout)))

    def forward(self, state, **kwargs) -> dict[str, torch.Tensor]:
        """{"energy": [S], "forces": [N, 3] (if compute_forces), "stress": [S, 3, 3] (if compute_stress)}:
        eV, eV/Å, eV/Å^3 (ASE sign), detached, in `dtype`. kwargs (TorchSim passes none) are ignored."""
        graph = self.graph(state)
        potential = self.potential
        with torch.enable_grad():  # forces are derivatives, even if the caller is in no_grad
            out = potential.run(graph, precision=potential.policy, compute_forces=self._compute_forces,
                                compute_stress=self._compute_stress, training=False)
        results = {"energy": out["energy"].detach().to(self._dtype)}
        if self._compute_forces:
            results["forces"] = out["forces"].detach().to(self._dtype)
        if self._compute_stress:
            stress = out["stress"].detach().to(self._dtype)
            a, b, c = graph.cell.unbind(1)  # the volume as a triple product: no solver, no host sync
            volume = (a * torch.linalg.cross(b, c, dim=-1)).sum(-1).abs()
            results["stress"] = torch.where(volume[:, None, None] > 0, stress, torch.zeros_like(stress))
        return results


@functools.cache
def _model_class() -> type:
    """`SimStatePotential` as a ``torch_sim.models.interface.ModelInterface`` (imports torch_sim)."""
    try:
        from torch_sim.models.interface import ModelInterface
    except ImportError:
        raise InputError(TORCH_SIM_MISSING) from None

    class LpmaceModel(SimStatePotential, ModelInterface):
        __doc__ = ("TorchSim's ModelInterface for an lpmace model; arguments, outputs and conventions as "
                   "`lpmace.torchsim.SimStatePotential` (module docstring: cell columns, stress sign).")

    LpmaceModel.__module__ = __name__
    return LpmaceModel


def __getattr__(name: str):
    if name == "LpmaceModel":
        return _model_class()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
