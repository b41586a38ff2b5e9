"""W3 (shared/ANCHORS.md): force RMSE against training wall time, per precision, on one device.

lpmace: one fresh `Trainer` per precision with the 3BPA recipe of `lpmace.train.config` (AMSGrad,
lr 0.01, batch 5, EMA 0.99, λE 1, λF 1000, E0s from isolated atoms) plus `overrides`, stopped by
``max_time = budget_s`` (checked between epochs, so the last epoch may end past it). After every
epoch the EMA model is evaluated on the test configurations *outside* the training clock: a curve
point's ``time_s`` is the trainer's training-only wall time (its validation excluded too).

mace-torch (optional): ``mace_run_train`` with the same model and recipe as a subprocess, killed
`budget_s` after its first ("Initial:") validation line; its curve is the validation force RMSE of
its log lines, timed by their timestamps from that line (so it includes mace-torch's own per-epoch
validation, but not its start-up). Each mace-torch run carries a ``note`` that says so.

Returns the ``time_to_accuracy`` dict of results.json (schema in `lpmace.bench`). Units: s, meV/Å.
"""

from __future__ import annotations

import dataclasses
import datetime
import math
import os
import queue
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

from lpmace.bench.measure import is_out_of_memory, release_memory
from lpmace.datasets import resolve_path
from lpmace.data import (
    graph_from_configuration,
    isolated_atom_energies,
    read_configurations,
)
from lpmace.model import MACEConfig
from lpmace.train import TrainConfig, Trainer, load_train_config

__all__ = ["MACE_DTYPES", "parse_mace_log", "time_to_accuracy"]

EPOCHS = 10_000  # an upper bound only: max_time (budget_s) ends the run
EVAL_BATCH_SIZE = 64
MACE_DTYPES = {"fp32": "float32", "fp64": "float64"}
# mace_run_train reads the data, builds and compiles the model and validates it once before its
# "Initial:" line; a start-up slower than this is reported as an error rather than waited on.
MACE_STARTUP_LIMIT_S = 900.0
MACE_EXECUTABLE = "mace_run_train"

_LOG_TIME = r"(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d+)"
_NUMBER = r"([-+]?(?:\d+\.?\d*(?:[eE][-+]?\d+)?|nan|inf))"
_INITIAL_LINE = re.compile(_LOG_TIME + r" INFO: Initial:")
_EPOCH_LINE = re.compile(_LOG_TIME + r" INFO: Epoch (\d+):.*?RMSE_F=\s*" + _NUMBER + r" meV / A")


def time_to_accuracy(
    precisions: Sequence[str],
    *,
    device: str,
    budget_s: float,
    out_dir: Path,
    overrides: Sequence[str] = (),
    test_file: str = "embedded:3bpa/test_300K.xyz",
    test_limit: int | None = None,
    target_mev_per_A: float = 31.5,
    compare_mace_torch: bool = False,
    progress: Callable[[str], None] | None = None,
    backends: Sequence[str] = ("reference",),
) -> dict:
    """Train once per precision for `budget_s` seconds of training time and record the test force RMSE.

    Args:
        precisions: lpmace presets to train with, each from the same seed and data split.
        device: torch device ("cuda", "cpu", ...), also mace-torch's.
        budget_s: training wall time per run, s.
        out_dir: each run writes to ``out_dir/<precision>`` (``out_dir/mace-torch-<dtype>``), which must
            not already hold a run.
        overrides: extra ``key=value`` training-config overrides (``model.channels=32``, ``batch_size=10``;
            ``epochs=N`` ends a run after N epochs if the budget has not ended it first).
        test_file: labelled configurations scored after every epoch (``embedded:`` or a path);
            `test_limit` keeps only the first that many.
        target_mev_per_A: ``time_to_target_s`` is the first curve time at or below this force RMSE.
        compare_mace_torch: also run ``mace_run_train`` in float32, and in float64 if "fp64" is in
            `precisions` (status "not run: ..." when it is not installed).
        progress: gets one short line per finished run.
        backends: lpmace backends to train with (one run per backend and precision; with more than one
            backend the runs write to ``out_dir/<precision>-<backend>``).

    Returns:
        {target_mev_per_A, budget_s, runs: [{code, backend, precision, metric, curve: [{time_s, epoch,
        force_rmse_mev_per_A}], time_to_target_s, final_force_rmse_mev_per_A, status}]}, mace-torch runs
        with a ``note``. A run that fails part-way keeps its curve, with status "OOM" or "error: ...".
    """
    out_dir = Path(out_dir)
    configs = {(b, p): _train_config(p, device, budget_s, out_dir / (p if len(backends) == 1 else f"{p}-{b}"),
                                     (*overrides, f"backend={b}"))
               for b in backends for p in precisions}
    first = next(iter(configs.values()), None) or _train_config("fp32", device, budget_s, out_dir, overrides)
    runs = []
    if configs:
        index = slice(0, test_limit) if test_limit is not None else ":"
        test = read_configurations(resolve_path(test_file), energy_key=first.energy_key,
                                   forces_key=first.forces_key, stress_key=None, virials_key=None, index=index)
        for cfg in configs.values():
            runs.append(_lpmace_run(cfg, test, target_mev_per_A))
            _report(progress, runs[-1])
    if compare_mace_torch:
        release_memory(device)  # the subprocess shares the device with this process's cached blocks
        for name in ["fp32"] + (["fp64"] if "fp64" in precisions else []):
            runs.append(_mace_torch_run(first, name, device=device, budget_s=budget_s,
                                        work_dir=out_dir / f"mace-torch-{name}", target_mev_per_A=target_mev_per_A))
            _report(progress, runs[-1])
    return {"target_mev_per_A": float(target_mev_per_A), "budget_s": float(budget_s), "runs": runs}


def parse_mace_log(lines: Iterable[str]) -> list[dict]:
    """The validation curve of a ``mace_run_train`` log (its stdout or ``<name>.log``).

    Reads the ``Initial:`` line and every ``Epoch N: ... RMSE_F= X meV / A`` line after it. Returns
    [{time_s: seconds from the Initial line by the log's timestamps, epoch: N + 1 (mace-torch counts
    from 0; this is epochs completed, as lpmace's curves count), force_rmse_mev_per_A: X (None if not
    finite)}], in log order. Lines before the Initial line, or a log without one, give no points.
    """
    start, curve = None, []
    for line in lines:
        if start is None:
            match = _INITIAL_LINE.search(line)
            if match:
                start = _timestamp(match.group(1))
            continue
        match = _EPOCH_LINE.search(line)
        if match:
            stamp, epoch, value = match.groups()
            curve.append({"time_s": round((_timestamp(stamp) - start).total_seconds(), 3), "epoch": int(epoch) + 1,
                          "force_rmse_mev_per_A": _finite(float(value))})
    return curve


# ---- lpmace ----------------------------------------------------------------------------------------------

def _train_config(precision: str, device: str, budget_s: float, out: Path, overrides: Sequence[str]) -> TrainConfig:
    return load_train_config(None, (
        f"precision={precision}", f"device={device}", f"max_time={budget_s}", f"epochs={EPOCHS}",
        f"output_dir={out}", "progress=false", "test_files=[]", *overrides))


def _lpmace_run(cfg: TrainConfig, test, target: float) -> dict:
    curve: list[dict] = []
    test_graphs: list = []

    def on_epoch(trainer: Trainer, row: dict) -> None:
        if not test_graphs:
            test_graphs.extend(graph_from_configuration(c, trainer.model.config.r_max) for c in test)
        metrics = trainer.evaluate(test_graphs, batch_size=EVAL_BATCH_SIZE)
        curve.append({"time_s": float(row["train_time_s"]), "epoch": int(row["epoch"]),
                      "force_rmse_mev_per_A": _finite(metrics.force_rmse_mev_per_A)})

    status = "ok"
    try:
        Trainer(cfg, log=lambda message: None, on_epoch=on_epoch).run()
    except Exception as err:  # noqa: BLE001 — the curve so far is still a result; the status says why it ended
        status = "OOM" if is_out_of_memory(err) else f"error: {type(err).__name__}: {err}"
    return _run("lpmace", cfg.backend, cfg.precision, "test force RMSE", curve, target, status)


def _run(code, backend, precision, metric, curve, target, status, **extra) -> dict:
    reached = next((p["time_s"] for p in curve if p["force_rmse_mev_per_A"] is not None
                    and p["force_rmse_mev_per_A"] <= target), None)
    return {"code": code, "backend": backend, "precision": precision, "metric": metric, "curve": curve,
            "time_to_target_s": reached,
            "final_force_rmse_mev_per_A": curve[-1]["force_rmse_mev_per_A"] if curve else None,
            "status": status, **extra}


# ---- mace-torch ------------------------------------------------------------------------------------------

def _mace_torch_run(cfg: TrainConfig, precision: str, *, device: str, budget_s: float, work_dir: Path,
                    target_mev_per_A: float) -> dict:
    valid = "validation file" if cfg.valid_file else f"{cfg.valid_fraction:.0%} validation split (seed {cfg.seed})"
    note = ("mace_run_train subprocess; time_s counts from its 'Initial:' validation line (start-up excluded), "
            "by its log timestamps, and includes its own validation after every epoch; epoch = its epoch "
            f"index + 1; force RMSE on its {valid}, not the test file")

    def result(curve: list[dict], status: str) -> dict:
        return _run("mace-torch", "e3nn", precision, "valid force RMSE", curve, target_mev_per_A, status, note=note)

    executable = _mace_executable()
    if executable is None:
        return result([], f"not run: {MACE_EXECUTABLE} not installed")
    try:
        args = _mace_arguments(cfg, MACE_DTYPES[precision], device, work_dir)
    except ValueError as err:
        return result([], f"not run: {err}")
    work_dir.mkdir(parents=True, exist_ok=True)
    lines, status = _run_until(executable, args, work_dir, budget_s)
    (work_dir / "mace_run_train.out").write_text("".join(lines))
    return result(parse_mace_log(lines), status)


def _mace_executable() -> str | None:
    """mace_run_train on PATH, or beside this Python (a virtual environment that is not activated)."""
    path = os.pathsep.join(filter(None, (os.environ.get("PATH"), str(Path(sys.executable).parent))))
    return shutil.which(MACE_EXECUTABLE, path=path)


def _mace_arguments(cfg: TrainConfig, dtype: str, device: str, work_dir: Path) -> list[str]:
    """mace_run_train's flags for the model and recipe of `cfg` (ANCHORS.md's mace_3bpa.sh, eval every epoch)."""
    defaults = {f.name: f.default for f in dataclasses.fields(MACEConfig) if f.default is not dataclasses.MISSING}
    m = {**defaults, **cfg.model}
    correlation = {int(c) for c in (m["correlation"] if isinstance(m["correlation"], (list, tuple))
                                    else [m["correlation"]])}
    if len(correlation) != 1:
        raise ValueError(f"mace-torch takes one correlation order for all interactions, not {sorted(correlation)}")
    hidden = " + ".join(f"{m['channels']}x{ell}{'eo'[ell % 2]}" for ell in range(int(m["max_L"]) + 1))
    first = {"residual": "RealAgnosticResidualInteractionBlock", "plain": "RealAgnosticInteractionBlock"}
    args = [
        "--name", f"w3_{dtype}", "--work_dir", str(work_dir), "--seed", str(cfg.seed),
        "--train_file", str(resolve_path(cfg.train_file)), "--energy_key", cfg.energy_key,
        "--forces_key", cfg.forces_key, "--E0s", _mace_e0s(cfg),
        "--model", "MACE", "--hidden_irreps", hidden, "--r_max", str(m["r_max"]),
        "--num_radial_basis", str(m["num_bessel"]), "--num_cutoff_basis", str(m["num_polynomial_cutoff"]),
        "--max_ell", str(m["max_ell"]), "--correlation", str(correlation.pop()),
        "--num_interactions", str(m["num_interactions"]), "--MLP_irreps", f"{m['readout_mlp']}x0e",
        "--radial_MLP", str([int(w) for w in m["radial_mlp"]]), "--interaction_first", first[m["first_interaction"]],
        "--batch_size", str(cfg.batch_size), "--valid_batch_size", str(cfg.valid_batch_size),
        "--max_num_epochs", str(cfg.epochs), "--lr", str(cfg.lr), "--weight_decay", str(cfg.weight_decay),
        "--scheduler_patience", str(cfg.scheduler_patience), "--lr_factor", str(cfg.scheduler_factor),
        "--energy_weight", str(cfg.energy_weight), "--forces_weight", str(cfg.forces_weight),
        "--clip_grad", str(cfg.clip_grad), "--ema", "--ema_decay", str(cfg.ema_decay), "--amsgrad",
        "--default_dtype", dtype, "--device", str(device).split(":")[0], "--eval_interval", "1",
        "--error_table", "TotalRMSE",
    ]
    if cfg.valid_file:
        return [*args, "--valid_file", str(resolve_path(cfg.valid_file))]
    return [*args, "--valid_fraction", str(cfg.valid_fraction)]


def _mace_e0s(cfg: TrainConfig) -> str:
    """E0s as mace-torch reads them: a dict literal from the isolated atoms, or "average" (a fit)."""
    if cfg.e0s == "fit":
        return "average"
    source = cfg.isolated_atoms_file or cfg.train_file
    configs = read_configurations(resolve_path(source), energy_key=cfg.energy_key, forces_key=None,
                                  stress_key=None, virials_key=None)
    return repr(dict(sorted(isolated_atom_energies(configs).items())))


def _run_until(executable: str, args: list[str], cwd: Path, budget_s: float) -> tuple[list[str], str]:
    """Run `executable`, reading its merged stdout/stderr line by line as it comes, until it exits or
    `budget_s` has passed since its "Initial:" line (then it is ended: SIGTERM, SIGKILL after 10 s).

    Returns (every line, status): "ok" if it ran out its budget or exited 0, else "error: ...".
    """
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    try:
        process = subprocess.Popen([executable, *args], cwd=cwd, env=env, stdout=subprocess.PIPE,
                                   stderr=subprocess.STDOUT, encoding="utf-8", errors="replace", bufsize=1,
                                   start_new_session=True)
    except OSError as err:
        return [], f"error: cannot start {executable}: {err}"
    pending: queue.Queue = queue.Queue()

    def read() -> None:
        for line in process.stdout:
            pending.put(line)
        pending.put(None)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    lines: list[str] = []
    deadline, started, finished = time.monotonic() + MACE_STARTUP_LIMIT_S, False, False
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            break
        try:
            line = pending.get(timeout=remaining)
        except queue.Empty:
            break
        if line is None:
            finished = True
            break
        lines.append(line)
        if not started and _INITIAL_LINE.search(line):
            started, deadline = True, time.monotonic() + budget_s
    if not finished:
        _end(process)
    reader.join(timeout=10.0)
    while not pending.empty():
        line = pending.get()
        if line is not None:
            lines.append(line)
    code = process.wait()
    if (started and not finished) or code == 0:
        return lines, "ok"
    if not finished and not started:
        return lines, f"error: no 'Initial:' line from {MACE_EXECUTABLE} within {MACE_STARTUP_LIMIT_S:g} s"
    last = next((line.strip() for line in reversed(lines) if line.strip()), "no output")
    return lines, f"error: {MACE_EXECUTABLE} exited with code {code}: {last[-300:]}"


def _end(process: subprocess.Popen) -> None:
    """Stop the process group this module started for `process` (it may have worker children)."""
    for sig, wait_s in ((signal.SIGTERM, 10.0), (signal.SIGKILL, 10.0)):
        try:
            os.killpg(process.pid, sig)
        except ProcessLookupError:
            return
        try:
            process.wait(timeout=wait_s)
            return
        except subprocess.TimeoutExpired:
            continue


# ---- helpers ---------------------------------------------------------------------------------------------

def _timestamp(text: str) -> datetime.datetime:
    return datetime.datetime.strptime(text, "%Y-%m-%d %H:%M:%S.%f")


def _finite(value) -> float | None:
    """JSON has no NaN: a diverged or missing metric is None."""
    return float(value) if value is not None and math.isfinite(value) else None


def _report(progress: Callable[[str], None] | None, run: dict) -> None:
    if progress is None:
        return
    head = f"time-to-accuracy {run['code']} {run['precision']}"
    if not run["curve"]:
        progress(f"{head}: {run['status']}")
        return
    final, reached = run["final_force_rmse_mev_per_A"], run["time_to_target_s"]
    final_text = f"{final:.1f} meV/Å" if final is not None else "not finite"
    target_text = f"target at {reached:.1f} s" if reached is not None else "target not reached"
    progress(f"{head}: {run['curve'][-1]['epoch']} epochs, final {final_text}, {target_text}")
