"""VerletList against vesin (lpmace.data.neighbours.neighbour_list) per system, and a brute-force sum."""

import itertools

import numpy as np
import pytest
import torch

from lpmace.data.neighbours import neighbour_list
from lpmace.dynamics.neighbours import VerletList
from lpmace.errors import InputError

CUTOFF = 4.0


def triclinic(rng, lengths):
    return np.diag(lengths) + rng.uniform(-1.0, 1.0, (3, 3)) * np.tri(3, k=-1)


def system(kind, rng):
    """(positions [n, 3], cell [3, 3], pbc [3]) of one kind of random structure, Å."""
    if kind == "cubic":
        cell = 8.0 * np.eye(3)
        return rng.uniform(0, 8.0, (40, 3)), cell, np.ones(3, bool)
    if kind == "triclinic":
        cell = triclinic(rng, [7.0, 8.0, 9.0])
        return rng.uniform(0, 1, (45, 3)) @ cell, cell, np.ones(3, bool)
    if kind == "slab":  # open along z, written as a zero row
        cell = triclinic(rng, [7.0, 6.5, 0.0])
        cell[2] = 0.0
        positions = rng.uniform(0, 1, (30, 3)) @ cell + rng.uniform(0, 9.0, (30, 1)) * np.array([0, 0, 1.0])
        return positions, cell, np.array([True, True, False])
    if kind == "wire":  # periodic along x only, a full cell written
        cell = np.diag([6.0, 20.0, 20.0])
        return rng.uniform(0, 1, (25, 3)) * [6.0, 7.0, 7.0], cell, np.array([True, False, False])
    if kind == "molecule":
        return rng.uniform(0, 7.0, (20, 3)), np.zeros((3, 3)), np.zeros(3, bool)
    if kind == "small":  # cutoff > cell widths: several images of each pair, atoms see their own images
        cell = triclinic(rng, [2.6, 3.0, 2.8])
        return rng.uniform(0, 1, (3, 3)) @ cell, cell, np.ones(3, bool)
    if kind == "outside":  # unwrapped: atoms several cell vectors away from the cell
        cell = triclinic(rng, [6.0, 7.0, 6.5])
        return (rng.uniform(0, 1, (30, 3)) + rng.integers(-4, 5, (30, 3))) @ cell, cell, np.ones(3, bool)
    if kind == "one atom":
        cell = 3.0 * np.eye(3)
        return rng.uniform(0, 3.0, (1, 3)), cell, np.ones(3, bool)
    if kind == "one atom, no pbc":
        return rng.uniform(0, 3.0, (1, 3)), np.zeros((3, 3)), np.zeros(3, bool)
    raise ValueError(kind)


KINDS = ["cubic", "triclinic", "slab", "wire", "molecule", "small", "outside", "one atom", "one atom, no pbc"]


def batched(systems, dtype=torch.float64):
    """VerletList inputs for a list of (positions, cell, pbc)."""
    counts = [len(p) for p, _, _ in systems]
    positions = torch.tensor(np.concatenate([p for p, _, _ in systems]), dtype=dtype)
    cell = torch.tensor(np.stack([c for _, c, _ in systems]), dtype=dtype)
    pbc = torch.tensor(np.stack([b for _, _, b in systems]))
    batch = torch.repeat_interleave(torch.arange(len(systems)), torch.tensor(counts))
    ptr = torch.tensor([0] + list(np.cumsum(counts)))
    return positions, cell, pbc, batch, ptr


def expected(positions, cell, pbc, batch, ptr, cutoff=CUTOFF):
    """vesin per system (float64), atom indices offset into the batch: edge_index [2, E], shifts [E, 3]."""
    edges, shifts = [], []
    for s in range(cell.shape[0]):
        lo, hi = int(ptr[s]), int(ptr[s + 1])
        e, t = neighbour_list(positions[lo:hi].double().numpy(), cell[s].double().numpy(), pbc[s].numpy(), cutoff)
        edges.append(e + lo)
        shifts.append(t)
    return np.concatenate(edges, axis=1), np.concatenate(shifts)


def assert_same_as_vesin(verlet, inputs, cutoff=CUTOFF):
    edge_index, shifts = verlet(*inputs)
    want_edges, want_shifts = expected(*inputs, cutoff=cutoff)
    assert edge_index.dtype == torch.int64 and shifts.dtype == inputs[0].dtype
    assert edge_index.shape == want_edges.shape, f"{edge_index.shape[1]} edges, vesin finds {want_edges.shape[1]}"
    # Same order (receiver, sender, shift), so equal element by element.
    np.testing.assert_array_equal(edge_index.numpy(), want_edges)
    np.testing.assert_array_equal(shifts.double().numpy(), want_shifts)
    return edge_index, shifts


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("skin", [0.0, 1.0])
def test_one_system_matches_vesin(kind, skin):
    inputs = batched([system(kind, np.random.default_rng(len(kind)))])
    edge_index, shifts = assert_same_as_vesin(VerletList(CUTOFF, skin), inputs)
    if kind == "small":
        self_images = edge_index[0] == edge_index[1]
        assert self_images.any() and shifts[self_images].abs().sum(1).min() > 0
        keys = [(int(s), int(r)) for s, r in edge_index.T]
        assert len(set(keys)) < len(keys), "a small cell has several images of one pair"
    if kind == "outside":
        assert shifts.abs().max() >= 3
    if kind in ("slab", "wire"):
        open_axes = ~inputs[2][0]
        assert torch.all(shifts[:, open_axes] == 0) and torch.any(shifts[:, ~open_axes] != 0)


def test_batch_of_every_kind_matches_vesin_per_system():
    rng = np.random.default_rng(7)
    systems = [system(kind, rng) for kind in KINDS + KINDS[::-1]]
    edge_index, _ = assert_same_as_vesin(VerletList(CUTOFF, 1.0), batched(systems))
    batch = batched(systems)[3]
    assert torch.equal(batch[edge_index[0]], batch[edge_index[1]])


def test_float32_positions():
    rng = np.random.default_rng(3)
    inputs = batched([system(kind, rng) for kind in ("triclinic", "slab", "outside", "small")], torch.float32)
    _, shifts = assert_same_as_vesin(VerletList(CUTOFF, 0.8), inputs)
    assert shifts.dtype == torch.float32


def test_sorted_by_receiver_then_sender_then_shift():
    inputs = batched([system("small", np.random.default_rng(1)), system("cubic", np.random.default_rng(2))])
    edge_index, shifts = VerletList(CUTOFF, 1.0)(*inputs)
    keys = [(int(r), int(s), *map(int, t)) for (s, r), t in zip(edge_index.T, shifts)]
    assert keys == sorted(keys) and len(set(keys)) == len(keys)


def test_tiny_triclinic_cell_against_a_sum_over_images():
    """Written independently of both lists: every atom pair and every image within a generous range."""
    cell = np.array([[2.0, 0.0, 0.0], [0.7, 2.2, 0.0], [-0.4, 0.5, 2.4]])
    positions = np.array([[0.1, 0.2, 0.3], [1.5, 1.1, 2.0], [3.9, -1.0, 0.7]])  # the last outside the cell
    cutoff = 3.1
    want = set()
    for shift in itertools.product(range(-5, 6), repeat=3):
        for s, r in itertools.product(range(3), repeat=2):
            vector = positions[r] - positions[s] + np.array(shift) @ cell
            if np.linalg.norm(vector) < cutoff and (s != r or any(shift)):
                want.add((s, r, shift))
    edge_index, shifts = VerletList(cutoff, 0.5)(*batched([(positions, cell, np.ones(3, bool))]))
    found = {(int(s), int(r), tuple(int(x) for x in t)) for (s, r), t in zip(edge_index.T, shifts)}
    assert len(found) == edge_index.shape[1] and found == want


def test_skin_reuse_gives_the_exact_list_with_few_builds():
    rng = np.random.default_rng(11)
    systems = [system(kind, rng) for kind in ("cubic", "slab", "molecule", "outside", "small")]
    positions, cell, pbc, batch, ptr = batched(systems)
    verlet, every_call = VerletList(CUTOFF, 1.0), VerletList(CUTOFF, 0.0)
    steps, first = 60, verlet(positions, cell, pbc, batch, ptr)
    for _ in range(steps):
        positions = positions + torch.tensor(rng.normal(0.0, 0.05, positions.shape))  # ~0.09 Å per step
        edge_index, shifts = assert_same_as_vesin(verlet, (positions, cell, pbc, batch, ptr))
        reference = every_call(positions, cell, pbc, batch, ptr)
        assert torch.equal(edge_index, reference[0]) and torch.equal(shifts, reference[1])
    assert every_call.builds == steps
    assert edge_index.shape != first[0].shape or not torch.equal(edge_index, first[0])
    assert 2 <= verlet.builds <= steps // 4, verlet.builds


def test_moving_more_than_half_the_skin_rebuilds():
    inputs = list(batched([system("cubic", np.random.default_rng(5))]))
    verlet = VerletList(CUTOFF, 1.0)
    verlet(*inputs)
    start = inputs[0].clone()
    inputs[0] = start.clone()
    inputs[0][7, 1] += 0.49
    assert_same_as_vesin(verlet, inputs)
    assert verlet.builds == 1
    inputs[0][7, 1] += 0.02  # now 0.51 from where it was at the build
    assert_same_as_vesin(verlet, inputs)
    assert verlet.builds == 2


def test_a_jump_by_a_lattice_vector_rebuilds():
    """Wrapping an atom moves it by a lattice vector: its minimum-image displacement is zero, but its
    shifts change; the raw displacement sees it (the NVE drift bug of minimum-image skin checks)."""
    positions, cell, pbc, batch, ptr = batched([system("triclinic", np.random.default_rng(9))])
    verlet = VerletList(CUTOFF, 1.0)
    verlet(positions, cell, pbc, batch, ptr)
    jumped = positions.clone()
    jumped[:10] -= cell[0, 1]  # ten atoms translated by minus the second lattice vector
    assert_same_as_vesin(verlet, (jumped, cell, pbc, batch, ptr))
    assert verlet.builds == 2


def test_changed_cell_pbc_or_batch_rebuilds():
    rng = np.random.default_rng(4)
    positions, cell, pbc, batch, ptr = batched([system("cubic", rng), system("cubic", rng)])
    verlet = VerletList(CUTOFF, 1.0)
    verlet(positions, cell, pbc, batch, ptr)
    assert_same_as_vesin(verlet, (positions, cell * 1.02, pbc, batch, ptr))
    assert verlet.builds == 2
    slab = pbc.clone()
    slab[1, 2] = False
    assert_same_as_vesin(verlet, (positions, cell * 1.02, slab, batch, ptr))
    assert verlet.builds == 3
    moved_split = batch.clone()
    moved_split[35:40] = 1  # same shapes, five atoms moved into the second system
    assert_same_as_vesin(verlet, (positions, cell * 1.02, slab, moved_split, torch.tensor([0, 35, 80])))
    assert verlet.builds == 4
    verlet.reset()
    verlet(positions, cell * 1.02, slab, moved_split, torch.tensor([0, 35, 80]))
    assert verlet.builds == 5


def test_bad_arguments_name_the_problem():
    with pytest.raises(InputError, match="cutoff"):
        VerletList(0.0)
    with pytest.raises(InputError, match="skin"):
        VerletList(4.0, -1.0)
    positions, cell, pbc, batch, ptr = batched([system("cubic", np.random.default_rng(0))])
    with pytest.raises(InputError, match="shapes"):
        VerletList(4.0)(positions, cell, pbc, batch, torch.tensor([0]))
    with pytest.raises(InputError, match="singular"):
        VerletList(4.0)(positions, torch.zeros_like(cell), pbc, batch, ptr)


def count_syncs(call):
    """Host synchronisations `call` makes on CUDA (torch's sync debug mode warns once per sync)."""
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("warn")
    try:
        with pytest.warns(UserWarning) as syncs:
            call()
    finally:
        torch.cuda.set_sync_debug_mode("default")
    return len([w for w in syncs if "synchroniz" in str(w.message)])


@pytest.mark.gpu
def test_cuda_matches_cpu_with_four_syncs_per_build_and_one_per_reuse():
    rng = np.random.default_rng(12)
    inputs = batched([system(kind, rng) for kind in KINDS])
    on_cpu = VerletList(CUTOFF, 1.0)(*inputs)
    cuda_inputs = [x.cuda() for x in inputs]
    verlet = VerletList(CUTOFF, 1.0)
    on_cuda = verlet(*cuda_inputs)
    assert torch.equal(on_cuda[0].cpu(), on_cpu[0]) and torch.equal(on_cuda[1].cpu(), on_cpu[1])
    verlet.reset()
    assert count_syncs(lambda: verlet(*cuda_inputs)) == 4
    cuda_inputs[0] = cuda_inputs[0] + 0.01
    assert count_syncs(lambda: verlet(*cuda_inputs)) == 1
    assert verlet.builds == 2


def test_isolated_atoms_reuse_an_empty_list():
    positions = torch.tensor([[0.0, 0.0, 0.0], [10.0, 0.0, 0.0]])
    inputs = (positions, torch.zeros(1, 3, 3), torch.zeros(1, 3, dtype=torch.bool), torch.zeros(2, dtype=torch.long),
              torch.tensor([0, 2]))
    verlet = VerletList(CUTOFF, 1.0)
    for step in range(3):
        edge_index, shifts = verlet(positions + 0.1 * step, *inputs[1:])
        assert edge_index.shape == (2, 0) and shifts.shape == (0, 3)
    assert verlet.builds == 1
