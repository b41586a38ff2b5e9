"""Neighbour lists against a brute-force sum over atoms and lattice images."""

import itertools

import numpy as np
import pytest

from lpmace.data import neighbour_list, read_configurations


def brute_force_edges(positions, cell, pbc, r_max):
    """{(sender, receiver, (s0, s1, s2))} with |positions[r] - positions[s] + S @ cell| < r_max."""
    cell = np.where(pbc[:, None], cell, 0.0)
    reach = [0, 0, 0]
    if pbc.any():
        periodic = cell[pbc]
        fractional = positions @ np.linalg.pinv(periodic)  # [n, n_periodic]
        plane_spacing = 1.0 / np.linalg.norm(np.linalg.pinv(periodic), axis=0)
        span = fractional.max(0) - fractional.min(0)
        for k, axis in enumerate(np.flatnonzero(pbc)):
            reach[axis] = int(np.ceil(r_max / plane_spacing[k] + span[k])) + 1
    edges = set()
    for shift in itertools.product(*(range(-m, m + 1) for m in reach)):
        vectors = positions[None, :, :] - positions[:, None, :] + np.array(shift, float) @ cell  # [s, r, 3]
        close = np.linalg.norm(vectors, axis=-1) < r_max
        for s, r in zip(*np.nonzero(close)):
            if s != r or any(shift):
                edges.add((int(s), int(r), shift))
    return edges


def check_against_brute_force(positions, cell, pbc, r_max):
    edge_index, shifts = neighbour_list(positions, cell, pbc, r_max)
    assert edge_index.dtype == np.int64 and shifts.dtype == np.float64
    assert edge_index.shape == (2, shifts.shape[0]) and shifts.shape[1] == 3
    found = {(int(s), int(r), tuple(int(x) for x in t)) for (s, r), t in zip(edge_index.T, shifts)}
    assert len(found) == edge_index.shape[1], "duplicate edges"
    assert found == brute_force_edges(positions, cell, pbc, r_max)
    sender, receiver = edge_index
    vectors = positions[receiver] - positions[sender] + shifts @ cell
    assert np.all(np.linalg.norm(vectors, axis=1) < r_max)
    key = receiver * (len(positions) + 1) + sender
    assert np.all(np.diff(key) >= 0), "not sorted by (receiver, sender)"
    return edge_index, shifts


def random_triclinic(rng, n_atoms, lengths=4.0, unwrap=False):
    cell = lengths * np.eye(3) + rng.uniform(-1.2, 1.2, (3, 3)) * np.tri(3, k=-1)  # lower-triangular tilt
    fractional = rng.uniform(0, 1, (n_atoms, 3))
    if unwrap:
        fractional += rng.integers(-2, 3, (n_atoms, 3))
    return fractional @ cell, cell


def test_random_triclinic_periodic_cell_sees_own_images():
    rng = np.random.default_rng(0)
    positions, cell = random_triclinic(rng, 6)
    edge_index, shifts = check_against_brute_force(positions, cell, np.ones(3, bool), 5.0)
    self_images = edge_index[0] == edge_index[1]
    assert self_images.any() and np.all(np.abs(shifts[self_images]).sum(1) > 0)


def test_left_handed_cell():
    positions, cell = random_triclinic(np.random.default_rng(3), 5)
    check_against_brute_force(positions, cell[[1, 0, 2]], np.ones(3, bool), 4.0)


def test_unwrapped_positions_and_mixed_pbc_with_zero_open_row():
    rng = np.random.default_rng(1)
    positions, cell = random_triclinic(rng, 7, unwrap=True)
    check_against_brute_force(positions, cell, np.ones(3, bool), 4.5)
    pbc = np.array([True, False, True])
    cell[1] = 0.0
    _, shifts = check_against_brute_force(positions, cell, pbc, 4.5)
    assert np.all(shifts[:, 1] == 0) and np.any(shifts[:, 0] != 0)


def test_molecule_with_a_box_written_but_no_pbc(data_dir):
    (config,) = read_configurations(data_dir / "3bpa/train_300K.xyz", index=0)
    _, shifts = check_against_brute_force(config.positions, config.cell, config.pbc, 5.0)
    assert not shifts.any()
    check_against_brute_force(config.positions, np.zeros((3, 3)), config.pbc, 3.0)


def test_silicon_cell_from_the_dataset(data_dir):
    configs = read_configurations(data_dir / "si_zuo2020/Si_test.xyz", energy_key="energy", forces_key="force")
    smallest = min(configs, key=lambda c: c.num_atoms)
    edge_index, _ = check_against_brute_force(smallest.positions, smallest.cell, smallest.pbc, 5.0)
    assert edge_index.shape[1] > 10 * smallest.num_atoms


def test_isolated_atoms_have_no_edges():
    positions = np.array([[0.0, 0.0, 0.0], [0.0, 0.0, 1.0], [10.0, 0.0, 0.0]])
    edge_index, shifts = neighbour_list(positions, np.zeros((3, 3)), np.zeros(3, bool), 2.0)
    assert edge_index.tolist() == [[1, 0], [0, 1]] and shifts.shape == (2, 3)
    one, _ = neighbour_list(positions[:1], np.zeros((3, 3)), np.zeros(3, bool), 2.0)
    assert one.shape == (2, 0)


def test_bad_cutoff():
    from lpmace.errors import InputError

    with pytest.raises(InputError, match="r_max"):
        neighbour_list(np.zeros((2, 3)), np.eye(3), np.ones(3, bool), 0.0)
