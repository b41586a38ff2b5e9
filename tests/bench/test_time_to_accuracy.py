"""`lpmace.bench.time_to_accuracy`: W3 curves from real (tiny, CPU) training runs, and mace-torch's log."""

from __future__ import annotations

import itertools
import json
import math
import os
import pathlib
import sys

import ase.io
import pytest

from lpmace import datasets
from lpmace.bench import time_to_accuracy as tta
from lpmace.bench.time_to_accuracy import parse_mace_log, time_to_accuracy
from shared_data import shared_dir

RUN_KEYS = {"code", "backend", "precision", "metric", "curve", "time_to_target_s", "final_force_rmse_mev_per_A",
            "status"}
# A ~1.6k-parameter MACE: one epoch of 18 molecules takes ~0.1 s on a 2-core CPU.
TINY = ("model.channels=8", "model.max_L=0", "model.max_ell=1", "model.correlation=2", "model.radial_mlp=[8]",
        "model.num_bessel=4", "model.readout_mlp=4", "batch_size=5")


@pytest.fixture
def small_train(tmp_path) -> pathlib.Path:
    """The first 20 embedded 3BPA training configurations (18 train / 2 valid after the split)."""
    path = tmp_path / "train.xyz"
    ase.io.write(path, ase.io.read(datasets.path("3bpa/train_300K.xyz"), index=":20"), format="extxyz")
    return path


def _check_curve(run: dict, target: float) -> None:
    assert set(run) >= RUN_KEYS
    curve = run["curve"]
    assert curve, run
    times = [p["time_s"] for p in curve]
    assert all(math.isfinite(t) and t > 0 for t in times)
    assert all(a < b for a, b in itertools.pairwise(times))
    assert [p["epoch"] for p in curve] == list(range(1, len(curve) + 1))
    assert all(isinstance(p["force_rmse_mev_per_A"], float) and math.isfinite(p["force_rmse_mev_per_A"])
               for p in curve)
    assert run["final_force_rmse_mev_per_A"] == curve[-1]["force_rmse_mev_per_A"]
    reached = [p["time_s"] for p in curve if p["force_rmse_mev_per_A"] <= target]
    assert run["time_to_target_s"] == (reached[0] if reached else None)


def test_lpmace_curves_per_precision(small_train, tmp_path):
    # epochs=3 ends the runs before the 60 s budget: three points each, however loaded the machine is.
    lines = []
    result = time_to_accuracy(["fp32", "bf16-mixed"], device="cpu", budget_s=60.0, out_dir=tmp_path / "w3",
                              overrides=(f"train_file={small_train}", *TINY, "epochs=3"), test_limit=10,
                              target_mev_per_A=1e9, progress=lines.append)
    assert set(result) == {"target_mev_per_A", "budget_s", "runs"}
    assert result["target_mev_per_A"] == 1e9 and result["budget_s"] == 60.0
    assert [r["precision"] for r in result["runs"]] == ["fp32", "bf16-mixed"]
    for run in result["runs"]:
        assert set(run) == RUN_KEYS
        assert (run["code"], run["backend"], run["metric"], run["status"]) == ("lpmace", "reference",
                                                                               "test force RMSE", "ok")
        _check_curve(run, 1e9)
        assert len(run["curve"]) == 3
        assert run["time_to_target_s"] == run["curve"][0]["time_s"]  # every RMSE is below 1e9 meV/Å
        log = (tmp_path / "w3" / run["precision"] / "log.jsonl").read_text().splitlines()
        assert [json.loads(row)["train_time_s"] for row in log] == [p["time_s"] for p in run["curve"]]
    fp32, bf16 = (run["curve"] for run in result["runs"])
    # Same seed, same data: bf16-mixed follows fp32 to ~1% in the first epochs, not to the last digit.
    assert fp32[-1]["force_rmse_mev_per_A"] == pytest.approx(bf16[-1]["force_rmse_mev_per_A"], rel=0.05)
    assert fp32[-1]["force_rmse_mev_per_A"] != bf16[-1]["force_rmse_mev_per_A"]
    assert len(lines) == 2 and lines[0].startswith("time-to-accuracy lpmace fp32: 3 epochs, final ")


def test_unreached_target_and_mace_torch_not_installed(small_train, tmp_path, monkeypatch):
    monkeypatch.setattr(tta.shutil, "which", lambda *args, **kwargs: None)
    lines = []
    result = time_to_accuracy(["fp32"], device="cpu", budget_s=0.5, out_dir=tmp_path / "w3",
                              overrides=(f"train_file={small_train}", *TINY), test_limit=5,
                              target_mev_per_A=1e-3, compare_mace_torch=True, progress=lines.append)
    lpmace_run, mace_run = result["runs"]
    _check_curve(lpmace_run, 1e-3)
    assert lpmace_run["time_to_target_s"] is None
    # max_time (the budget) is checked between epochs: the run ends with the first epoch past it.
    times = [p["time_s"] for p in lpmace_run["curve"]]
    assert times[-1] >= 0.5 and all(t < 0.5 for t in times[:-1])
    assert mace_run["status"] == "not run: mace_run_train not installed"
    assert (mace_run["code"], mace_run["backend"], mace_run["precision"], mace_run["metric"]) == (
        "mace-torch", "e3nn", "fp32", "valid force RMSE")
    assert mace_run["curve"] == [] and mace_run["time_to_target_s"] is None
    assert mace_run["final_force_rmse_mev_per_A"] is None and "Initial:" in mace_run["note"]
    assert lines[-1] == "time-to-accuracy mace-torch fp32: not run: mace_run_train not installed"


def test_parse_mace_log_reads_the_h100_anchor():
    lines = (shared_dir("anchors") / "mace_3bpa_fp32_h100.log").read_text().splitlines()
    curve = parse_mace_log(lines)
    # 18 "Epoch N:" lines (N = 0, 2, ..., 34; --eval_interval 2); the error tables after them are not epochs.
    assert [p["epoch"] for p in curve] == list(range(1, 36, 2))
    # Initial at 12:54:52.193; Epoch 0 at 12:55:03.659, RMSE_F= 274.08; Epoch 32 at 12:58:41.222, 32.79;
    # Epoch 34 at 12:58:56.687, 31.84.
    assert curve[0] == {"time_s": 11.466, "epoch": 1, "force_rmse_mev_per_A": 274.08}
    assert curve[16] == {"time_s": 229.029, "epoch": 33, "force_rmse_mev_per_A": 32.79}
    assert curve[-1] == {"time_s": 244.494, "epoch": 35, "force_rmse_mev_per_A": 31.84}


def test_parse_mace_log_formats_and_edge_cases():
    lines = [
        "2026-01-01 23:59:59.000 INFO: Epoch 0: head: Default, loss=1, RMSE_E=1 meV, RMSE_F=  1.00 meV / A",
        "2026-01-01 23:59:59.500 INFO: Initial: head: Default, loss=9, RMSE_E_per_atom= 9.00 meV, RMSE_F= 900.00 meV / A",
        "2026-01-02 00:00:01.250 INFO: Epoch 0: head: Default, loss=2, RMSE_E_per_atom= 5.00 meV, RMSE_F=  50.50 meV / A",
        "| valid_Default |     1769.7   |         31.8     |          3.29     |",
        "2026-01-02 00:00:02.000 INFO: Epoch 1: head: Default, loss=nan, RMSE_E=nan meV, RMSE_F=     nan meV / A",
    ]
    assert parse_mace_log(lines) == [{"time_s": 1.75, "epoch": 1, "force_rmse_mev_per_A": 50.5},
                                     {"time_s": 2.5, "epoch": 2, "force_rmse_mev_per_A": None}]
    assert parse_mace_log(lines[:1] + lines[2:]) == []  # no Initial line: no time origin


# A stand-in mace_run_train: writes its pid, then "Initial:" and one epoch line every 0.05 s (or, if it
# never starts, sleeps for an hour). It writes `finished` only if it reaches its own end, so a run that
# is missing it was ended by time_to_accuracy -- an event, not a clock reading.
FAKE_MACE = """#!{python}
import datetime, os, sys, time
open("pid", "w").write(str(os.getpid()))
say = lambda text: print(datetime.datetime.now().strftime("%Y-%m-%d %H:%M:%S.%f")[:-3] + " INFO: " + text)
if not {starts}:
    time.sleep(3600)
say("Initial: head: Default, loss=1, RMSE_E=1 meV, RMSE_F= 900.00 meV / A")
for epoch in range({epochs}):
    time.sleep(0.05)
    say(f"Epoch {{epoch}}: head: Default, loss=1, RMSE_E=1 meV, RMSE_F= {{100 - epoch:7.2f}} meV / A")
open("finished", "w").close()
sys.exit({code})
"""


@pytest.mark.parametrize(("starts", "epochs", "code", "status", "ended"), [
    (True, 10**6, 0, "ok", True),  # still training at the budget: ended, curve kept
    (True, 3, 0, "ok", False),  # finished before the budget
    (True, 3, 3, "error: mace_run_train exited with code 3: ", False),
    (False, 1, 0, "error: no 'Initial:' line from mace_run_train within 1 s", True),
], ids=["ended-at-budget", "finished", "crashed", "no-start"])
def test_mace_torch_subprocess_is_streamed_and_ended(tmp_path, monkeypatch, starts, epochs, code, status, ended):
    fake = tmp_path / "mace_run_train"
    fake.write_text(FAKE_MACE.format(python=sys.executable, starts=starts, epochs=epochs, code=code))
    fake.chmod(0o755)
    monkeypatch.setattr(tta, "_mace_executable", lambda: str(fake))
    # the start-up limit only matters to the run that never starts; the others get time to start however
    # loaded the machine is
    monkeypatch.setattr(tta, "MACE_STARTUP_LIMIT_S", 60.0 if starts else 1.0)
    result = time_to_accuracy([], device="cpu", budget_s=0.6, out_dir=tmp_path / "w3", target_mev_per_A=98.5,
                              compare_mace_torch=True)
    (run,) = result["runs"]
    assert run["status"].startswith(status), run["status"]
    work = tmp_path / "w3" / "mace-torch-fp32"
    with pytest.raises(ProcessLookupError):  # ended (and reaped), however it stopped
        os.kill(int((work / "pid").read_text()), 0)
    assert (work / "finished").exists() is not ended  # ended by time_to_accuracy, not left to run out
    written = (work / "mace_run_train.out").read_text()
    if not starts:
        assert run["curve"] == [] and "Initial" not in written
        return
    n = min(epochs, len(run["curve"]))
    assert 3 <= n < 20 and written.count("INFO: Epoch ") >= n
    _check_curve(run, 98.5)
    assert [p["force_rmse_mev_per_A"] for p in run["curve"]] == [100.0 - e for e in range(n)]
    assert run["time_to_target_s"] == run["curve"][2]["time_s"]  # 98.0 is the first at or below 98.5


@pytest.mark.slow
def test_mace_torch_runs_the_same_recipe(small_train, tmp_path):
    # epochs=2 ends both codes' runs by themselves (an event), so a loaded machine cannot leave the
    # curve empty; the budget's own ending is tested with the stand-in mace_run_train above.
    result = time_to_accuracy([], device="cpu", budget_s=600.0, out_dir=tmp_path / "w3",
                              overrides=(f"train_file={small_train}", *TINY, "epochs=2"), test_limit=2,
                              target_mev_per_A=1e9, compare_mace_torch=True)
    (run,) = result["runs"]
    assert run["status"] == "ok", run["status"]
    _check_curve(run, 1e9)
    assert [p["epoch"] for p in run["curve"]] == [1, 2]
    out = (tmp_path / "w3" / "mace-torch-fp32" / "mace_run_train.out").read_text()
    assert "8 channels and max_L=0" in out and "correlation order: 2" in out  # the lpmace model's shape
    assert "Batch size: 5" in out and "Using Exponential Moving Average with decay: 0.99" in out
