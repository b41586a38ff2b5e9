"""`lpmace demo`: train the same small model in fp32, bf16-mixed and fp16-mixed on the embedded 3BPA
data and compare speed, memory and accuracy side by side.

Each precision trains in its own process (`python -m lpmace train`), so its peak memory is its own.
The parent then evaluates every trained model on the bundled test configurations and against an
fp64 evaluation of the same weights, and writes DIR/summary.json and DIR/summary.md.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
from pathlib import Path
from typing import List

from lpmace.atomic import atomic_write_text

DEMO_PRECISIONS = ("fp32", "bf16-mixed", "fp16-mixed")
DEMO_MODEL = ("model.channels=32", "model.max_L=1", "model.correlation=3")


def train_one(precision: str, out: Path, device: str, epochs: int, log) -> dict:
    run_dir = out / precision
    cmd = [sys.executable, "-m", "lpmace", "train", os.devnull, *DEMO_MODEL, f"epochs={epochs}",
           f"precision={precision}", f"device={device}", f"output_dir={run_dir}", "progress=false",
           "test_files=[embedded:3bpa/test_300K.xyz]", "valid_batch_size=32"]
    log(f"demo: training {precision} ({epochs} epochs) -> {run_dir}")
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"training {precision} failed:\n{proc.stderr[-2000:]}")
    rows = [json.loads(line) for line in (run_dir / "log.jsonl").read_text().splitlines()]
    steps_per_epoch = rows[0]["step"]
    epoch_times = [b["train_time_s"] - a["train_time_s"] for a, b in zip([{"train_time_s": 0.0}] + rows, rows)]
    summary = json.loads((run_dir / "test_metrics.json").read_text())
    summary["step_time_ms"] = 1000 * statistics.median(epoch_times) / steps_per_epoch
    return summary


def run_demo(out: Path, device: str = "cpu", epochs: int = 1, log=print) -> List[dict]:
    from lpmace import datasets
    from lpmace.data import graph_from_configuration, read_configurations
    from lpmace.evaluate import force_error_against
    from lpmace.io import load

    out.mkdir(parents=True, exist_ok=True)
    test = read_configurations(datasets.path("3bpa/test_300K.xyz"))
    rows = []
    for precision in DEMO_PRECISIONS:
        summary = train_one(precision, out, device, epochs, log)
        model = load(out / precision / "model.safetensors", device=device)
        graphs = [graph_from_configuration(c, model.config.r_max) for c in test]
        rel, max_abs = force_error_against(model, graphs, precision, "fp64", batch_size=32, device=device)
        metrics = summary["test"]["embedded:3bpa/test_300K.xyz"]
        rows.append({
            "precision": precision, "epochs": summary["epochs"], "step_time_ms": summary["step_time_ms"],
            "train_time_s": summary["train_time_s"], "peak_memory_mb": summary["peak_memory_bytes"] / 2**20,
            "peak_memory_kind": summary["peak_memory_kind"], "skipped_steps": summary["skipped_steps"],
            "test_energy_rmse_mev_per_atom": metrics["energy_rmse_mev_per_atom"],
            "test_force_rmse_mev_per_A": metrics["force_rmse_mev_per_A"],
            "force_rel_error_vs_fp64": rel, "force_max_error_vs_fp64_mev_per_A": 1000 * max_abs,
        })
    write_summary(rows, out, device)
    return rows


def markdown_table(rows: List[dict], device: str) -> str:
    head = ("| precision | step time (ms) | peak memory (MB) | test E RMSE (meV/atom) | test F RMSE (meV/Å) "
            "| F error vs fp64, same weights (relative RMSE) | max F error vs fp64 (meV/Å) | skipped steps |")
    lines = [head, "|" + " --- |" * 8]
    for r in rows:
        lines.append(f"| {r['precision']} | {r['step_time_ms']:.1f} | {r['peak_memory_mb']:.0f} | "
                     f"{r['test_energy_rmse_mev_per_atom']:.1f} | {r['test_force_rmse_mev_per_A']:.1f} | "
                     f"{r['force_rel_error_vs_fp64']:.1e} | {r['force_max_error_vs_fp64_mev_per_A']:.2f} | "
                     f"{r['skipped_steps']} |")
    kind = rows[0]["peak_memory_kind"] if rows else ""
    lines.append(f"\nDevice: {device}. Peak memory: {kind}. Model: channels 32, L=1, correlation 3; "
                 f"{rows[0]['epochs'] if rows else 0} epochs on the embedded 3BPA train_300K (450/50 split); "
                 "tests on the 300 bundled test_300K configurations.")
    return "\n".join(lines)


def write_summary(rows: List[dict], out: Path, device: str):
    import platform

    import torch

    env = {"device": device, "torch": torch.__version__, "python": platform.python_version(),
           "gpu": torch.cuda.get_device_name() if device.startswith("cuda") else None}
    for name, text in (("summary.json", json.dumps({"environment": env, "rows": rows}, indent=2)),
                       ("summary.md", markdown_table(rows, device) + "\n")):
        atomic_write_text(out / name, text)
