"""Precision schedules against fixed precisions, W3-style: test force RMSE against training time on
3BPA under the same training-time budget (issue 6, part 4).

Four runs share data, split, seed, model and budget, one after the other:

1. "fp32": fixed fp32;
2. "bf16-mixed": fixed bf16-mixed;
3. "schedule": bf16-mixed, then fp32 for the last epochs (``precision_schedule: {S: fp32}``, as NequIP's
   TF32 scheduler does). S is chosen from run 2 so that the switch happens within the budget: if
   run 2 finished N epochs, the schedule trains the first round(2N/3) epochs in bf16-mixed (at least
   1, at most N - 1) and switches at the next, S = round(2N/3) + 1. Those epochs took run 2 less
   than the budget, so the switch comes before ``max_time`` ends the run;
4. "layerwise": fixed ``layerwise`` preset (float16 radial MLP and readout; loss scaling).

Each run is one `lpmace.bench.time_to_accuracy` run (backend "triton" on CUDA: "compiled" would
spend part of each budget on compiling; "auto", i.e. reference, on the CPU): a
fresh Trainer stopped by ``max_time`` (checked between epochs), its EMA model scored on the test
configurations after every epoch outside the training clock, in the precision that epoch trained
with (W3's rule). The final test metrics of a row are those of the EMA model written at the end,
evaluated in fp32 for every run (the accuracy of the weights, whatever they were trained in).

`run` returns the `precision_schedule` section of `lpmace bench`'s results.json: {"settings":
QUICK, FULL_CPU or FULL_GPU, "rows": one per run}; docs/experiments/precision_schedule.md says what
the rows showed. Rows: precision or schedule, switch epoch, epochs done, epochs per precision (from the
trainer's log), training time (s), median seconds per epoch per precision, skipped steps (fp16 loss
scaling), final validation and test energy (meV/atom) and force (meV/Å) RMSE of the EMA model, the
time each run first reaches the fp32 run's final test force RMSE, the force RMSE of each run at the
earliest run end, status, and the curve ``[[time_s, test force RMSE], ...]``.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

from lpmace.bench.progressive_correlation import _at_time, _log_rows, common_overrides, run_outcome, seconds_per_epoch
from lpmace.bench.time_to_accuracy import time_to_accuracy

NAME = "precision_schedule"
TEST_FILE = "embedded:3bpa/test_300K.xyz"
LOW, HIGH = "bf16-mixed", "fp32"

# quick (CI, seconds on a CPU): a tiny model, 6 epochs each (an epoch cap, so that the rows and the
# switch epoch do not depend on the machine's load; the budget only guards). full CPU: the
# progressive_correlation model with a budget that keeps the four runs near 15 minutes on a 2-core
# CPU; full GPU: the W3 model (128x0e+128x1o), 60 s per run, the four within about 5 minutes.
QUICK = dict(model=("model.channels=8", "model.max_L=0", "model.max_ell=2", "model.radial_mlp=[16]",
                    "model.num_bessel=6", "model.r_max=4.0", "batch_size=4"),
             correlation=2, n_train=40, valid_fraction=0.25, test_limit=20, budget_s=60.0, epochs=6)
FULL_CPU = dict(model=("model.channels=32", "model.max_L=1", "model.max_ell=3"), correlation=3, n_train=None,
                valid_fraction=0.1, test_limit=100, budget_s=150.0, epochs=None)
FULL_GPU = dict(FULL_CPU, model=("model.channels=128", "model.max_L=1", "model.max_ell=3"), test_limit=None,
                budget_s=60.0)
COLUMNS = ["run", "precision", "switch_epoch", "epochs", "epochs_by_precision", "train_time_s", "seconds_per_epoch",
           "skipped_steps", "valid_energy_rmse_mev_per_atom", "valid_force_rmse_mev_per_A",
           "test_energy_rmse_mev_per_atom", "test_force_rmse_mev_per_A", "time_to_fp32_final_s",
           "force_rmse_at_common_time_mev_per_A", "status", "curve"]


def switch_epoch(low_epochs: int) -> int:
    """The first fp32 epoch of the schedule when the fixed bf16-mixed run finished `low_epochs`
    epochs: after round(2N/3) epochs of bf16-mixed, at least one and at most N - 1 (epoch 2 for N < 2)."""
    return min(max(1, round(2 * low_epochs / 3)), max(1, low_epochs - 1)) + 1


def run(*, device: str, quick: bool, progress: bool, seed: int = 0) -> dict:
    settings = QUICK if quick else FULL_GPU if str(device).startswith("cuda") else FULL_CPU
    report = (lambda line: print(line, file=sys.stderr, flush=True)) if progress else None
    with tempfile.TemporaryDirectory(prefix="lpmace-precision-schedule-") as tmp:
        out = Path(tmp)
        common = common_overrides(settings, seed, out)
        one = lambda label, precision, switch=None: _one_run(  # noqa: E731
            label, precision, switch, settings, common, device, out / label, report)
        rows = [one("fp32", HIGH), one("bf16-mixed", LOW)]
        rows.append(one("schedule", LOW, switch_epoch(rows[1]["epochs"])))
        rows.append(one("layerwise", "layerwise"))
    target = rows[0]["test_force_rmse_mev_per_A"]
    common_time = min((row["curve"][-1][0] for row in rows if row["curve"]), default=None)
    reach = None if target is None else target * (1 + 1e-6)  # the fp32 run's own end, despite summation order
    for row in rows:
        row["time_to_fp32_final_s"] = next((t for t, f in row["curve"] if f is not None and reach is not None
                                            and f <= reach), None)
        row["force_rmse_at_common_time_mev_per_A"] = _at_time(row["curve"], common_time)
    return {"settings": dict(settings), "rows": rows}


def _one_run(label, precision, switch, settings, common, device, out, report) -> dict:
    overrides = common + ((f"precision_schedule={{{switch}: {HIGH}}}",) if switch else ())
    result = time_to_accuracy([precision], device=device, budget_s=settings["budget_s"], out_dir=out,
                              overrides=overrides, test_file=TEST_FILE, test_limit=settings["test_limit"],
                              progress=report, backends=("triton",) if str(device).startswith("cuda") else ("auto",))
    found = result["runs"][0]
    run_dir = out / precision
    log = _log_rows(run_dir / "log.jsonl")
    last = log[-1] if log else {}
    by_precision: dict = {}
    for entry in log:
        by_precision[entry["precision"]] = by_precision.get(entry["precision"], 0) + 1
    row = {"run": label, "precision": f"{LOW} → {HIGH} (epoch {switch})" if switch else precision,
           "switch_epoch": switch, "epochs": len(log), "epochs_by_precision": by_precision,
           "train_time_s": last.get("train_time_s"), "seconds_per_epoch": seconds_per_epoch(log, "precision"),
           "skipped_steps": last.get("skipped_steps")}
    return {**row, **run_outcome(last, found, run_dir, settings, device)}

