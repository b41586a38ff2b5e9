"""The seed's experiments as `lpmace bench --experiment NAME[,NAME...]`.

Each experiment is a module here exposing ``NAME`` and
``run(*, device, quick, progress, seed) -> {"rows": [...], "columns": [...], "summary": str}``.
`run_experiments` validates the names before anything is written, runs each one, and writes
``experiments.json`` (environment, options, every experiment's rows) after each experiment and
``experiments.md`` (one section per experiment: its summary and table) at the end. An experiment
that fails becomes an error entry with the message, and the others still run.
"""

from __future__ import annotations

import importlib
import json
import time
from pathlib import Path
from typing import Callable

from lpmace.atomic import atomic_write_text
from lpmace.errors import InputError

__all__ = ["EXPERIMENTS", "check_names", "run_experiments"]

EXPERIMENTS = {
    "quantize": "int8/fp8 readouts: energy and force error, model bytes, speed",
    "species_rank": "low-rank element-dependent weights: parameters and memory against elements and rank; accuracy against rank",
    "progressive_correlation": "training with the correlation order raised by epoch against a fixed order (time to accuracy)",
    "precision_schedule": "fixed fp32, bf16-mixed and layerwise against bf16-mixed then fp32 by epoch (time to accuracy)",
}


def check_names(names) -> tuple:
    names = tuple(names)
    unknown = [n for n in names if n not in EXPERIMENTS]
    if unknown or not names:
        listing = "; ".join(f"{k} ({v})" for k, v in EXPERIMENTS.items())
        raise InputError(f"--experiment: unknown {unknown or 'empty list'}; choose from {listing}")
    return names


def _cell(value) -> str:
    if isinstance(value, float):
        return f"{value:.3g}"
    return "—" if value is None else str(value)


def render(results: dict) -> str:
    """experiments.md: the environment, then per experiment its summary and its table."""
    lines = ["# lpmace experiments", "", f"Command: `{results['command']}`", ""]
    lines += ["| field | value |", "| --- | --- |"]
    lines += [f"| {k} | {v} |" for k, v in results["environment"].items()]
    for name, found in results["experiments"].items():
        lines += ["", f"## {name}", "", EXPERIMENTS[name], ""]
        if "error" in found:
            lines += [f"Failed: {found['error']}"]
            continue
        lines += [found.get("summary", "").strip(), "", f"({found['seconds']:.0f} s)", ""]
        columns = found.get("columns") or sorted({k for row in found["rows"] for k in row})
        lines += ["| " + " | ".join(columns) + " |", "|" + " --- |" * len(columns)]
        lines += ["| " + " | ".join(_cell(row.get(c)) for c in columns) + " |" for row in found["rows"]]
    return "\n".join(lines) + "\n"


def run_experiments(names, out: Path, *, device: str, quick: bool, progress: bool, seed: int = 0,
                    command: str = "lpmace bench --experiment", log: Callable[[str], None] = print) -> dict:
    from lpmace.bench.measure import environment, strict_json

    names = check_names(names)
    out.mkdir(parents=True, exist_ok=True)
    results = {"command": command, "environment": environment(device, command),
               "options": {"device": device, "quick": quick, "seed": seed}, "experiments": {}}
    for name in names:
        log(f"experiment {name}: {EXPERIMENTS[name]}")
        start = time.perf_counter()
        try:
            module = importlib.import_module(f"lpmace.bench.experiments.{name}")
            found = dict(module.run(device=device, quick=quick, progress=progress, seed=seed))
        except Exception as error:  # reported as the experiment's result; the others still run
            found = {"error": f"{type(error).__name__}: {error}"}
            log(f"experiment {name} failed: {found['error']}")
        found["seconds"] = time.perf_counter() - start
        results["experiments"][name] = strict_json(found)
        atomic_write_text(out / "experiments.json", json.dumps(results, indent=1, allow_nan=False))
    atomic_write_text(out / "experiments.md", render(results))
    log(f"wrote {out / 'experiments.json'}, {out / 'experiments.md'}")
    return results
