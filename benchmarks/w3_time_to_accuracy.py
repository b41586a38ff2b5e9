"""W3 (shared/ANCHORS.md): time to reach a test_300K force RMSE, per precision, on one device.

A thin caller of `lpmace.bench.time_to_accuracy` (what ``lpmace bench --workloads time-to-accuracy``
runs) with the test file, epoch cap and time budget of the README's W3 section: 3BPA train_300K
(450/50, seed 1), batch 5, λE=1, λF=1000, AMSGrad lr 0.01, EMA 0.99, E0s from the isolated atoms,
L=1 / 128 channels / correlation 3. After every epoch the EMA model is scored on the test file
outside the training clock. Before that, per precision, the trainer's own step
(`lpmace.train.step.training_step`) is timed on 5 training molecules, and one bf16-mixed step is
profiled (DIR/profile_bf16.txt).

    python benchmarks/w3_time_to_accuracy.py --test PATH/test_300K.xyz --out DIR \
        [--precisions fp32,bf16-mixed,fp16-mixed] [--max-time 200] [--epochs 36] [--device cuda] [--only-steps]

Writes DIR/w3.json (the `time_to_accuracy` dict of results.json with the environment and the step
times) and one training run per precision under DIR/<precision>.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from pathlib import Path

from lpmace.bench.measure import environment, synchronize, timed
from lpmace.bench.time_to_accuracy import time_to_accuracy
from lpmace.data import collate
from lpmace.devices import resolve_device
from lpmace.train import Trainer, load_train_config
from lpmace.train.step import training_step

TARGET = 31.5  # meV/Å: mace-torch fp32 at ~255 s on an H100 (ANCHORS.md)
OVERRIDES = ("valid_batch_size=64",)


def trainer_step(precision: str, device: str, out: Path):
    """A fresh W3 `Trainer` (never run) and one call of its training step on its first 5 molecules."""
    trainer = Trainer(load_train_config(None, (f"precision={precision}", f"device={device}", f"output_dir={out}",
                                               "progress=false", "test_files=[]", *OVERRIDES)), log=lambda m: None)
    batch = collate(trainer.data.train[:5]).to(device)
    loss_of = trainer.loss_function(epoch=1)

    def step():
        training_step(trainer.call_model, batch, trainer.policy, trainer.optimizer, trainer.scaler, loss_of,
                      clip_grad=trainer.cfg.clip_grad)
    return step


def profile(step, device: str, path: Path) -> str:
    """torch.profiler's table of three calls of `step`, by device time (CPU time on a CPU)."""
    from torch.profiler import ProfilerActivity, profile

    cuda = device.startswith("cuda")
    with profile(activities=[ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])) as prof:
        for _ in range(3):
            step()
        synchronize(device)
    table = prof.key_averages().table(sort_by="cuda_time_total" if cuda else "cpu_time_total", row_limit=25)
    path.write_text(table)
    return table


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--test", required=True, help="labelled test structures (a path or embedded:...)")
    parser.add_argument("--out", required=True, type=Path)
    parser.add_argument("--precisions", default="fp32,bf16-mixed,fp16-mixed")
    parser.add_argument("--max-time", type=float, default=200.0, help="training seconds per precision")
    parser.add_argument("--epochs", type=int, default=36, help="at most this many epochs per precision")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--only-steps", action="store_true", help="time the steps, train nothing")
    args = parser.parse_args()
    device = str(resolve_device(args.device))
    precisions = args.precisions.split(",")
    args.out.mkdir(parents=True, exist_ok=True)
    steps = {}
    for precision in precisions:
        step = trainer_step(precision, device, args.out / f"{precision}-steps")
        steps[precision] = timed(step, device, repeats=20, warmup=5)
        print(json.dumps({"precision": precision, "step": steps[precision]}), flush=True)
        if precision == "bf16-mixed":
            print(profile(step, device, args.out / "profile_bf16.txt")[:4000], flush=True)
    results = {"runs": []}
    if not args.only_steps:
        results = time_to_accuracy(precisions, device=device, budget_s=args.max_time, out_dir=args.out,
                                   overrides=(f"epochs={args.epochs}", *OVERRIDES), test_file=args.test,
                                   target_mev_per_A=TARGET, progress=print)
    command = " ".join(["python", *map(shlex.quote, sys.argv)])
    (args.out / "w3.json").write_text(json.dumps({"environment": environment(device, command), "step": steps,
                                                  **results}, indent=2))
    print("precision | step ms (median) | epochs | final test F RMSE (meV/Å) | time to 31.5 meV/Å (s)")
    for run in results["runs"]:
        epochs = run["curve"][-1]["epoch"] if run["curve"] else None
        print(f"{run['precision']} | {steps[run['precision']]['median_ms']:.1f} | {epochs} | "
              f"{run['final_force_rmse_mev_per_A']} | {run['time_to_target_s']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
