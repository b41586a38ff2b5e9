"""Start-up: how long a new `lpmace train` process needs before its first optimizer step is done,
with an empty compile cache ("cold") and with the cache the first process left ("warm").

Active learning retrains in a new process many times a day, so this is the wait it pays each time.
Two processes run `lpmace train` one after the other on the same config (backend `compiled`, one
epoch) with one fresh `LPMACE_CACHE_DIR`. Each row is read from its process's log.jsonl:
`first_step_s` (process start to the end of the first optimizer step: imports, data, model,
tracing, compiling or loading the compiled graphs, the step), `compiles` (graphs compiled; 0 when
all came from the cache), the epoch's loss and time, and the wall time of the whole process.

Settings: quick (CI, a CPU) the tiny model on 20 3BPA structures in batches of 4; full the W1 shape
(`medium`: 128x0e+128x1o, max_ell 3, correlation 3) in batches of 32 3BPA molecules (864 atoms,
W1's batch), 80 structures. Precision: bf16-mixed on CUDA, fp32 on the CPU.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from lpmace.bench.progressive_correlation import common_overrides

NAME = "startup"
QUICK = dict(model=("model.channels=8", "model.max_L=0", "model.max_ell=2", "model.radial_mlp=[16]",
                    "model.num_bessel=6", "model.r_max=4.0", "batch_size=4"),
             correlation=2, n_train=20, valid_fraction=0.2, epochs=1)
FULL = dict(model=("model.channels=128", "model.max_L=1", "model.max_ell=3", "batch_size=32"),
            correlation=3, n_train=80, valid_fraction=0.2, epochs=1)
COLUMNS = ["process", "first_step_s", "compiles", "train_loss", "train_time_s", "process_s", "status"]


def run(*, device: str, quick: bool, progress: bool, seed: int = 0) -> dict:
    settings = dict(QUICK if quick else FULL)
    precision = "bf16-mixed" if str(device).startswith("cuda") else "fp32"
    settings.update(precision=precision, backend="compiled")
    with tempfile.TemporaryDirectory(prefix="lpmace-startup-") as tmp:
        out = Path(tmp)
        overrides = (*common_overrides(settings, seed, out), "test_files=[]", "progress=false",
                     f"device={device}", f"precision={precision}", "backend=compiled")
        env = dict(os.environ, LPMACE_CACHE_DIR=str(out / "cache"))
        env.pop("TORCHINDUCTOR_CACHE_DIR", None)  # the cache is the fresh one above, for both processes
        rows = []
        for process in ("cold", "warm"):
            if progress:
                print(f"startup: {process} process", file=sys.stderr, flush=True)
            rows.append(_process(process, overrides, out / process, env))
    return {"settings": settings, "rows": rows}


def _process(label: str, overrides: tuple, run_dir: Path, env: dict) -> dict:
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "lpmace", "train", "/dev/null", *overrides,
                           f"output_dir={run_dir}"], capture_output=True, text=True, env=env)
    row = {"process": label, "process_s": round(time.perf_counter() - start, 3)}
    log = run_dir / "log.jsonl"
    if done.returncode != 0 or not log.exists():
        lines = (done.stderr or done.stdout).strip().splitlines()
        # the last line says what; the lines above it where (results.json keeps them)
        return {**row, "status": f"error: {lines[-1] if lines else f'exit {done.returncode}'}",
                "error_tail": lines[-40:]}
    last = json.loads(log.read_text().splitlines()[-1])
    return {**row, "first_step_s": last.get("first_step_s"), "compiles": last.get("compiles"),
            "train_loss": last.get("train_loss"), "train_time_s": last.get("train_time_s"), "status": "ok"}
