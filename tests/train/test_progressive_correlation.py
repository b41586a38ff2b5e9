"""Progressive correlation order: continuity at the switch, gradients and optimizer state of the
inactive weights, the schedule's epochs, resume, config errors, and the experiment's rows."""

from __future__ import annotations

import dataclasses
import json
import math

import pytest
import torch
from small_training import small_config

from lpmace.backends import use
from lpmace.data import graph_from_configuration, read_configurations
from lpmace.errors import InputError
from lpmace.io import load
from lpmace.model import MACE
from lpmace.train import Trainer
from lpmace.train.correlation import contraction_weights_above, set_correlation
from lpmace.train.ema import EMA


@pytest.fixture
def small_graph(bpa_test_path):
    config = read_configurations(bpa_test_path, index=":1")[0]
    few = dataclasses.replace(config, numbers=config.numbers[:7], positions=config.positions[:7],
                              forces=config.forces[:7])
    return graph_from_configuration(few, 4.0)


def _step(model, graph, optimizer, ema):
    optimizer.zero_grad(set_to_none=True)
    out = use(model, "reference")(graph, training=True)
    ((out["forces"] - graph.forces) ** 2).sum().backward()
    optimizer.step()
    ema.update(model)


def _energy_forces(model, graph, backend):
    out = use(model, backend)(graph)
    return out["energy"].detach(), out["forces"].detach()


def _assert_same(a, b, tolerance=1e-12):
    (e_a, f_a), (e_b, f_b) = a, b
    assert (e_a - e_b).abs().max() <= tolerance * e_a.abs().max()
    assert (f_a - f_b).abs().max() <= tolerance * f_a.abs().max()


@pytest.mark.parametrize("backend", ["reference", "triton"])
def test_raising_the_order_leaves_energies_unchanged_at_the_switch(make_model, small_graph, backend, monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    model = make_model(torch.float64, correlation=(3, 3))
    ema, optimizer = EMA(model, 0.99), torch.optim.Adam(model.parameters(), lr=0.01, amsgrad=True)
    random_orders = _energy_forces(model, small_graph, "reference")
    set_correlation(model, 1, ema=ema, optimizer=optimizer)
    assert not torch.allclose(_energy_forces(model, small_graph, "reference")[1], random_orders[1])
    for nu in (2, 3):
        for _ in range(2):  # the orders that are active now move away from where they were
            _step(model, small_graph, optimizer, ema)
        before = _energy_forces(model, small_graph, backend)
        with ema.applied(model):
            before_ema = _energy_forces(model, small_graph, "reference")
        set_correlation(model, nu, ema=ema, optimizer=optimizer)
        _assert_same(before, _energy_forces(model, small_graph, backend))
        with ema.applied(model):
            _assert_same(before_ema, _energy_forces(model, small_graph, "reference"))
    # the weights of the last order raised are live: one step moves them and the function
    _step(model, small_graph, optimizer, ema)
    assert all(bool(w.abs().sum() > 0) for w in contraction_weights_above(model, 2).values() if w.numel())
    assert not torch.allclose(_energy_forces(model, small_graph, "reference")[1], before[1])


def test_both_backends_leave_out_the_orders_above_the_active_one(make_model, small_graph, monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    model = make_model(torch.float64, correlation=(3, 3))
    full = _energy_forces(model, small_graph, "reference")
    for product in model.products:
        product.contraction.active_correlation = 2  # by hand: the order-3 weights stay random
    reference = _energy_forces(model, small_graph, "reference")
    _assert_same(reference, _energy_forces(model, small_graph, "triton"), 1e-10)
    assert not torch.allclose(reference[1], full[1])
    zeroed = make_model(torch.float64, correlation=(3, 3))  # same seed, all orders, order-3 weights zero
    with torch.no_grad():
        for w in contraction_weights_above(zeroed, 2).values():
            w.zero_()
    _assert_same(reference, _energy_forces(zeroed, small_graph, "reference"))


def test_inactive_weights_get_no_gradient_and_no_optimizer_state(make_model, small_graph):
    model = make_model(torch.float64, correlation=(3, 3))
    ema, optimizer = EMA(model, 0.99), torch.optim.Adam(model.parameters(), lr=0.01, amsgrad=True, weight_decay=1e-3)
    set_correlation(model, 1, ema=ema, optimizer=optimizer)
    inactive = contraction_weights_above(model, 1)
    assert inactive and all(bool((w == 0).all()) for w in inactive.values())
    for _ in range(2):
        _step(model, small_graph, optimizer, ema)
    for name, w in inactive.items():
        assert w.grad is None and w not in optimizer.state, name
        assert bool((w == 0).all()) and bool((ema.shadow[name] == 0).all()), name
    # a model built from the saved weights (all orders active) computes the same function
    rebuilt = MACE(model.config).to(torch.float64)
    rebuilt.load_state_dict(model.state_dict())
    _assert_same(_energy_forces(model, small_graph, "reference"), _energy_forces(rebuilt, small_graph, "reference"))
    # raised: the new weights start their AMSGrad state at the first step after the switch
    set_correlation(model, 2, ema=ema, optimizer=optimizer)
    _step(model, small_graph, optimizer, ema)
    raised = {k: w for k, w in inactive.items() if k not in contraction_weights_above(model, 2)}
    assert raised
    for name, w in raised.items():
        if w.numel():
            state = optimizer.state[w]
            assert float(state["step"]) == 1 and bool((state["max_exp_avg_sq"] > 0).any()), name
    with pytest.raises(InputError, match="correlation order 4"):
        set_correlation(model, 4)


def _rows(path):
    return [json.loads(line) for line in (path / "run" / "log.jsonl").read_text().splitlines()]


def test_schedule_raises_the_order_at_its_epoch_and_survives_resume(tmp_path):
    schedule = ("correlation_schedule={3: 2}",)  # SMALL has correlation 2: ν = 1 for epochs 1-2
    seen = []

    def watch(trainer, row):
        above = contraction_weights_above(trainer.model, 1)
        seen.append((row["epoch"], all(bool((w == 0).all()) and w not in trainer.optimizer.state
                                       for w in above.values())))

    whole = Trainer(small_config(tmp_path / "whole", "epochs=4", *schedule), log=lambda m: None, on_epoch=watch)
    assert whole.correlation == 1
    whole.run()
    assert [r["correlation"] for r in _rows(tmp_path / "whole")] == [1, 1, 2, 2]
    assert seen == [(1, True), (2, True), (3, False), (4, False)]
    # stopped before the switch, resumed across it, stopped after it and resumed again
    messages = []
    Trainer(small_config(tmp_path / "parts", "epochs=2", *schedule), log=lambda m: None).run()
    for epochs, order in ((3, 1), (4, 2)):
        resumed = Trainer(small_config(tmp_path / "parts", f"epochs={epochs}", *schedule), resume=True,
                          log=messages.append)
        assert resumed.correlation == order
        resumed.run()
    assert "epoch 3: correlation order 1 -> 2" in messages
    assert [r["correlation"] for r in _rows(tmp_path / "parts")] == [1, 1, 2, 2]
    a = load(tmp_path / "whole" / "run" / "model.safetensors").state_dict()
    b = load(tmp_path / "parts" / "run" / "model.safetensors").state_dict()
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=1e-6, atol=1e-7)


def test_model_file_saved_before_the_last_order_has_zero_weights_there(tmp_path):
    trainer = Trainer(small_config(tmp_path, "epochs=1", "correlation_schedule={0: 1, 5: 2}"), log=lambda m: None)
    trainer.run()
    saved = load(tmp_path / "run" / "model.safetensors")
    above = contraction_weights_above(saved, 1)
    assert above and all(bool((w == 0).all()) for w in above.values())
    graphs = trainer.data.valid[:2]
    with trainer.ema.applied(trainer.model):
        expected = [trainer.model(g)["energy"] for g in graphs]
    for g, e in zip(graphs, expected, strict=True):
        torch.testing.assert_close(saved(g)["energy"], e, rtol=1e-12, atol=1e-9)


@pytest.mark.parametrize("schedule, match", [
    ("2", "correlation_schedule must be a mapping"),
    ("{-1: 2}", "correlation_schedule epoch -1 must be an integer >= 0"),
    ("{2: 3}", r"order 3 must be an integer in 1..2 \(model.correlation\)"),
    ("{2: 0}", "order 0 must be"),
    ("{2: 1.5}", "order 1.5 must be"),
    ("{1: 2, 4: 1}", "the order must increase"),
    ("{0: 1, 1: 2}", "epochs 0 and 1 both name the first epoch"),
])
def test_bad_correlation_schedules_are_refused(tmp_path, schedule, match):
    with pytest.raises(InputError, match=match):
        small_config(tmp_path, f"correlation_schedule={schedule}")


def test_quick_experiment_rows():
    from lpmace.bench import progressive_correlation as experiment

    result = experiment.run(device="cpu", quick=True, progress=False)
    rows = {row["run"]: row for row in result["rows"]}
    assert set(rows) == {"fixed", "progressive"} and result["settings"] == experiment.QUICK
    assert all(set(experiment.COLUMNS) == set(row) for row in rows.values())
    for row in rows.values():
        assert row["status"] == "ok" and row["epochs"] == experiment.QUICK["epochs"]
        for key in ("train_time_s", "valid_energy_rmse_mev_per_atom", "valid_force_rmse_mev_per_A",
                    "test_energy_rmse_mev_per_atom", "test_force_rmse_mev_per_A"):
            assert math.isfinite(row[key]) and row[key] > 0, key
        times, errors = zip(*row["curve"], strict=True)
        assert list(times) == sorted(times) and len(times) == row["epochs"]
        assert errors[-1] < errors[0]  # both learn
        assert errors[-1] == pytest.approx(row["test_force_rmse_mev_per_A"], rel=1e-6)  # same EMA model
    first_to_end = min(rows.values(), key=lambda row: row["curve"][-1][0])
    assert first_to_end["force_rmse_at_common_time_mev_per_A"] == pytest.approx(first_to_end["curve"][-1][1])
    assert all(math.isfinite(row["force_rmse_at_common_time_mev_per_A"]) for row in rows.values())
    # the orders each run trained at, from its log: ν = 3 throughout, or 1, 2 and 3 in turn
    assert set(rows["fixed"]["seconds_per_epoch"]) == {"3"}
    assert list(rows["progressive"]["seconds_per_epoch"]) == ["1", "2", "3"]


def test_schedule_with_low_rank_species_is_refused():
    from lpmace.errors import InputError
    from lpmace.train import load_train_config

    with pytest.raises(InputError, match="species_rank"):
        load_train_config(None, ("correlation_schedule={2: 3}", "model={correlation: 3, species_rank: 2}"))
