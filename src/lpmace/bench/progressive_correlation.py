"""Progressive correlation order against a fixed one, W3-style: test force RMSE against training time
on 3BPA under the same training-time budget (issue 6, part 3).

Two runs share data, split, seed, model and budget. "fixed" trains body orders 1..ν_max of the
symmetric contraction from the first epoch; "progressive" trains with ν = 1 and raises ν at the
epochs of its ``correlation_schedule`` (`lpmace.train.correlation`: the new weights start at zero,
so the model's function is continuous at every switch). Each run is one
`lpmace.bench.time_to_accuracy` run in fp32: a fresh Trainer stopped by ``max_time`` (checked
between epochs), its EMA model scored on the test configurations after every epoch outside the
training clock.

`run` returns the `progressive_correlation` section of `lpmace bench`'s results.json: {"settings":
QUICK, FULL_CPU or FULL_GPU, "rows": one per run}; docs/experiments/progressive_correlation.md says
what the rows showed. Rows: schedule, epochs done, training time (s), median seconds per epoch at
each order, final validation and test energy (meV/atom) and force (meV/Å) RMSE of the EMA model, the
time each run first reaches the fixed run's final test force RMSE, and the curve
``[[time_s, test force RMSE], ...]``.
"""

from __future__ import annotations

import statistics
import sys
import tempfile
from pathlib import Path

from lpmace.bench.time_to_accuracy import time_to_accuracy
from lpmace.data import graph_from_configuration, read_configurations
from lpmace.datasets import resolve_path
from lpmace.evaluate import evaluate
from lpmace.io import load

NAME = "progressive_correlation"
TRAIN_FILE = "embedded:3bpa/train_300K.xyz"
TEST_FILE = "embedded:3bpa/test_300K.xyz"

# quick (CI, seconds on a CPU): a tiny model, 6 epochs each (an epoch cap, so that the rows do not depend on
# the machine's load; the budget only guards). full: the same budget for both runs, a few minutes each
# on a 2-core CPU; on a GPU the W3 model (128x0e+128x1o), both runs within 10 minutes.
QUICK = dict(model=("model.channels=8", "model.max_L=0", "model.max_ell=2", "model.radial_mlp=[16]",
                    "model.num_bessel=6", "model.r_max=4.0", "batch_size=4"),
             correlation=3, n_train=40, valid_fraction=0.25, test_limit=20, budget_s=60.0, epochs=6,
             schedule={3: 2, 5: 3})
FULL_CPU = dict(model=("model.channels=32", "model.max_L=1", "model.max_ell=3"), correlation=3, n_train=None,
                valid_fraction=0.1, test_limit=100, budget_s=300.0, epochs=None, schedule={3: 2, 6: 3})
FULL_GPU = dict(FULL_CPU, model=("model.channels=128", "model.max_L=1", "model.max_ell=3"), test_limit=None,
                budget_s=200.0, schedule={6: 2, 11: 3})
COLUMNS = ["run", "schedule", "epochs", "train_time_s", "seconds_per_epoch", "valid_energy_rmse_mev_per_atom",
           "valid_force_rmse_mev_per_A", "test_energy_rmse_mev_per_atom", "test_force_rmse_mev_per_A",
           "time_to_fixed_final_s", "force_rmse_at_common_time_mev_per_A", "status", "curve"]


def schedule_name(schedule: dict | None, top: int) -> str:
    """"ν = 3" for a fixed order; "ν 1 → 2 (epoch 3) → 3 (epoch 5)" for a schedule."""
    if not schedule:
        return f"ν = {top}"
    return "ν 1" + "".join(f" → {nu} (epoch {epoch})" for epoch, nu in schedule.items())


def run(*, device: str, quick: bool, progress: bool, seed: int = 0) -> dict:
    settings = QUICK if quick else FULL_GPU if str(device).startswith("cuda") else FULL_CPU
    report = (lambda line: print(line, file=sys.stderr, flush=True)) if progress else None
    with tempfile.TemporaryDirectory(prefix="lpmace-progressive-") as tmp:
        out = Path(tmp)
        common = common_overrides(settings, seed, out)
        runs = {"fixed": None, "progressive": settings["schedule"]}
        rows = [_one_run(label, schedule, settings, common, device, out / label, report)
                for label, schedule in runs.items()]
    target = rows[0]["test_force_rmse_mev_per_A"]
    common = min((row["curve"][-1][0] for row in rows if row["curve"]), default=None)
    for row in rows:
        row["time_to_fixed_final_s"] = next(
            (t for t, f in row["curve"] if f is not None and target is not None and f <= target), None)
        row["force_rmse_at_common_time_mev_per_A"] = _at_time(row["curve"], common)
    return {"settings": dict(settings), "rows": rows}


def _one_run(label, schedule, settings, common, device, out, report) -> dict:
    overrides = common + ((f"correlation_schedule={schedule}",) if schedule else ())
    result = time_to_accuracy(["fp32"], device=device, budget_s=settings["budget_s"], out_dir=out,
                              overrides=overrides, test_file=TEST_FILE, test_limit=settings["test_limit"],
                              progress=report,
                              # triton on CUDA: "compiled" (auto's choice for training) would compile inside the budget
                              backends=("triton",) if str(device).startswith("cuda") else ("auto",))
    found = result["runs"][0]
    run_dir = out / "fp32"
    log = _log_rows(run_dir / "log.jsonl")
    last = log[-1] if log else {}
    row = {"run": label, "schedule": schedule_name(schedule, settings["correlation"]), "epochs": len(log),
           "train_time_s": last.get("train_time_s"), "seconds_per_epoch": seconds_per_epoch(log, "correlation")}
    return {**row, **run_outcome(last, found, run_dir, settings, device)}


def _at_time(curve: list, time_s: float | None) -> float | None:
    """The curve's force RMSE at `time_s`, linear between its points (the runs' last epochs end at
    different times past the budget, so they are compared at the earlier end); None outside it."""
    points = [(t, f) for t, f in curve if f is not None]
    for (t0, f0), (t1, f1) in zip(points, points[1:], strict=False):
        if t0 <= time_s <= t1:
            return f0 + (f1 - f0) * (time_s - t0) / (t1 - t0) if t1 > t0 else f1
    return points[-1][1] if points and time_s is not None and points[-1][0] == time_s else None


def _log_rows(path: Path) -> list[dict]:
    import json

    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.exists() else []


def seconds_per_epoch(log: list[dict], key: str) -> dict:
    """{log value of `key` (a string, for JSON): median training seconds of the epochs with that value},
    in the order first met."""
    groups: dict = {}
    previous = 0.0
    for row in log:
        groups.setdefault(str(row[key]), []).append(row["train_time_s"] - previous)
        previous = row["train_time_s"]
    return {value: round(statistics.median(times), 3) for value, times in groups.items()}


def run_outcome(last: dict, found: dict, run_dir: Path, settings: dict, device: str) -> dict:
    """The end of a run's row: its last validation errors, the final model's test errors
    (`final_test_rmse`), the time-to-accuracy status and its curve [[time_s, force RMSE], ...]."""
    return {"valid_energy_rmse_mev_per_atom": last.get("valid_energy_rmse_mev_per_atom"),
            "valid_force_rmse_mev_per_A": last.get("valid_force_rmse_mev_per_A"),
            **final_test_rmse(run_dir, settings, device), "status": found["status"],
            "curve": [[p["time_s"], p["force_rmse_mev_per_A"]] for p in found["curve"]]}


def final_test_rmse(run_dir: Path, settings: dict, device: str) -> dict:
    """Test energy and force RMSE of the run's final EMA model (model.safetensors) in fp32 on the
    first settings["test_limit"] test configurations (all when None); None when no model was written."""
    found = {"test_energy_rmse_mev_per_atom": None, "test_force_rmse_mev_per_A": None}
    if (run_dir / "model.safetensors").exists():
        model = load(run_dir / "model.safetensors", device=device)  # the EMA weights at the end
        index = slice(0, settings["test_limit"]) if settings["test_limit"] is not None else ":"
        test = read_configurations(resolve_path(TEST_FILE), stress_key=None, virials_key=None, index=index)
        graphs = [graph_from_configuration(c, model.config.r_max) for c in test]
        metrics = evaluate(model, graphs, precision="fp32", batch_size=64, device=device)
        found = {"test_energy_rmse_mev_per_atom": metrics.energy_rmse_mev_per_atom,
                 "test_force_rmse_mev_per_A": metrics.force_rmse_mev_per_A}
    return found


def common_overrides(settings: dict, seed: int, out: Path) -> tuple:
    """The training-config overrides every run of a W3-style experiment shares: model, correlation,
    seed, training file (the first n_train frames written into `out` when set), validation fraction,
    and the epoch cap when set."""
    train_file = TRAIN_FILE
    if settings["n_train"] is not None:
        train_file = str(out / "train.xyz")
        _write_first_frames(resolve_path(TRAIN_FILE), settings["n_train"], Path(train_file))
    return (*settings["model"], f"model.correlation={settings['correlation']}", f"seed={seed}",
            f"train_file={train_file}", f"valid_fraction={settings['valid_fraction']}",
            *((f"epochs={settings['epochs']}",) if settings["epochs"] else ()))


def _write_first_frames(source: Path, n: int, dest: Path) -> None:
    """The first `n` frames of an extended XYZ file (a frame: a count line, a comment, count atoms)."""
    lines = source.read_text().splitlines(keepends=True)
    frames, i = [], 0
    while len(frames) < n and i < len(lines):
        count = int(lines[i])
        frames.append("".join(lines[i:i + count + 2]))
        i += count + 2
    dest.write_text("".join(frames))

