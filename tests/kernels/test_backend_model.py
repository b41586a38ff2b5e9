"""The model with backend="triton" (Triton's interpreter on the CPU) against backend="reference":
energies, forces and the parameter gradients of a force loss (the double backward of training)."""

from __future__ import annotations

import pytest
import torch

from lpmace.data import graph_from_configuration, read_configurations


@pytest.fixture
def small_graph(bpa_test_path):
    config = read_configurations(bpa_test_path, index=":1")[0]
    import dataclasses

    few = dataclasses.replace(config, numbers=config.numbers[:7], positions=config.positions[:7],
                              forces=None if config.forces is None else config.forces[:7])
    return graph_from_configuration(few, 4.0)


def _run(model, graph, precision, backend):
    out = model(graph, precision=precision, backend=backend, training=True)
    loss = (out["energy"] ** 2).sum() * 1e-6 + (out["forces"].double() ** 2).sum()
    grads = torch.autograd.grad(loss, list(model.parameters()), allow_unused=True)
    return out["energy"].detach(), out["forces"].detach(), grads


@pytest.mark.parametrize("precision, tolerance", [("fp64", 1e-10), ("fp32", 2e-5)])
def test_triton_backend_matches_reference_with_gradients(monkeypatch, make_model, small_graph, precision, tolerance):
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    model = make_model(torch.float64 if precision == "fp64" else torch.float32, correlation=(3, 2))
    e_ref, f_ref, g_ref = _run(model, small_graph, precision, "reference")
    e_tri, f_tri, g_tri = _run(model, small_graph, precision, "triton")
    scale = f_ref.abs().max()
    assert (e_tri - e_ref).abs().max() <= tolerance * e_ref.abs().max()
    assert (f_tri - f_ref).abs().max() <= tolerance * scale
    for name, a, b in zip([n for n, _ in model.named_parameters()], g_ref, g_tri):
        if a is None:
            assert b is None or (b == 0).all(), name
            continue
        assert (a - b).abs().max() <= 10 * tolerance * a.abs().max() + 1e-300, name


def test_backend_is_not_part_of_the_state_dict(make_model):
    model = make_model()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    model.backend = "triton"
    assert model.state_dict().keys() == before.keys()
    assert all(torch.equal(model.state_dict()[k], v) for k, v in before.items())


def test_calculator_and_trainer_check_the_backend(make_model, tmp_path):
    from lpmace.calculator import Calculator
    from lpmace.errors import InputError
    from lpmace.train import load_train_config

    assert Calculator(make_model()).backend == "reference"  # auto on a CPU
    with pytest.raises(InputError, match="backend must be one of"):
        Calculator(make_model(), backend="fast")
    assert load_train_config(None, ("backend=triton",)).backend == "triton"
