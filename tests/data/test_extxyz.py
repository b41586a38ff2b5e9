"""Reading extended XYZ: real datasets, ASE calculator round trips, and every kind of bad input."""

import dataclasses

import ase.io
import numpy as np
import pytest
from ase import Atoms
from ase.calculators.singlepoint import SinglePointCalculator

from lpmace.data import Configuration, isolated_atom_energies, read_configurations
from lpmace.errors import InputError

def test_3bpa_train_has_500_molecules_of_27_atoms(data_dir):
    configs = read_configurations(data_dir / "3bpa/train_300K.xyz")
    assert len(configs) == 500
    assert {c.num_atoms for c in configs} == {27}
    assert all(c.forces.shape == (27, 3) and isinstance(c.energy, float) for c in configs)
    assert all(not c.pbc.any() and c.stress is None for c in configs)
    assert set(np.concatenate([c.numbers for c in configs]).tolist()) == {1, 6, 7, 8}
    assert configs[0].energy == pytest.approx(-17660.461737861464, abs=1e-9)
    assert configs[0].positions.dtype == np.float64 and configs[0].numbers.dtype == np.int64
    assert configs[7].source.endswith("train_300K.xyz:frame 7")


def test_si_reads_calculator_energy_and_per_atom_force_column(data_dir):
    configs = read_configurations(data_dir / "si_zuo2020/Si_train.xyz", energy_key="energy", forces_key="force")
    assert len(configs) == 214
    assert all(c.pbc.all() for c in configs)
    assert min(c.num_atoms for c in configs) >= 8 and max(c.num_atoms for c in configs) <= 128
    assert all(c.forces.shape == (c.num_atoms, 3) for c in configs)
    assert configs[0].energy == pytest.approx(-295.49753016)
    assert configs[0].forces[0] == pytest.approx([-2.98187262, 0.60691870, 3.48143607])


def test_rmd17_and_isolated_atoms(data_dir):
    configs = read_configurations(data_dir / "rmd17_ethanol/rmd17_ethanol_test_01.xyz", index=":50")
    assert len(configs) == 50 and {c.num_atoms for c in configs} == {9}
    iso = read_configurations(data_dir / "3bpa/iso_atoms.xyz", forces_key=None)
    assert isolated_atom_energies(iso) == pytest.approx(
        {1: -13.587222780835477, 6: -1029.4889999855063, 7: -1484.9814568572233, 8: -2041.9816003861047}
    )


def test_misspelt_key_names_key_and_file_and_lists_present_keys(data_dir):
    path = data_dir / "si_zuo2020/Si_test.xyz"
    with pytest.raises(InputError) as info:
        read_configurations(path, energy_key="energy", forces_key="forces")
    message = str(info.value)
    assert "'forces'" in message and "Si_test.xyz" in message and "force" in message.split("present")[1]


def test_index_selection_keeps_file_frame_numbers(data_dir):
    path = data_dir / "3bpa/train_300K.xyz"
    assert [c.source.rsplit(" ", 1)[1] for c in read_configurations(path, index="10:20:4")] == ["10", "14", "18"]
    assert [c.source.rsplit(" ", 1)[1] for c in read_configurations(path, index=-2)] == ["498"]
    assert read_configurations(path, index=3)[0].energy == read_configurations(path, index=":5")[3].energy


def _two_atoms(**calc):
    cell = [[3.0, 0.0, 0.0], [0.5, 3.1, 0.0], [0.2, 0.3, 2.9]]
    atoms = Atoms("SiC", positions=[[0.1, 0.2, 0.3], [1.2, 1.1, 0.9]], cell=cell, pbc=True)
    if calc:
        atoms.calc = SinglePointCalculator(atoms, **calc)
    return atoms


def test_single_point_calculator_round_trip(tmp_path):
    forces = np.array([[0.1, -0.2, 0.3], [-0.1, 0.2, -0.3]])
    voigt = np.array([1.0, 2.0, 3.0, 4.0, 5.0, 6.0]) * 1e-3  # xx yy zz yz xz xy
    path = tmp_path / "spc.xyz"
    ase.io.write(path, [_two_atoms(energy=-7.5, forces=forces, stress=voigt)], format="extxyz")
    (config,) = read_configurations(path, energy_key="energy", forces_key="forces", stress_key="stress")
    assert config.energy == -7.5
    np.testing.assert_array_equal(config.forces, forces)
    expected = 1e-3 * np.array([[1.0, 6.0, 5.0], [6.0, 2.0, 4.0], [5.0, 4.0, 3.0]])
    np.testing.assert_allclose(config.stress, expected, rtol=1e-12)


def test_virials_become_minus_virials_over_volume(tmp_path):
    atoms = _two_atoms()
    virials = np.arange(9.0).reshape(3, 3) + 1.0
    atoms.info["REF_virials"] = virials
    atoms.info["REF_energy"] = 1.0
    path = tmp_path / "vir.xyz"
    ase.io.write(path, atoms, format="extxyz")
    (config,) = read_configurations(path, forces_key=None)
    np.testing.assert_allclose(config.stress, -virials / abs(np.linalg.det(atoms.cell.array)), rtol=1e-12)


def test_label_missing_in_some_frames_is_none_there(tmp_path):
    first, second = _two_atoms(), _two_atoms()
    first.info["REF_energy"] = 2.0
    path = tmp_path / "partial.xyz"
    ase.io.write(path, [first, second], format="extxyz")
    configs = read_configurations(path, forces_key=None)
    assert [c.energy for c in configs] == [2.0, None]
    with pytest.raises(InputError, match="REF_forces"):
        read_configurations(path)


def _write(tmp_path, text, name="bad.xyz"):
    path = tmp_path / name
    path.write_text(text)
    return path


GOOD_FRAME = 'Properties=species:S:1:pos:R:3 REF_energy=1.0 pbc="F F F"\nH 0 0 0\nH 0 0 0.74\n'


def test_nan_position_names_the_frame(tmp_path):
    bad = GOOD_FRAME.replace("0 0 0.74", "0 nan 0.74")
    path = _write(tmp_path, "2\n" + GOOD_FRAME + "2\n" + GOOD_FRAME + "2\n" + bad)
    with pytest.raises(InputError, match=r"bad\.xyz:frame 2: positions .*nan"):
        read_configurations(path, forces_key=None)


def test_non_finite_energy_and_forces(tmp_path):
    path = _write(tmp_path, "2\n" + GOOD_FRAME.replace("REF_energy=1.0", "REF_energy=inf"))
    with pytest.raises(InputError, match="frame 0: REF_energy"):
        read_configurations(path, forces_key=None)
    frame = 'Properties=species:S:1:pos:R:3:REF_forces:R:3 pbc="F F F"\nH 0 0 0 0 0 0\nH 0 0 1 0 0 nan\n'
    with pytest.raises(InputError, match="frame 0: REF_forces"):
        read_configurations(_write(tmp_path, "2\n" + frame, "f.xyz"), energy_key=None)


def test_forces_of_wrong_shape(tmp_path):
    frame = 'Properties=species:S:1:pos:R:3:REF_forces:R:2 pbc="F F F"\nH 0 0 0 0 0\nH 0 0 1 0 0\n'
    with pytest.raises(InputError, match=r"REF_forces has shape \(2, 2\)"):
        read_configurations(_write(tmp_path, "2\n" + frame), energy_key=None)


def test_missing_empty_and_unparsable_files(tmp_path):
    with pytest.raises(InputError, match="no such file"):
        read_configurations(tmp_path / "absent.xyz")
    with pytest.raises(InputError, match="no frames"):
        read_configurations(_write(tmp_path, "", "empty.xyz"))
    with pytest.raises(InputError, match="garbage.xyz:frame 1: cannot parse"):
        read_configurations(_write(tmp_path, "2\n" + GOOD_FRAME + "two\nnot xyz\n", "garbage.xyz"), forces_key=None)


def test_unknown_symbol(tmp_path):
    with pytest.raises(InputError, match="frame 0: unknown chemical symbol 'Xq'"):
        read_configurations(_write(tmp_path, "2\n" + GOOD_FRAME.replace("H 0 0 0\n", "Xq 0 0 0\n")), forces_key=None)


def test_singular_periodic_cell_is_refused_but_open_zero_rows_are_fine(tmp_path):
    frame = 'Lattice="4 0 0 0 4 0 0 0 0" Properties=species:S:1:pos:R:3 REF_energy=1.0 pbc="{}"\nH 0 0 0\nH 0 0 0.74\n'
    with pytest.raises(InputError, match="singular"):
        read_configurations(_write(tmp_path, "2\n" + frame.format("T T T")), forces_key=None)
    (slab,) = read_configurations(_write(tmp_path, "2\n" + frame.format("T T F"), "slab.xyz"), forces_key=None)
    assert slab.pbc.tolist() == [True, True, False]


def test_configuration_is_read_only_and_validates():
    empty_box = dict(positions=np.zeros((1, 3)), cell=np.zeros((3, 3)), pbc=np.zeros(3, bool))
    config = Configuration(numbers=np.array([1]), **empty_box)
    with pytest.raises(ValueError):
        config.positions[0, 0] = 1.0
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.energy = 1.0
    with pytest.raises(InputError, match="atomic number 0"):
        Configuration(numbers=np.array([0]), **empty_box)


def test_isolated_atom_by_config_type_in_a_periodic_box():
    box = dict(positions=np.zeros((1, 3)), cell=10.0 * np.eye(3), pbc=np.ones(3, bool))
    configs = [
        Configuration(numbers=np.array([14]), energy=-1.5, config_type="isolatedATOM", **box),
        Configuration(numbers=np.array([14]), energy=-9.0, **box),  # periodic, unlabelled: a crystal
    ]
    assert isolated_atom_energies(configs) == {14: -1.5}
