"""The TorchSim adapter (`lpmace.torchsim`).

CPU (here and in CI, without torch_sim): the adapter's core on a stand-in for torch_sim's SimState with
its fields and conventions (cell as columns, one pbc for all systems, int32 atomic numbers), against
`lpmace.Calculator` on the same structures; the lazy import; the class made on a stand-in
ModelInterface. GPU machine (`pytest -m gpu`, Python >= 3.12 with torch-sim-atomistic 0.6.2): the
adapter inside real TorchSim: its interface validator, NVE steps against ASE's velocity Verlet with
the calculator, and `torch_sim.integrate` on four systems.
"""

from __future__ import annotations

import abc
import dataclasses
import subprocess
import sys
import types

import ase
import numpy as np
import pytest
import torch
from ase.calculators.calculator import PropertyNotImplementedError

import lpmace.torchsim
from lpmace.calculator import Calculator
from lpmace.errors import InputError
from lpmace.torchsim import SimStatePotential

NEEDS_TORCH_SIM = "torch-sim-atomistic needs Python >= 3.12 (not installable on this Python or in CI)"


@dataclasses.dataclass
class FakeSimState:
    """torch_sim 0.6.2's SimState fields as it fills them (state.py, io.atoms_to_state)."""

    positions: torch.Tensor  # [N, 3]
    masses: torch.Tensor  # [N]
    cell: torch.Tensor  # [S, 3, 3], lattice vectors as COLUMNS
    pbc: torch.Tensor  # [3] bool, one for all systems
    atomic_numbers: torch.Tensor  # [N] int32
    system_idx: torch.Tensor  # [N] int64

    @property
    def n_systems(self) -> int:
        return self.cell.shape[0]


def fake_state(atoms_list: list[ase.Atoms], dtype=torch.float64) -> FakeSimState:
    return FakeSimState(
        positions=torch.tensor(np.concatenate([a.positions for a in atoms_list]), dtype=dtype),
        masses=torch.tensor(np.concatenate([a.get_masses() for a in atoms_list]), dtype=dtype),
        cell=torch.tensor(np.stack([a.cell.array.T for a in atoms_list]), dtype=dtype),
        pbc=torch.tensor(atoms_list[0].pbc, dtype=torch.bool),
        atomic_numbers=torch.tensor(np.concatenate([a.numbers for a in atoms_list]), dtype=torch.int32),
        system_idx=torch.repeat_interleave(torch.arange(len(atoms_list)), torch.tensor([len(a) for a in atoms_list])),
    )


def triclinic(atoms: ase.Atoms, cell, shift=(0.0, 0.0, 0.0)) -> ase.Atoms:
    crystal = atoms.copy()
    crystal.set_cell(cell)
    crystal.set_pbc(True)
    crystal.positions += shift  # some atoms outside the cell
    return crystal


def small_cell(seed: int) -> ase.Atoms:
    """6 C/H/N/O atoms in a thin triclinic cell (2.9 Å across < r_max 4 Å: own images, several images)."""
    rng = np.random.default_rng(seed)
    cell = np.array([[4.2, 0.0, 0.0], [1.3, 3.9, 0.0], [-0.8, 0.9, 2.9]])
    while True:
        atoms = ase.Atoms(rng.choice([1, 6, 7, 8], 6), scaled_positions=rng.random((6, 3)), cell=cell, pbc=True)
        if min(atoms.get_distances(i, range(i), mic=True).min() for i in range(1, 6)) > 0.9:
            return atoms


def reference(model, atoms: ase.Atoms) -> tuple[float, np.ndarray, np.ndarray | None]:
    """Energy, forces and 3x3 stress (None without full pbc) from `lpmace.Calculator`."""
    atoms = atoms.copy()
    atoms.calc = Calculator(model)
    try:
        stress = atoms.get_stress(voigt=False)
    except PropertyNotImplementedError:
        stress = None
    return atoms.get_potential_energy(), atoms.get_forces(), stress


def assert_matches_calculator(model, out: dict, atoms_list: list[ase.Atoms], atol: float = 1e-10) -> None:
    ptr = np.cumsum([0] + [len(a) for a in atoms_list])
    for s, atoms in enumerate(atoms_list):
        energy, forces, stress = reference(model, atoms)
        assert abs(out["energy"][s].item() - energy) < atol
        np.testing.assert_allclose(out["forces"][ptr[s]:ptr[s + 1]].numpy(), forces, rtol=0, atol=atol)
        if stress is None:
            np.testing.assert_array_equal(out["stress"][s].numpy(), np.zeros((3, 3)))  # zero volume: zero, not NaN
        else:
            assert np.abs(stress).max() > 1e-5  # a non-trivial stress, whose sign is checked here
            np.testing.assert_allclose(out["stress"][s].numpy(), stress, rtol=0, atol=atol)


def test_two_triclinic_cells_batched_match_the_calculator(model, bpa_atoms):
    cell = [[10.0, 0.0, 0.0], [2.5, 9.5, 0.0], [-1.5, 2.0, 9.0]]
    systems = [triclinic(bpa_atoms, cell, shift=(3.0, -2.0, 1.0)), small_cell(0)]
    potential = SimStatePotential(model, skin=0.5)
    state = fake_state(systems)
    out = potential(state)
    assert out["energy"].shape == (2,) and out["forces"].shape == (33, 3) and out["stress"].shape == (2, 3, 3)
    assert all(t.dtype == torch.float64 and not t.requires_grad for t in out.values())
    assert_matches_calculator(model, out, systems)

    # Atoms moved within the skin (the pair list reused), one wrapped back by a lattice vector, then all
    # moved beyond the skin (rebuilt): the calculator's results each time.
    rng = np.random.default_rng(1)
    for step, (scale, wrap, builds) in enumerate([(0.05, False, 1), (0.05, False, 1), (0.0, True, 2), (0.6, False, 3)]):
        for atoms in systems:
            atoms.positions += rng.normal(scale=scale, size=atoms.positions.shape)
        if wrap:
            systems[1].positions[0] += systems[1].cell.array[2]
        state.positions = torch.tensor(np.concatenate([a.positions for a in systems]))
        assert_matches_calculator(model, potential(state), systems)
        assert potential.potential.neighbours.builds == builds, step


def test_a_python_bool_pbc_keeps_the_layout_and_the_pair_list_between_calls(model, bpa_atoms):
    """pbc given as Python bools (not a tensor) is keyed by value: the cell/pbc/batch tensors and the
    pair list are kept from call to call, as for a pbc tensor, and a changed value makes them again."""
    cell = [[10.0, 0.0, 0.0], [2.5, 9.5, 0.0], [-1.5, 2.0, 9.0]]
    systems = [triclinic(bpa_atoms, cell), small_cell(0)]
    potential = SimStatePotential(model, skin=0.5)
    state = fake_state(systems)
    state.pbc = True
    first = potential(state)
    layout = potential._layout[2]
    second = potential(state)
    assert potential._layout[2] is layout and potential.potential.neighbours.builds == 1
    assert torch.equal(first["energy"], second["energy"])
    state.pbc = [True, True, False]
    potential(state)
    assert potential._layout[2] is not layout and potential.potential.neighbours.builds == 2


def test_two_molecules_batched_match_the_calculator(model, bpa_atoms):
    other = bpa_atoms.copy()
    other.rotate(40, "y")
    other.positions += 50.0  # far from the cell-less origin: nothing is periodic
    systems = [bpa_atoms, other[:15]]
    for atoms in systems:
        atoms.set_cell(np.zeros((3, 3)))  # as ase.build.molecule gives (the 3BPA file has a cell)
    out = SimStatePotential(model)(fake_state(systems))
    assert out["stress"].shape == (2, 3, 3)
    assert_matches_calculator(model, out, systems)


def test_float32_states_and_outputs_switched_off(model, bpa_atoms):
    systems = [small_cell(2), small_cell(3)]
    potential = SimStatePotential(model, dtype=torch.float32, compute_stress=False)
    out = potential(fake_state(systems, dtype=torch.float32))
    assert set(out) == {"energy", "forces"} and out["forces"].dtype == torch.float32
    energy, forces, _ = reference(model, systems[0])
    assert abs(out["energy"][0].item() - energy) < 1e-3  # float32 geometry, model in fp64
    np.testing.assert_allclose(out["forces"][:6].numpy(), forces, rtol=0, atol=1e-4)
    potential.compute_forces = False
    assert set(potential(fake_state(systems, dtype=torch.float32))) == {"energy"}
    assert potential.memory_scales_with == "n_atoms_x_density" and potential.device == torch.device("cpu")


def test_model_file_and_precision(model, tmp_path, bpa_atoms):
    import lpmace.io

    path = tmp_path / "model.safetensors"
    lpmace.io.save(model, path)
    potential = SimStatePotential(path, precision="fp32")
    assert potential.precision.geometry == torch.float32 and potential.dtype == torch.float64
    out = potential(fake_state([bpa_atoms]))
    energy, forces, _ = reference(model, bpa_atoms)
    assert abs(out["energy"].item() - energy) < 1e-3 and out["energy"].dtype == torch.float64
    np.testing.assert_allclose(out["forces"].numpy(), forces, rtol=0, atol=1e-3)


@pytest.mark.parametrize("kwargs, message", [
    ({"dtype": torch.float16}, "dtype must be torch.float32 or torch.float64"),
    ({"skin": -1.0}, "skin must be >= 0"),
    ({"precision": "fp7"}, "fp7"),
])
def test_bad_arguments_are_one_line_errors(model, kwargs, message):
    with pytest.raises(InputError, match=message):
        SimStatePotential(model, **kwargs)


def test_unknown_element_is_an_input_error(model):
    silicon = ase.Atoms("Si2", positions=[[0, 0, 0], [2.0, 0, 0]])
    with pytest.raises(InputError, match="Si"):
        SimStatePotential(model)(fake_state([silicon]))


def test_importing_lpmace_never_imports_torch_sim(tmp_path):
    # A torch_sim that fails on import: importing lpmace and lpmace.torchsim must not touch it.
    (tmp_path / "torch_sim").mkdir()
    (tmp_path / "torch_sim" / "__init__.py").write_text("raise RuntimeError('torch_sim imported')\n")
    code = "import sys, lpmace, lpmace.torchsim; assert 'torch_sim' not in sys.modules"
    env_path = f"{tmp_path}:{':'.join(p for p in sys.path if p)}"
    result = subprocess.run([sys.executable, "-c", code], env={"PYTHONPATH": env_path}, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def test_without_torch_sim_the_model_class_is_a_one_line_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "torch_sim", None)  # as if not installed
    monkeypatch.setitem(sys.modules, "torch_sim.models", None)
    monkeypatch.setitem(sys.modules, "torch_sim.models.interface", None)
    lpmace.torchsim._model_class.cache_clear()
    try:
        with pytest.raises(InputError, match="needs the torch-sim-atomistic package") as err:
            from lpmace.torchsim import LpmaceModel  # noqa: F401
        assert "\n" not in str(err.value)
    finally:
        lpmace.torchsim._model_class.cache_clear()


class StandInModelInterface(torch.nn.Module, abc.ABC):
    """torch_sim 0.6.2's ModelInterface in outline: read-only properties, abstract forward."""

    @property
    def compute_stress(self) -> bool:
        return self._compute_stress

    @compute_stress.setter
    def compute_stress(self, value: bool) -> None:
        raise NotImplementedError

    @abc.abstractmethod
    def forward(self, state, **kwargs):
        """Energy, forces, stress."""


def test_model_class_on_a_stand_in_interface(monkeypatch, model, bpa_atoms):
    interface = types.ModuleType("torch_sim.models.interface")
    interface.ModelInterface = StandInModelInterface
    monkeypatch.setitem(sys.modules, "torch_sim", types.ModuleType("torch_sim"))
    monkeypatch.setitem(sys.modules, "torch_sim.models", types.ModuleType("torch_sim.models"))
    monkeypatch.setitem(sys.modules, "torch_sim.models.interface", interface)
    lpmace.torchsim._model_class.cache_clear()
    try:
        adapter = lpmace.torchsim.LpmaceModel(model, compute_stress=False)
        assert isinstance(adapter, StandInModelInterface) and isinstance(adapter, SimStatePotential)
        adapter.compute_stress = True  # settable, as torch_sim's validator and SumModel expect
        out = adapter(fake_state([bpa_atoms]))
        assert set(out) == {"energy", "forces", "stress"}
        assert type(adapter).__module__ == "lpmace.torchsim" and type(adapter).__name__ == "LpmaceModel"
    finally:
        lpmace.torchsim._model_class.cache_clear()


# ---- inside real TorchSim (GPU machine: Python 3.12, torch-sim-atomistic 0.6.2) -----------------------

# Elements of torch_sim's validator (Si, Mg, Fe, benzene) and of the MD systems below.
ELEMENTS = {1: -13.6, 6: -1029.5, 12: -1.5, 14: -4.8, 26: -3.5}


@pytest.fixture
def gpu_model(make_config):
    from lpmace.model import MACE

    torch.manual_seed(3)
    return MACE(make_config(atomic_numbers=tuple(ELEMENTS), E0s=tuple(ELEMENTS.values()))).to(torch.float64)


def md_systems() -> list[ase.Atoms]:
    from ase.build import bulk

    rng = np.random.default_rng(7)
    systems = [bulk("Si", "diamond", a=5.43, cubic=True), bulk("Mg", "hcp", a=3.21, c=5.21).repeat([2, 2, 1]),
               bulk("Fe", "bcc", a=2.87).repeat(3), bulk("SiC", "zincblende", a=4.36).repeat([2, 1, 1])]
    for atoms in systems:
        atoms.rattle(0.05, rng=rng)
    return systems


@pytest.mark.gpu
def test_torch_sim_validates_the_model(gpu_model):
    pytest.importorskip("torch_sim", reason=NEEDS_TORCH_SIM)
    from torch_sim.models.interface import ModelInterface, validate_model_outputs

    from lpmace.torchsim import LpmaceModel

    adapter = LpmaceModel(gpu_model, device="cuda", compute_stress=False)
    assert isinstance(adapter, ModelInterface)
    validate_model_outputs(adapter, torch.device("cuda"), torch.float64)
    assert adapter.compute_stress  # the validator switched it on


@pytest.mark.gpu
def test_nve_steps_follow_ase_velocity_verlet_with_the_calculator(gpu_model):
    ts = pytest.importorskip("torch_sim", reason=NEEDS_TORCH_SIM)
    from ase import units
    from ase.md.verlet import VelocityVerlet

    from lpmace.torchsim import LpmaceModel

    device = torch.device("cuda")
    systems = md_systems()
    adapter = LpmaceModel(gpu_model, device=device, compute_stress=True)
    state = ts.initialize_state(systems, device, torch.float64)
    out = adapter(state)
    assert out["energy"].shape == (4,) and out["stress"].shape == (4, 3, 3)
    ptr = np.cumsum([0] + [len(a) for a in systems])
    for s, atoms in enumerate(systems):  # the same model on the GPU through the calculator
        atoms.calc = Calculator(gpu_model, device=device)
        assert abs(out["energy"][s].item() - atoms.get_potential_energy()) < 1e-8
        np.testing.assert_allclose(out["forces"][ptr[s]:ptr[s + 1]].cpu().numpy(), atoms.get_forces(), atol=1e-8)
        np.testing.assert_allclose(out["stress"][s].cpu().numpy(), atoms.get_stress(voigt=False), atol=1e-9)

    state.rng = 0
    md = ts.nve_init(state, adapter, kT=300.0 * ts.units.MetalUnits.temperature)
    dt_fs, steps = 0.5, 10
    for s, atoms in enumerate(systems):  # ASE's time unit is TorchSim's internal one (Å sqrt(amu/eV))
        atoms.set_momenta(md.momenta[ptr[s]:ptr[s + 1]].cpu().numpy())
        VelocityVerlet(atoms, timestep=dt_fs * units.fs).run(steps)
    for _ in range(steps):
        md = ts.nve_step(md, adapter, dt=torch.tensor(dt_fs * 1e-3 * ts.units.MetalUnits.time, device=device))
    positions = md.positions.cpu().numpy()
    for s, atoms in enumerate(systems):
        moved = np.abs(atoms.positions - md_systems()[s].positions).max()
        assert moved > 1e-3  # the atoms moved
        np.testing.assert_allclose(positions[ptr[s]:ptr[s + 1]], atoms.positions, rtol=0, atol=1e-7)
        assert abs(md.energy[s].item() - atoms.get_potential_energy()) < 1e-7


@pytest.mark.gpu
def test_integrate_four_systems(gpu_model):
    ts = pytest.importorskip("torch_sim", reason=NEEDS_TORCH_SIM)
    from lpmace.torchsim import LpmaceModel

    adapter = LpmaceModel(gpu_model, device="cuda", compute_stress=False, skin=0.5)
    final = ts.integrate(md_systems(), adapter, integrator=ts.Integrator.nvt_langevin, n_steps=20,
                         temperature=300.0, timestep=0.0005)
    assert final.n_systems == 4 and torch.isfinite(final.positions).all()
    assert adapter.potential.neighbours.builds < 21  # the skin let some steps reuse the pair list
    for atoms, energy in zip(ts.io.state_to_atoms(final), final.energy.tolist()):
        atoms.calc = Calculator(gpu_model, device="cuda")
        assert abs(energy - atoms.get_potential_energy()) < 1e-8
