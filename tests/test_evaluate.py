"""evaluate / force_error_against / parity_plot: metrics agree with a plain per-structure computation."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch

from lpmace.data import Configuration, graph_from_configuration, read_configurations
from lpmace.errors import InputError
from lpmace.evaluate import Metrics, evaluate, force_error_against
from lpmace.plots import parity_plot


@pytest.fixture
def graphs(model, bpa_test_path):
    configs = read_configurations(bpa_test_path, index=":11")
    return [graph_from_configuration(c, model.config.r_max) for c in configs]


def _one_at_a_time(model, graphs, precision=None, stress=False):
    """Model outputs collected one structure at a time (float64 numpy), independent of evaluate."""
    out = []
    for g in graphs:
        o = model(g, precision=precision, compute_stress=stress)
        out.append({k: None if v is None else v.detach().double().numpy() for k, v in o.items()})
    return out


def _rmse(x):
    return float(np.sqrt(np.mean(np.square(x))))


def _mae(x):
    return float(np.mean(np.abs(x)))


def _without(graph, label):
    return dataclasses.replace(graph, **{f"has_{label}": torch.tensor([False])})


def test_metrics_match_a_plain_per_structure_computation(model, graphs):
    # Structure 2 has no energy and structure 5 no forces: each metric must skip exactly those.
    graphs = list(graphs)
    graphs[2], graphs[5] = _without(graphs[2], "energy"), _without(graphs[5], "forces")
    outs = _one_at_a_time(model, graphs)
    e_idx = [i for i in range(len(graphs)) if i != 2]
    f_idx = [i for i in range(len(graphs)) if i != 5]
    de = np.array([outs[i]["energy"][0] - graphs[i].energy.item() for i in e_idx])
    n = np.array([graphs[i].num_atoms for i in e_idx])
    df = np.concatenate([outs[i]["forces"] - graphs[i].forces.numpy() for i in f_idx])

    m = evaluate(model, graphs, batch_size=4)  # 4, 4, 3: batches of unequal size

    assert (m.n_configs, m.n_energy, m.n_forces, m.n_stress) == (11, 10, 10, 0)
    assert m.n_atoms == sum(g.num_atoms for g in graphs)
    assert m.precision == "fp64"
    np.testing.assert_allclose(m.energy_rmse_mev_per_atom, 1000 * _rmse(de / n), rtol=1e-10)
    np.testing.assert_allclose(m.energy_mae_mev_per_atom, 1000 * _mae(de / n), rtol=1e-10)
    np.testing.assert_allclose(m.energy_rmse_mev, 1000 * _rmse(de), rtol=1e-10)
    np.testing.assert_allclose(m.energy_mae_mev, 1000 * _mae(de), rtol=1e-10)
    np.testing.assert_allclose(m.force_rmse_mev_per_A, 1000 * _rmse(df), rtol=1e-10)
    np.testing.assert_allclose(m.force_mae_mev_per_A, 1000 * _mae(df), rtol=1e-10)
    assert m.stress_rmse_mev_per_A3 is None and m.stress_mae_mev_per_A3 is None
    # parity arrays: float64, only the labelled structures, in input order
    assert m.energy_pred.dtype == np.float64 and m.forces_pred.dtype == np.float64
    np.testing.assert_allclose(m.energy_pred, [outs[i]["energy"][0] for i in e_idx], rtol=1e-12)
    np.testing.assert_allclose(m.energy_per_atom_ref, [graphs[i].energy.item() / graphs[i].num_atoms for i in e_idx])
    assert m.forces_pred.shape == m.forces_ref.shape == (sum(graphs[i].num_atoms for i in f_idx), 3)


def test_stress_metrics_for_periodic_structures(model, bpa_test_path):
    rng = np.random.default_rng(0)
    configs = []
    for k, c in enumerate(read_configurations(bpa_test_path, index=":3")):
        has_stress = k != 1
        configs.append(Configuration(
            numbers=c.numbers, positions=c.positions + 4.5, cell=np.diag([9.0, 9.5, 10.0]), pbc=[True] * 3,
            energy=c.energy, forces=c.forces, stress=rng.normal(0, 1e-3, (3, 3)) if has_stress else None,
        ))
    graphs = [graph_from_configuration(c, model.config.r_max) for c in configs]
    outs = _one_at_a_time(model, graphs, stress=True)
    ds = np.stack([outs[i]["stress"][0] - configs[i].stress for i in (0, 2)])

    m = evaluate(model, graphs, batch_size=2)

    assert m.n_stress == 2 and m.stress_pred.shape == (2, 3, 3)
    np.testing.assert_allclose(m.stress_rmse_mev_per_A3, 1000 * _rmse(ds), rtol=1e-9)
    np.testing.assert_allclose(m.stress_mae_mev_per_A3, 1000 * _mae(ds), rtol=1e-9)


def test_own_predictions_as_references_give_zero_error(model, graphs):
    labelled = []
    for g, o in zip(graphs, _one_at_a_time(model, graphs)):
        labelled.append(dataclasses.replace(g, energy=torch.from_numpy(o["energy"]),
                                            forces=torch.from_numpy(o["forces"])))
    # batch_size=1 repeats the reference computation bit for bit (batched neighbour sums may differ
    # in the last bit, ~1e-18 eV/Å)
    m = evaluate(model, labelled, batch_size=1)
    assert m.energy_rmse_mev_per_atom == m.energy_rmse_mev == m.force_rmse_mev_per_A == 0.0
    assert m.energy_mae_mev_per_atom == m.force_mae_mev_per_A == 0.0


def test_precision_is_used_and_reported(make_model, graphs):
    model32 = make_model(torch.float32)
    default, low = evaluate(model32, graphs, batch_size=8), evaluate(model32, graphs, precision="bf16-mixed")
    assert (default.precision, low.precision) == ("fp32", "bf16-mixed")
    assert low.force_rmse_mev_per_A != default.force_rmse_mev_per_A
    np.testing.assert_allclose(low.force_rmse_mev_per_A, default.force_rmse_mev_per_A, rtol=0.05)


def test_to_dict_is_json_with_units_in_the_keys(model, graphs):
    d = evaluate(model, graphs[:3]).to_dict()
    assert json.loads(json.dumps(d)) == d
    for key in ("energy_rmse_mev_per_atom", "energy_mae_mev_per_atom", "energy_rmse_mev", "energy_mae_mev",
                "force_rmse_mev_per_A", "force_mae_mev_per_A", "stress_rmse_mev_per_A3", "n_configs"):
        assert key in d
    assert not any(isinstance(v, np.ndarray) for v in d.values())


def test_works_inside_no_grad_and_leaves_grad_mode_alone(model, graphs):
    outside = evaluate(model, graphs[:4])
    with torch.no_grad():
        inside = evaluate(model, graphs[:4])
    assert torch.is_grad_enabled()
    assert inside.force_rmse_mev_per_A == outside.force_rmse_mev_per_A > 0


def test_progress_bar_on_a_terminal(model, graphs, monkeypatch):
    import io
    import sys

    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    monkeypatch.setattr(sys, "stderr", Terminal())
    evaluate(model, graphs[:3], progress=True)
    assert "config" in sys.stderr.getvalue()


def test_bad_input_is_an_input_error(model, graphs):
    with pytest.raises(InputError, match="no structures"):
        evaluate(model, [])
    with pytest.raises(InputError, match="fp8"):
        evaluate(model, graphs, precision="fp8")
    with pytest.raises(InputError, match="batch_size"):
        evaluate(model, graphs, batch_size=0)


def test_force_error_against_the_same_weights(make_model, graphs):
    model32 = make_model(torch.float32)
    same = force_error_against(model32, graphs[:4], "fp64")
    assert same.relative_force_rmse == 0.0 and same.max_abs_force_error == 0.0
    rel, max_abs = force_error_against(model32, graphs[:4], "bf16-mixed", batch_size=3)
    assert 0 < rel < 0.1 and max_abs > 0
    # against a plain computation
    low, ref = _one_at_a_time(model32, graphs[:4], "bf16-mixed"), _one_at_a_time(model32, graphs[:4], "fp64")
    diff = np.concatenate([a["forces"] - b["forces"] for a, b in zip(low, ref)])
    scale = _rmse(np.concatenate([b["forces"] for b in ref]))
    np.testing.assert_allclose(rel, _rmse(diff) / scale, rtol=1e-6)
    np.testing.assert_allclose(max_abs, np.abs(diff).max(), rtol=1e-6)


def test_parity_plot_writes_a_png(model, graphs, tmp_path):
    m = evaluate(model, graphs[:3])
    path = parity_plot(m, tmp_path / "parity.png", "tiny model")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert [p.name for p in tmp_path.iterdir()] == ["parity.png"]
    # no labels at all still draws (empty panels say so)
    unlabelled = [_without(_without(g, "energy"), "forces") for g in graphs[:2]]
    empty = evaluate(model, unlabelled)
    assert empty.n_energy == empty.n_forces == 0 and empty.energy_rmse_mev_per_atom is None
    parity_plot(empty, tmp_path / "empty.png")
    assert (tmp_path / "empty.png").stat().st_size > 0


def test_metrics_is_a_dataclass_with_repr_without_arrays(model, graphs):
    m = evaluate(model, graphs[:2])
    assert isinstance(m, Metrics) and "forces_pred" not in repr(m)


def test_progress_bar_stays_off_when_stderr_is_not_a_terminal(model, graphs, capsys):
    evaluate(model, graphs[:2], progress=True)  # capsys: stderr is not a TTY, as in a log file or a pipe
    assert capsys.readouterr().err == ""
