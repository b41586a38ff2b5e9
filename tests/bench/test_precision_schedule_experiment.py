"""`lpmace bench --workloads precision-schedule --quick`: four runs end to end through the CLI (one
run, shared by the tests: about 10 s on a CPU), the schedule switching at the epoch chosen from the
bf16-mixed run, the rows in the report, and the switch epoch rule."""

from __future__ import annotations

import json
import math

import pytest

from lpmace.bench import precision_schedule as experiment
from lpmace.bench.runner import EXPERIMENTS
from lpmace.cli import main


@pytest.fixture(scope="module")
def quick(tmp_path_factory):
    out = tmp_path_factory.mktemp("precision_schedule")
    assert main(["bench", "--workloads", "precision-schedule", "--quick", "--device", "cpu", "--no-progress",
                 "--out", str(out)]) == 0
    results = json.loads((out / "results.json").read_text())
    assert not [r for r in results["skipped"] if r["section"] == "precision_schedule"], results["skipped"]
    return {**results["precision_schedule"], "report": (out / "report.md").read_text()}


def test_quick_run_has_four_rows_with_finite_numbers(quick):
    rows = {row["run"]: row for row in quick["rows"]}
    assert list(rows) == ["fp32", "bf16-mixed", "schedule", "layerwise"]
    assert all(set(experiment.COLUMNS) == set(row) for row in rows.values())
    assert quick["settings"]["epochs"] == experiment.QUICK["epochs"] == 6
    for name, row in rows.items():
        assert row["status"] == "ok" and row["epochs"] == experiment.QUICK["epochs"], name
        for key in ("train_time_s", "valid_energy_rmse_mev_per_atom", "valid_force_rmse_mev_per_A",
                    "test_energy_rmse_mev_per_atom", "test_force_rmse_mev_per_A"):
            assert math.isfinite(row[key]) and row[key] > 0, (name, key)
        times, errors = zip(*row["curve"], strict=True)
        assert list(times) == sorted(times) and len(times) == row["epochs"] and times[-1] == row["train_time_s"]
        assert errors[-1] < errors[0], name  # every run learns
        assert all(math.isfinite(s) and s > 0 for s in row["seconds_per_epoch"].values()), name
    for name in ("fp32", "bf16-mixed", "layerwise"):
        assert rows[name]["switch_epoch"] is None
        assert rows[name]["epochs_by_precision"] == {name: experiment.QUICK["epochs"]}
    # both end in fp32, and the final test metrics are the EMA model's in fp32: the curve's last point
    for name in ("fp32", "schedule"):
        assert rows[name]["curve"][-1][1] == pytest.approx(rows[name]["test_force_rmse_mev_per_A"], rel=1e-6)
    fp32 = rows["fp32"]
    assert fp32["time_to_fp32_final_s"] is not None and fp32["time_to_fp32_final_s"] <= fp32["train_time_s"]
    first_to_end = min(rows.values(), key=lambda row: row["curve"][-1][0])
    assert first_to_end["force_rmse_at_common_time_mev_per_A"] == pytest.approx(first_to_end["curve"][-1][1])


def test_schedule_switches_at_the_epoch_chosen_from_the_bf16_run(quick):
    rows = {row["run"]: row for row in quick["rows"]}
    switch = experiment.switch_epoch(rows["bf16-mixed"]["epochs"])
    schedule = rows["schedule"]
    assert schedule["switch_epoch"] == switch == 5  # 6 epochs: 4 in bf16-mixed, then fp32
    # the per-epoch precisions the trainer logged, counted in the order first used
    assert list(schedule["epochs_by_precision"].items()) == [("bf16-mixed", switch - 1),
                                                               ("fp32", schedule["epochs"] - switch + 1)]
    assert list(schedule["seconds_per_epoch"]) == ["bf16-mixed", "fp32"]
    assert schedule["precision"] == "bf16-mixed → fp32 (epoch 5)"
    # until the switch the schedule is the bf16-mixed run (same seed, data and precision)
    for (_, a), (_, b) in zip(schedule["curve"][:switch - 1], rows["bf16-mixed"]["curve"][:switch - 1], strict=True):
        assert a == pytest.approx(b, rel=1e-9)


def test_report_shows_every_run_with_its_epochs_per_precision(quick):
    report = quick["report"]
    assert "## Precision schedules" in report and "docs/experiments/precision_schedule.md" in report
    assert "| schedule | bf16-mixed → fp32 (epoch 5) | 6 | bf16-mixed 4, fp32 2 |" in report
    for run in ("fp32", "bf16-mixed", "layerwise"):
        assert f"| {run} | {run} | 6 | {run} 6 |" in report


@pytest.mark.parametrize("low_epochs, switch", [(0, 2), (1, 2), (2, 2), (3, 3), (4, 4), (6, 5), (9, 7), (30, 21)])
def test_switch_epoch_leaves_at_least_one_epoch_of_each(low_epochs, switch):
    assert experiment.switch_epoch(low_epochs) == switch


def test_registered_and_misspelt_names_refused(tmp_path, capsys):
    assert "precision-schedule" in EXPERIMENTS
    assert main(["bench", "--workloads", "precision-schedules", "--quick", "--out", str(tmp_path / "o")]) == 2
    assert "precision-schedules" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()
