"""`training_step`: the one step of the trainer, the bench and the scripts."""

import math

import torch

from lpmace.data import collate, graph_from_configuration, read_configurations
from lpmace.precision import resolve_policy
from lpmace.train.step import training_step


def _setup(make_model, bpa_test_path):
    model = make_model(dtype=torch.float32)
    graph = collate([graph_from_configuration(c, model.config.r_max)
                     for c in read_configurations(bpa_test_path, index=":2")])
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    return model, graph, optimizer, scaler


def _forces_loss(out, graph):
    return ((out["forces"].double() - graph.forces) ** 2).mean()


def test_a_finite_step_moves_the_weights_and_reports_the_loss(make_model, bpa_test_path):
    model, graph, optimizer, scaler = _setup(make_model, bpa_test_path)
    before = [p.detach().clone() for p in model.parameters()]
    step = training_step(model, graph, resolve_policy("fp32"), optimizer, scaler, _forces_loss, clip_grad=10.0)
    assert step.applied and math.isfinite(step.loss) and step.loss == float(step.local_loss) > 0
    assert step.out["forces"].shape == (graph.num_atoms, 3)
    assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters()))


def test_a_non_finite_loss_skips_the_step_and_leaves_the_weights(make_model, bpa_test_path):
    model, graph, optimizer, scaler = _setup(make_model, bpa_test_path)
    before = [p.detach().clone() for p in model.parameters()]
    step = training_step(model, graph, resolve_policy("fp32"), optimizer, scaler,
                         lambda out, g: _forces_loss(out, g) * math.inf)
    assert not step.applied and not math.isfinite(step.loss)
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))
    assert all(p.grad is None for p in model.parameters())
