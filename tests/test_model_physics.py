"""Physics of the MACE model: symmetries, periodic images, gradients, batching, cutoff, isolated atoms.

Every test runs a small random fp64 model (its parameters are random, so agreement is a property of
the architecture, not of a fit). Structures: the first 3BPA molecule (embedded dataset), the first
frame of Zuo et al.'s Si test set (63 atoms, triclinic periodic cell) and synthetic ones built as
`Configuration`s. Tolerances are relative to the size of the quantity compared.
"""

from __future__ import annotations

import ase
import ase.io
import numpy as np
import pytest
import torch

from lpmace.data import Configuration, collate, graph_from_configuration
from lpmace.errors import InputError
from lpmace.model import MACE, MACEConfig
from shared_data import shared_data_dir

ELEMENTS = (1, 6, 7, 8, 14)
E0S = (-13.6, -1029.5, -1485.0, -2042.0, -158.0)
R_MAX = 4.0


def make_config(**overrides) -> MACEConfig:
    """Small but complete: correlation 3, max_ell 3, max_L 2 (l = 0, 1, 2 hidden features)."""
    values = dict(
        atomic_numbers=ELEMENTS, E0s=(0.0,) * len(ELEMENTS), r_max=R_MAX, num_bessel=6, max_ell=3,
        channels=8, max_L=2, correlation=(3, 3), readout_mlp=4, radial_mlp=(8, 8),
        avg_num_neighbors=10.0, scale=0.7, shift=0.0,
    )
    values.update(overrides)
    return MACEConfig(**values)


def make_model(seed: int = 0, **overrides) -> MACE:
    torch.manual_seed(seed)
    return MACE(make_config(**overrides)).double()


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    """These graphs are tiny; intra-op threads only add contention (30x slower on a loaded 2-core box)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def model() -> MACE:
    return make_model()


@pytest.fixture(scope="module")
def molecule() -> ase.Atoms:
    """First 3BPA test molecule, 27 atoms, not periodic (the embedded copy)."""
    from lpmace import datasets

    atoms = ase.io.read(datasets.path("3bpa/test_300K.xyz"), index=0)
    assert len(atoms) == 27 and not atoms.pbc.any()
    return atoms


@pytest.fixture(scope="module")
def silicon() -> ase.Atoms:
    """First frame of the Si test set: 63 atoms in a triclinic periodic cell (shared data: absent fails)."""
    atoms = ase.io.read(shared_data_dir() / "si_zuo2020" / "Si_test.xyz", index=0)
    assert atoms.pbc.all() and abs(atoms.cell.angles() - 90.0).max() > 1.0  # really triclinic
    return atoms


def configuration(atoms: ase.Atoms) -> Configuration:
    return Configuration(numbers=atoms.numbers, positions=atoms.positions, cell=atoms.cell.array, pbc=atoms.pbc)


def graph_of(atoms: ase.Atoms, r_max: float = R_MAX):
    return graph_from_configuration(configuration(atoms), r_max)


def evaluate(model: MACE, atoms: ase.Atoms, stress: bool = False, precision: str | None = None) -> dict:
    """energy (float), forces [n, 3] and (if asked) stress [3, 3] as float64 numpy."""
    out = model(graph_of(atoms), compute_stress=stress, precision=precision)
    result = {"energy": float(out["energy"][0].detach()), "forces": out["forces"].detach().numpy()}
    if stress:
        result["stress"] = out["stress"][0].detach().numpy()
    return result


def random_rotation(seed: int, proper: bool = True) -> np.ndarray:
    q, r = np.linalg.qr(np.random.default_rng(seed).normal(size=(3, 3)))
    q = q * np.sign(np.diag(r))
    if np.linalg.det(q) < 0:
        q[:, 0] = -q[:, 0]
    return q if proper else q @ np.diag([1.0, 1.0, -1.0])


def transformed(atoms: ase.Atoms, rotation: np.ndarray) -> ase.Atoms:
    """Positions (and cell rows) mapped r -> R r."""
    out = atoms.copy()
    out.positions = atoms.positions @ rotation.T
    out.cell = atoms.cell.array @ rotation.T
    return out


def assert_energy_close(actual: float, expected: float, rel: float = 1e-10) -> None:
    assert abs(actual - expected) <= rel * abs(expected), (actual, expected)


def assert_arrays_close(actual: np.ndarray, expected: np.ndarray, rel: float = 1e-10) -> None:
    np.testing.assert_allclose(actual, expected, rtol=0, atol=rel * np.abs(expected).max())


# --- 1. Symmetries -----------------------------------------------------------------------------


@pytest.mark.parametrize("structure", ["molecule", "silicon"])
@pytest.mark.parametrize("proper", [True, False], ids=["rotation", "reflection"])
def test_energy_invariant_and_forces_stress_equivariant_under_o3(model, structure, proper, request):
    atoms = request.getfixturevalue(structure)
    rotation = random_rotation(seed=7, proper=proper)
    assert np.isclose(np.linalg.det(rotation), 1.0 if proper else -1.0)
    periodic = bool(atoms.pbc.any())
    ref = evaluate(model, atoms, stress=periodic)
    rot = evaluate(model, transformed(atoms, rotation), stress=periodic)
    assert abs(ref["energy"]) > 1e-3 and np.abs(ref["forces"]).max() > 1e-3  # not trivially symmetric
    assert_energy_close(rot["energy"], ref["energy"])
    assert_arrays_close(rot["forces"], ref["forces"] @ rotation.T)
    if periodic:
        assert np.abs(ref["stress"]).max() > 1e-6
        assert_arrays_close(rot["stress"], rotation @ ref["stress"] @ rotation.T)


@pytest.mark.parametrize("structure", ["molecule", "silicon"])
def test_translation_leaves_energy_and_forces_unchanged(model, structure, request):
    atoms = request.getfixturevalue(structure)
    moved = atoms.copy()
    moved.positions = atoms.positions + np.array([3.7, -12.1, 0.45])  # leaves the cell; not wrapped
    ref, out = evaluate(model, atoms), evaluate(model, moved)
    assert_energy_close(out["energy"], ref["energy"])
    assert_arrays_close(out["forces"], ref["forces"])


@pytest.mark.parametrize("structure", ["molecule", "silicon"])
def test_permuting_atoms_permutes_forces(model, structure, request):
    atoms = request.getfixturevalue(structure)
    order = np.random.default_rng(3).permutation(len(atoms))
    assert (order != np.arange(len(atoms))).any()
    ref, out = evaluate(model, atoms), evaluate(model, atoms[order])
    assert_energy_close(out["energy"], ref["energy"])
    assert_arrays_close(out["forces"], ref["forces"][order])


# --- 2. Periodic images ------------------------------------------------------------------------


def test_supercell_is_extensive(silicon):
    model = make_model(E0s=E0S, shift=0.13)
    ref = evaluate(model, silicon, stress=True)
    big = evaluate(model, silicon.repeat((2, 1, 1)), stress=True)
    n = len(silicon)
    assert_energy_close(big["energy"], 2.0 * ref["energy"], rel=1e-12)
    assert_arrays_close(big["forces"][:n], ref["forces"])
    assert_arrays_close(big["forces"][n:], ref["forces"])
    assert_arrays_close(big["stress"], ref["stress"])


# --- 3. Forces and stress are derivatives of the energy -----------------------------------------


def central_difference(energy_of, step: float) -> float:
    return (energy_of(step) - energy_of(-step)) / (2.0 * step)


@pytest.mark.parametrize("structure", ["molecule", "silicon"])
def test_forces_are_minus_energy_gradient(model, structure, request):
    atoms = request.getfixturevalue(structure)
    forces = evaluate(model, atoms)["forces"]
    rng = np.random.default_rng(11)
    for atom in rng.choice(len(atoms), size=4, replace=False):
        for component in range(3):

            def energy_of(step):
                displaced = atoms.copy()
                displaced.positions[atom, component] += step
                return evaluate(model, displaced)["energy"]

            numeric = -central_difference(energy_of, 1e-4)
            assert abs(numeric - forces[atom, component]) <= 1e-6 * np.abs(forces).max(), (atom, component)


def test_stress_is_strain_derivative_over_volume(model, silicon):
    stress = evaluate(model, silicon, stress=True)["stress"]
    volume = silicon.get_volume()
    np.testing.assert_allclose(stress, stress.T, atol=1e-14)
    for i in range(3):
        for j in range(i, 3):
            direction = np.zeros((3, 3))
            direction[i, j] += 0.5
            direction[j, i] += 0.5

            def energy_of(step):
                deformation = np.eye(3) + step * direction  # symmetric strain; rows map r -> r (1 + ε)
                strained = silicon.copy()
                strained.positions = silicon.positions @ deformation
                strained.cell = silicon.cell.array @ deformation
                return evaluate(model, strained)["energy"]

            numeric = central_difference(energy_of, 1e-5) / volume
            assert abs(numeric - stress[i, j]) <= 1e-6 * np.abs(stress).max(), (i, j, numeric, stress[i, j])


# --- 4. Batching ---------------------------------------------------------------------------------


def test_batch_equals_one_graph_at_a_time(model, molecule, silicon):
    water = ase.Atoms("OH2", positions=[[0.0, 0.0, 0.1], [0.76, 0.0, -0.5], [-0.76, 0.1, -0.45]])
    structures = [molecule, silicon, water]
    graphs = [graph_of(a) for a in structures]
    batch = model(collate(graphs), compute_stress=True)
    forces = batch["forces"].detach().numpy()
    start = 0
    for g, (atoms, graph) in enumerate(zip(structures, graphs)):
        alone = model(graph, compute_stress=True)
        stop = start + len(atoms)
        assert_energy_close(float(batch["energy"][g].detach()), float(alone["energy"][0].detach()), rel=1e-12)
        assert_arrays_close(forces[start:stop], alone["forces"].detach().numpy(), rel=1e-12)
        torch.testing.assert_close(batch["node_energy"][start:stop], alone["node_energy"], rtol=1e-12, atol=1e-14)
        if atoms.pbc.any():
            assert_arrays_close(batch["stress"][g].numpy(), alone["stress"][0].numpy(), rel=1e-12)
        else:  # documented: stress of a cell of zero volume is NaN, not a number that looks real
            assert torch.isnan(batch["stress"][g]).all()
        start = stop


# --- 5. Smoothness at the cutoff -----------------------------------------------------------------


def trimer(distance: float) -> ase.Atoms:
    """C at the origin, H 1.1 Å away, O along x at `distance` from C (and > r_max from H)."""
    return ase.Atoms("CHO", positions=[[0.0, 0.0, 0.0], [-0.5, 0.98, 0.0], [distance, 0.0, 0.0]])


def test_energy_and_forces_continuous_as_an_atom_crosses_r_max(model):
    outside = evaluate(model, trimer(R_MAX + 1e-6))
    # beyond r_max the O atom is isolated: energies add (the CH pair and the lone O, two graphs of one
    # batch), and it feels no force
    pair_and_oxygen = [ase.Atoms("CH", positions=trimer(0.0).positions[:2]), ase.Atoms("O")]
    apart = model(collate([graph_of(a) for a in pair_and_oxygen]))
    assert_energy_close(outside["energy"], float(apart["energy"].detach().sum()), rel=1e-13)
    assert np.abs(outside["forces"][2]).max() == 0.0
    assert_arrays_close(outside["forces"], apart["forces"].detach().numpy(), rel=1e-13)

    inside = evaluate(model, trimer(R_MAX - 0.5))
    assert np.abs(inside["forces"][2]).max() > 1e-4  # O does interact when inside
    energy_gaps, force_gaps = [], []
    for delta in (1e-3, 1e-4, 1e-5, 1e-6):
        near = evaluate(model, trimer(R_MAX - delta))
        energy_gaps.append(abs(near["energy"] - outside["energy"]))
        force_gaps.append(np.abs(near["forces"] - outside["forces"]).max())
    # envelope vanishes with two derivatives and the Bessel basis with one: ΔE = O(δ⁴), ΔF = O(δ³)
    assert energy_gaps[0] < 1e-9 and force_gaps[0] < 1e-6, (energy_gaps, force_gaps)
    assert energy_gaps[-1] < 1e-14 and force_gaps[-1] < 1e-13, (energy_gaps, force_gaps)
    assert force_gaps[1] < 1e-2 * force_gaps[0], force_gaps  # at least quadratic in δ: forces are C¹


def test_edges_beyond_r_max_contribute_nothing(model, molecule):
    config = configuration(molecule)
    tight = graph_from_configuration(config, R_MAX)
    loose = graph_from_configuration(config, R_MAX + 2.0)
    assert loose.num_edges > tight.num_edges
    a, b = model(tight), model(loose)
    torch.testing.assert_close(b["energy"], a["energy"], rtol=1e-14, atol=0.0)
    torch.testing.assert_close(b["forces"], a["forces"], rtol=0.0, atol=1e-14)


# --- 6. Isolated atoms ---------------------------------------------------------------------------


def isolated_site(model: MACE, z: int, alone: bool) -> tuple[float, np.ndarray]:
    """Site energy and force of an atom of element z without neighbours.

    alone=True: a one-atom structure (a graph with no edges at all). alone=False: the same atom 30 Å
    from a water molecule in one structure, so the graph has edges, just none touching it.
    """
    atom = ase.Atoms(numbers=[z], positions=[[1.0, -2.0, 30.5]])
    atoms = atom if alone else atom + ase.Atoms("OH2", positions=[[0, 0, 0.1], [0.76, 0, -0.5], [-0.76, 0.1, -0.45]])
    graph = graph_of(atoms)
    assert alone == (graph.num_edges == 0)
    out = model(graph)
    return float(out["node_energy"][0].detach()), out["forces"][0].detach().numpy()


@pytest.mark.parametrize("alone", [True, False], ids=["one-atom-graph", "far-from-water"])
@pytest.mark.parametrize("shift", [0.0, 0.37])
def test_isolated_atom_of_plain_model_has_energy_e0_plus_shift(shift, alone):
    model = make_model(E0s=E0S, shift=shift, first_interaction="plain")
    for z, e0 in zip(ELEMENTS, E0S):
        energy, force = isolated_site(model, z, alone)
        assert energy == e0 + shift  # no neighbours: every feature after the embedding is exactly 0
        assert np.all(force == 0.0)


@pytest.mark.parametrize("alone", [True, False], ids=["one-atom-graph", "far-from-water"])
def test_isolated_atom_of_residual_model_carries_embedding_skip(alone):
    """mace-torch semantics: with a residual first interaction, the element-dependent skip connection
    sc = ElementLinear(embedding(z)) is added to the first product's output, and the first readout
    reads it, so an atom with no neighbours has energy E0 + shift + scale · readout(sc(z)) ≠ E0 + shift.
    Only the plain first interaction (no skip) gives E0 + shift."""
    model = make_model(E0s=E0S, first_interaction="residual")
    offsets = []
    for z, e0 in zip(ELEMENTS, E0S):
        energy, force = isolated_site(model, z, alone)
        offsets.append(energy - e0)
        assert np.all(force == 0.0)
    assert all(abs(d) > 1e-6 for d in offsets), offsets
    assert len({round(d, 10) for d in offsets}) == len(ELEMENTS), offsets  # depends on the element
    if not alone:  # the offset is a per-element constant, whatever else is in the structure
        lone_in_batch = model(collate([graph_of(ase.Atoms("CO", positions=[[0, 0, 0], [0, 0, 1.2]])),
                                       graph_of(ase.Atoms("N"))]))
        assert float(lone_in_batch["node_energy"][2].detach()) == pytest.approx(E0S[2] + offsets[2], rel=1e-14)


# --- 7. Errors -------------------------------------------------------------------------------------


def test_unknown_element_is_an_input_error_naming_it(model):
    gold = ase.Atoms("CAu", positions=[[0, 0, 0], [0, 0, 2.0]])
    with pytest.raises(InputError, match=r"\b79\b"):
        model(graph_of(gold))


@pytest.mark.parametrize(
    "overrides, words",
    [
        (dict(first_interaction="skip"), "first_interaction"),
        (dict(E0s=(1.0, 2.0)), "E0s"),
        (dict(max_ell=1, max_L=2), "max_L"),
    ],
)
def test_invalid_config_is_an_input_error(overrides, words):
    with pytest.raises(InputError, match=words):
        make_config(**overrides)


def test_energy_is_float64_and_forces_in_model_dtype(model, molecule):
    out = model(graph_of(molecule))
    assert out["energy"].dtype == torch.float64 and out["energy"].shape == (1,)
    assert out["node_energy"].shape == (len(molecule),)
    assert out["forces"].dtype == torch.float64 and out["forces"].shape == (len(molecule), 3)
    torch.testing.assert_close(out["node_energy"].sum(), out["energy"][0], rtol=1e-14, atol=0.0)


def test_e0s_stay_float64_when_the_model_is_cast():
    model = MACE(MACEConfig(atomic_numbers=(1, 8), E0s=(-13.587222780835477, -2041.9816003861047), channels=4))
    for cast in (model.float, model.half, lambda: model.to(torch.bfloat16)):
        cast()
        assert model.e0s.dtype == torch.float64
        assert model.e0s[1].item() == -2041.9816003861047


def test_a_move_to_the_same_device_keeps_the_e0s_tensor():
    # a recorded CUDA graph reads the E0s at their address: `evaluate` moving the model to the device
    # it is on already must not replace them (it did, and replayed training steps read freed memory)
    model = MACE(MACEConfig(atomic_numbers=(1, 8), E0s=(-13.587222780835477, -2041.9816003861047), channels=4))
    model.float()
    address = model.e0s.data_ptr()
    model.to("cpu")
    model.to(torch.device("cpu"))
    assert model.e0s.data_ptr() == address and model.e0s.dtype == torch.float64


def test_a_float32_model_evaluated_in_fp64_computes_with_exact_tables(molecule):
    # fp64 is the reference every precision is measured against, and the bench and trainer build
    # float32 models: .float() must not round the CG, basis, spherical-harmonic, Bessel and radii
    # tables. The float32 weights are float64 numbers too: both models compute one function.
    single = make_model(distance_transform="agnesi", pair_repulsion=True).float()
    double = make_model(distance_transform="agnesi", pair_repulsion=True)
    double.load_state_dict(single.state_dict())
    a = evaluate(single, molecule, precision="fp64")
    b = evaluate(double, molecule, precision="fp64")
    assert abs(b["energy"]) > 0.1 and np.abs(b["forces"]).max() > 0.1  # E0s are zero: all interaction
    assert_energy_close(a["energy"], b["energy"], rel=1e-13)
    assert_arrays_close(a["forces"], b["forces"], rel=1e-13)


def test_casts_keep_the_exact_tables_float64_and_moves_keep_them_in_place():
    # a recorded CUDA graph reads every buffer at its address: a move to where the model is, or a
    # cast to the dtype it has, must keep each table; any cast leaves them float64 and exact
    model = make_model(distance_transform="agnesi").float()
    tables = {n: b for n, b in model.named_buffers() if b.is_floating_point()}
    kinds = {n.rsplit(".", 1)[-1].split("_")[0] for n in tables}
    assert kinds >= {"coupling", "coeffs", "step", "frequencies", "radii", "e0s"}
    assert all(b.dtype == torch.float64 for b in tables.values())
    exact = {n: b.clone() for n, b in tables.items()}
    for move in (lambda: model.to("cpu"), lambda: model.to(torch.device("cpu")), model.float, model.cpu):
        move()
        assert all(b is tables[n] for n, b in model.named_buffers() if n in tables)
    model.to(torch.bfloat16)
    after = dict(model.named_buffers())
    assert all(after[n].dtype == torch.float64 and torch.equal(after[n], exact[n]) for n in exact)
    assert not any(n in model.state_dict() for n in exact)
