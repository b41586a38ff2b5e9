"""W3 (shared/ANCHORS.md): time to reach a test_300K force RMSE, per precision, on one device.

3BPA train_300K (450/50, seed 1), batch 5, λE=1, λF=1000, AMSGrad lr 0.01, EMA 0.99, E0s from the
isolated atoms, model L=1 / 128 channels / correlation 3 (mace-torch's default MACE). After every
epoch the EMA model is evaluated on the full test_300K (outside the training clock). Also times
single training steps and profiles one bf16-mixed step.

    python benchmarks/w3_time_to_accuracy.py --test PATH/test_300K.xyz --out DIR \
        [--precisions fp32,bf16-mixed,fp16-mixed] [--max-time 200] [--epochs 36] [--device cuda]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

from lpmace.data import collate, graph_from_configuration, read_configurations
from lpmace.train import Trainer, load_train_config

TARGET = 31.5  # meV/Å: mace-torch fp32 at ~255 s on an H100 (ANCHORS.md)


def sync(device):
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def step_times(trainer, device, repeats=20):
    """Median/spread of full training steps (forward, forces, double backward, optimizer)."""
    batch = collate(trainer.data.train[:5]).to(device)
    model, opt = trainer.model, trainer.optimizer
    times = []
    for i in range(repeats + 5):
        sync(device)
        t = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        out = model(batch, precision=trainer.policy, training=True)
        loss = ((out["energy"] - batch.energy) ** 2).mean() + 1000 * ((out["forces"].double() - batch.forces) ** 2).mean()
        trainer.scaler.scale(loss).backward()
        trainer.scaler.step(opt)
        trainer.scaler.update()
        sync(device)
        if i >= 5:
            times.append(time.perf_counter() - t)
    return {"median_ms": 1000 * statistics.median(times), "min_ms": 1000 * min(times), "max_ms": 1000 * max(times)}


def profile_step(trainer, device, path):
    from torch.profiler import ProfilerActivity, profile

    batch = collate(trainer.data.train[:5]).to(device)
    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.startswith("cuda") else [])
    with profile(activities=acts) as prof:
        for _ in range(3):
            out = trainer.model(batch, precision=trainer.policy, training=True)
            (out["forces"].double() ** 2).mean().backward()
        sync(device)
    key = "cuda_time_total" if device.startswith("cuda") else "cpu_time_total"
    table = prof.key_averages().table(sort_by=key, row_limit=25)
    Path(path).write_text(table)
    return table


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--test", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--precisions", default="fp32,bf16-mixed,fp16-mixed")
    ap.add_argument("--max-time", type=float, default=200.0)
    ap.add_argument("--epochs", type=int, default=36)
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--only-steps", action="store_true")
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    test = read_configurations(args.test)
    results = {"device": torch.cuda.get_device_name() if args.device.startswith("cuda") else "cpu",
               "torch": torch.__version__, "n_test": len(test), "runs": {}}
    for precision in args.precisions.split(","):
        cfg = load_train_config(None, (
            f"precision={precision}", f"device={args.device}", f"epochs={args.epochs}",
            f"max_time={args.max_time}", f"output_dir={out / precision}", "progress=false",
            "test_files=[]", "valid_batch_size=64"))
        curve = []
        test_graphs = None

        def on_epoch(trainer, row):
            nonlocal test_graphs
            if test_graphs is None:
                test_graphs = [graph_from_configuration(c, trainer.model.config.r_max) for c in test]
            m = trainer.evaluate(test_graphs, batch_size=64).to_dict()
            point = {"epoch": row["epoch"], "train_time_s": row["train_time_s"],
                     "test_force_rmse": m["force_rmse_mev_per_A"], "test_energy_rmse": m["energy_rmse_mev"],
                     "valid_force_rmse": row.get("valid_force_rmse_mev_per_A"), "skipped": row["skipped_steps"]}
            curve.append(point)
            print(json.dumps({"precision": precision, **point}), flush=True)

        trainer = Trainer(cfg, log=lambda m: None, on_epoch=on_epoch)
        steps = step_times(trainer, args.device)
        print(json.dumps({"precision": precision, "step": steps}), flush=True)
        if precision == "bf16-mixed":
            print(profile_step(trainer, args.device, out / "profile_bf16.txt")[:4000], flush=True)
        if args.only_steps:
            results["runs"][precision] = {"step": steps}
            continue
        # fresh trainer so the timing steps above do not count as training
        trainer = Trainer(load_train_config(None, (
            f"precision={precision}", f"device={args.device}", f"epochs={args.epochs}",
            f"max_time={args.max_time}", f"output_dir={out / (precision + '_run')}", "progress=false",
            "test_files=[]", "valid_batch_size=64")), log=lambda m: None, on_epoch=on_epoch)
        trainer.run()
        reached = next((p["train_time_s"] for p in curve if p["test_force_rmse"] <= TARGET), None)
        results["runs"][precision] = {"step": steps, "curve": curve, "time_to_target_s": reached}
        (out / "w3.json").write_text(json.dumps(results, indent=2))
    (out / "w3.json").write_text(json.dumps(results, indent=2))
    print("precision | step ms (median) | epochs | final test F RMSE | time to 31.5 meV/Å")
    for p, r in results["runs"].items():
        c = r.get("curve") or [{}]
        print(f"{p} | {r['step']['median_ms']:.1f} | {c[-1].get('epoch')} | {c[-1].get('test_force_rmse')} | {r.get('time_to_target_s')}")


if __name__ == "__main__":
    sys.exit(main())
