"""`lpmace demo`: fine-tune the shipped pretrained model in fp32, bf16-mixed and fp16-mixed on the
embedded 3BPA data and compare speed, memory and accuracy side by side.

Every precision starts from the same weights, `datasets/3bpa/pretrained_small.safetensors` (trained
in fp32 on all of train_300K; its README says how), so a few minutes on a CPU show what a precision
does to training and to the forces of a working potential, rather than a model that barely started.
Each precision fine-tunes in its own process (`python -m lpmace train`), so its peak memory is its
own; its log lines are streamed as they come. The parent then tests every fine-tuned model on the
bundled test configurations and against an fp64 evaluation of the same weights, and writes
DIR/summary.json and DIR/summary.md.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path
from typing import List, Sequence

from lpmace.atomic import atomic_write_text
from lpmace.errors import InputError

DEMO_PRECISIONS = ("fp32", "bf16-mixed", "fp16-mixed")
PRETRAINED = "embedded:3bpa/pretrained_small.safetensors"
DEFAULT_EPOCHS = 6
# The first 60 configurations of train_300K: 50 to fine-tune on (10 steps of 5 per epoch), 10 to validate.
N_FINE_TUNE, VALID_FRACTION = 60, 1 / 6
# A gentle fine-tune: lr 0.01 (the from-scratch recipe) would knock the pretrained weights off their
# minimum within a few steps. The weights are mace-torch's stage-two ones (energies first), which the
# pretraining, stopped by its time budget at epoch 81, did not reach.
LR = 0.001
FINE_TUNE = (f"lr={LR}", "batch_size=5", f"valid_fraction={VALID_FRACTION:.8f}", "valid_batch_size=10",
             "energy_weight=1000", "forces_weight=100", "test_files=[]")
N_COMPARE = 100  # test configurations evaluated again in fp64 (the difference needs no more)


def first_frames(source: Path, target: Path, count: int) -> None:
    """Copy the first `count` frames of an extended XYZ file as text, byte for byte."""
    lines = source.read_text().splitlines(keepends=True)
    i = 0
    for _ in range(count):
        i += int(lines[i]) + 2
    atomic_write_text(target, "".join(lines[:i]))


def train_one(precision: str, out: Path, train_file: Path, device: str, epochs: int, log) -> dict:
    """Fine-tune in a child process, streaming its log lines; the run's timing and memory summary."""
    run_dir = out / precision
    cmd = [sys.executable, "-m", "lpmace", "train", os.devnull, f"foundation_model={PRETRAINED}",
           f"train_file={train_file}", *FINE_TUNE, f"epochs={epochs}", f"precision={precision}",
           f"device={device}", f"output_dir={run_dir}",
           # a progress bar would tangle with the streamed lines; an epoch line comes every few seconds
           "progress=false"]
    with tempfile.TemporaryFile("w+") as captured:
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=captured, text=True,
                                env={**os.environ, "PYTHONUNBUFFERED": "1"})
        try:
            for line in proc.stdout:
                log(f"  {precision} | {line.rstrip()}")
        finally:  # the parent stopping early (Ctrl-C, an error) leaves no training behind
            if proc.poll() is None:
                proc.terminate()
        if proc.wait() != 0:
            captured.seek(0)
            stderr = captured.read()
            atomic_write_text(out / f"{precision}-stderr.txt", stderr)
            last = ([line for line in stderr.splitlines() if line.strip()] or ["(no output)"])[-1]
            raise InputError(f"fine-tuning {precision} failed (exit {proc.returncode}): {last} "
                             f"(all of its output: {out / f'{precision}-stderr.txt'})")
    rows = [json.loads(line) for line in (run_dir / "log.jsonl").read_text().splitlines()]
    steps_per_epoch = rows[0]["step"]
    epoch_times = [b["train_time_s"] - a["train_time_s"] for a, b in zip([{"train_time_s": 0.0}] + rows, rows)]
    summary = json.loads((run_dir / "test_metrics.json").read_text())
    summary["step_time_ms"] = 1000 * statistics.median(epoch_times) / steps_per_epoch
    return summary


def evaluate_one(precision: str, model_file: Path, test, device: str, n_compare: int, log) -> dict:
    """Test RMSEs of the fine-tuned model in its precision, and its forces against fp64, same weights."""
    from lpmace.data import graph_from_configuration
    from lpmace.evaluate import errors_against, evaluate
    from lpmace.io import load

    model = load(model_file, device=device)
    graphs = [graph_from_configuration(c, model.config.r_max) for c in test]
    log(f"  {precision} | testing on {len(graphs)} configurations, and in fp64 on the first {n_compare}")
    batch = 32 if device.startswith("cuda") else 8  # small batches run faster on a CPU
    metrics = evaluate(model, graphs, precision=precision, batch_size=batch, device=device)
    reference = evaluate(model, graphs[:n_compare], precision="fp64", batch_size=batch, device=device)
    # Predictions come in input order, so the first n_compare structures' rows line up with the reference.
    ref = reference.predictions()
    first = {k: None if v is None else v[:len(ref[k])] for k, v in metrics.predictions().items()}
    errors = errors_against(first, ref)
    row = {"test_energy_rmse_mev_per_atom": metrics.energy_rmse_mev_per_atom,
           "test_force_rmse_mev_per_A": metrics.force_rmse_mev_per_A,
           "force_rel_error_vs_fp64": errors["force_rel_rmse"],
           "force_max_error_vs_fp64_mev_per_A": errors["force_max_mev_per_A"]}
    log(f"  {precision} | test E {row['test_energy_rmse_mev_per_atom']:.1f} meV/atom, "
        f"F {row['test_force_rmse_mev_per_A']:.1f} meV/Å; F vs fp64 {row['force_rel_error_vs_fp64']:.1e} relative")
    return row


def run_demo(out: Path, device: str = "cpu", epochs: int = DEFAULT_EPOCHS, log=print,
             precisions: Sequence[str] = DEMO_PRECISIONS, n_fine_tune: int = N_FINE_TUNE,
             n_test: int = 300, n_compare: int = N_COMPARE) -> List[dict]:
    from lpmace import datasets
    from lpmace.data import read_configurations

    start = time.perf_counter()
    out.mkdir(parents=True, exist_ok=True)
    datasets.resolve_path(PRETRAINED)  # a missing model file fails here, not in a child
    train_file = out / "fine_tune.xyz"
    first_frames(datasets.path("3bpa/train_300K.xyz"), train_file, n_fine_tune)
    test = read_configurations(datasets.path("3bpa/test_300K.xyz"))[:n_test]
    rows = []
    for i, precision in enumerate(precisions, 1):
        log(f"demo [{i}/{len(precisions)}] {precision}: fine-tuning the pretrained model for {epochs} epochs "
            f"-> {out / precision}")
        summary = train_one(precision, out, train_file, device, epochs, log)
        row = {"precision": precision, "epochs": summary["epochs"], "steps": summary["steps"],
               "step_time_ms": summary["step_time_ms"], "train_time_s": summary["train_time_s"],
               "peak_memory_mb": summary["peak_memory_bytes"] / 2**20,
               "peak_memory_kind": summary["peak_memory_kind"], "skipped_steps": summary["skipped_steps"]}
        row.update(evaluate_one(precision, out / precision / "model.safetensors", test, device,
                            min(n_compare, len(test)), log))
        rows.append(row)
    setup = {"pretrained": PRETRAINED, "fine_tune_configs": n_fine_tune - round(n_fine_tune * VALID_FRACTION),
             "fine_tune": list(FINE_TUNE),
             "test_configs": len(test), "compare_configs": min(n_compare, len(test)),
             "wall_time_s": round(time.perf_counter() - start, 1)}
    write_summary(rows, out, device, setup)
    return rows


def markdown_table(rows: List[dict], device: str, setup: dict | None = None) -> str:
    setup = {"test_configs": 300, "compare_configs": N_COMPARE,
             "fine_tune_configs": N_FINE_TUNE - round(N_FINE_TUNE * VALID_FRACTION), **(setup or {})}
    head = ("| precision | step time (ms) | peak memory (MB) | test E RMSE (meV/atom) | test F RMSE (meV/Å) "
            "| F error vs fp64, same weights (relative RMSE) | max F error vs fp64 (meV/Å) | skipped steps |")
    lines = [head, "|" + " --- |" * 8]
    for r in rows:
        lines.append(f"| {r['precision']} | {r['step_time_ms']:.1f} | {r['peak_memory_mb']:.0f} | "
                     f"{r['test_energy_rmse_mev_per_atom']:.1f} | {r['test_force_rmse_mev_per_A']:.1f} | "
                     f"{r['force_rel_error_vs_fp64']:.1e} | {r['force_max_error_vs_fp64_mev_per_A']:.2f} | "
                     f"{r['skipped_steps']} |")
    kind = rows[0]["peak_memory_kind"] if rows else ""
    steps = f"{rows[0]['steps']} steps ({rows[0]['epochs']} epochs)" if rows else "0 steps"
    lines.append("")
    note = (
        "Every precision starts from the same pretrained model (channels 32, L=1, correlation 3; trained in fp32 "
        "on all 450 training configurations of the embedded 3BPA train_300K, see datasets/3bpa/README.md) and "
        f"fine-tunes it for {steps} at lr {LR} on {setup['fine_tune_configs']} configurations of the same file, "
        "in that precision. The test errors are therefore the pretraining's accuracy after each precision's "
        "training and evaluation, not what each precision reaches from scratch. "
        f"Test RMSEs: the {setup['test_configs']} bundled test_300K configurations; F error vs fp64: the same "
        f"fine-tuned weights evaluated in fp64 on the first {setup['compare_configs']} of them. "
        f"Device: {device}. Peak memory: {kind} of each training process.")
    lines += textwrap.wrap(note, 110, break_on_hyphens=False)
    return "\n".join(lines)


def write_summary(rows: List[dict], out: Path, device: str, setup: dict | None = None):
    import platform

    import torch

    env = {"device": device, "torch": torch.__version__, "python": platform.python_version(),
           "gpu": torch.cuda.get_device_name() if device.startswith("cuda") else None}
    for name, text in (("summary.json", json.dumps({"environment": env, "setup": setup or {}, "rows": rows},
                                                   indent=2)),
                       ("summary.md", markdown_table(rows, device, setup) + "\n")):
        atomic_write_text(out / name, text)
