"""Padded batches (what the CUDA-graph training step records): the real structures' predictions,
the masked loss and every parameter gradient of the loss equal the unpadded batch's."""

import numpy as np
import pytest
import torch
from ase.build import bulk

from lpmace.data import collate, graph_from_configuration, read_configurations
from lpmace.data.extxyz import Configuration
from lpmace.data.padding import bucket, pad_graph
from lpmace.train.loss import weighted_loss


def _diamond(seed: int) -> Configuration:
    """A rattled periodic carbon cell with random references (energy, forces, stress)."""
    rng = np.random.default_rng(seed)
    atoms = bulk("C", "diamond", a=3.57, cubic=True)
    atoms.rattle(0.05, seed=seed)
    n = len(atoms)
    return Configuration(numbers=atoms.numbers.astype(np.int64), positions=atoms.positions, cell=atoms.cell.array,
                         pbc=np.array([True] * 3), energy=float(rng.normal()), forces=rng.normal(size=(n, 3)),
                         stress=rng.normal(size=(3, 3)) * 0.01)


def _loss_and_gradients(model, graph, stress: bool):
    model.zero_grad(set_to_none=True)
    out = model(graph, compute_stress=stress, training=True)
    loss = weighted_loss(out, graph, energy_weight=1.0, forces_weight=100.0, stress_weight=10.0 if stress else 0.0)
    loss.backward()
    grads = {k: p.grad.clone() for k, p in model.named_parameters() if p.grad is not None}
    return out, loss.detach(), grads


def test_buckets_at_32_sizes_per_octave():
    # hand-derived: 4098 has 13 bits, so steps of 2^(13 - 6) = 128 and 33 · 128 = 4224;
    # 215,572 has 18 bits, steps of 4096, 53 · 4096 = 217,088
    assert [bucket(n, 32) for n in (1, 2, 15, 63, 64, 65, 100, 4098, 215_572)] == \
        [1, 2, 15, 63, 64, 66, 100, 4224, 217_088]
    for n in range(1, 50_000, 97):
        assert n <= bucket(n, 32) <= n * 33 / 32 and bucket(n, 32) <= bucket(n)
    with pytest.raises(ValueError, match="power of two"):
        bucket(100, 12)


@pytest.mark.parametrize("kind,per_octave", [("molecules", 8), ("crystals with stress", 8), ("molecules", 32)])
def test_a_padded_batch_gives_the_unpadded_predictions_loss_and_gradients(make_model, bpa_test_path, kind, per_octave):
    model = make_model(dtype=torch.float64)
    if kind == "molecules":
        configs = read_configurations(bpa_test_path, index=":3" if per_octave == 8 else ":2")  # e not a bucket
    else:
        configs = [_diamond(0), _diamond(1)]
    graph = collate([graph_from_configuration(c, model.config.r_max) for c in configs])
    stress = kind != "molecules"
    padded = pad_graph(graph, model.config.r_max, per_octave)
    n, e, g = graph.num_atoms, graph.num_edges, graph.num_graphs
    assert padded.num_atoms == bucket(n + 2, per_octave) and padded.num_edges == bucket(e, per_octave) > e
    assert padded.num_graphs == g + 1
    assert padded.has_energy.tolist() == [True] * g + [False] and padded.has_forces.tolist()[-1] is False

    out, loss, grads = _loss_and_gradients(model, graph, stress)
    out_p, loss_p, grads_p = _loss_and_gradients(model, padded, stress)
    assert torch.allclose(out_p["energy"][:g], out["energy"], rtol=1e-12, atol=1e-12)
    assert torch.allclose(out_p["forces"][:n], out["forces"], rtol=1e-10, atol=1e-12)
    assert torch.equal(out_p["forces"][n:], torch.zeros_like(out_p["forces"][n:]))  # dummies feel nothing
    if stress:
        assert torch.allclose(out_p["stress"][:g], out["stress"], rtol=1e-10, atol=1e-12)
    assert loss > 0 and torch.allclose(loss_p, loss, rtol=1e-12, atol=0)
    assert grads.keys() == grads_p.keys() and len(grads) > 5
    for k in grads:
        assert torch.allclose(grads_p[k], grads[k], rtol=1e-9, atol=1e-12), k


def test_a_batch_without_reference_flags_gets_them_for_its_real_structures(make_model, bpa_test_path):
    model = make_model(dtype=torch.float64)
    graph = collate([graph_from_configuration(c, model.config.r_max)
                     for c in read_configurations(bpa_test_path, index=":2")])
    graph.has_energy = graph.has_forces = None  # e.g. a hand-built batch
    padded = pad_graph(graph, model.config.r_max)
    assert padded.has_energy.tolist() == padded.has_forces.tolist() == [True, True, False]
    assert padded.has_stress.tolist() == [False, False, False]  # the batch had no stress references
    assert padded.energy[-1] == 0 and torch.equal(padded.forces[graph.num_atoms:],
                                                   torch.zeros_like(padded.forces[graph.num_atoms:]))


def test_padding_copies_nothing_from_the_host(make_model, bpa_test_path):
    """A batch already on the GPU (`lpmace bench`, inference) is padded without a host-to-device copy:
    such a copy of a Python number (an indexed assignment `pos[i, 0] = 2.0`) waits for the device, one
    host sync per training step. Every op is recorded (here on the CPU): no index_put, no scalar lifted
    into a tensor, no value read back."""
    from torch.utils._python_dispatch import TorchDispatchMode

    class Ops(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.names = set()

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            self.names.add(func.overloadpacket.__name__)
            return func(*args, **(kwargs or {}))

    model = make_model(dtype=torch.float64)
    graph = collate([graph_from_configuration(c, model.config.r_max)
                     for c in read_configurations(bpa_test_path, index=":3")])
    with Ops() as ops:
        padded = pad_graph(graph, model.config.r_max)
    assert padded.num_atoms > graph.num_atoms and ops.names  # it padded, and the ops were seen
    assert not ops.names & {"index_put", "index_put_", "lift_fresh", "lift_fresh_copy", "_local_scalar_dense",
                            "item"}, sorted(ops.names)
