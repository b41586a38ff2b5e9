"""report.md, a self-contained report.html and the PNG figures of one bench results dict.

The report is built once as a list of blocks (heading, paragraph, list, table, image) and rendered
twice, to Markdown and to HTML, so the two say the same thing and no Markdown library is needed. The
HTML embeds the PNGs as base64 data URIs and its CSS inline: one file that opens anywhere offline.

Numbers: 3 significant figures; errors in scientific notation; None (not measured) is "—"; NaN is
"nan"; a row whose status is not "ok" shows its status verbatim ("OOM", "error: ...").
"""

from __future__ import annotations

import base64
import html
import json
import math
import numbers
import os
import pathlib
import re

from lpmace.atomic import atomic_write_text
from lpmace.bench import figures
from lpmace.bench.figures import row_key, row_label, status_of

__all__ = ["fmt_error", "fmt_number", "write_report"]

NONE = "—"
_ENVIRONMENT = ("device", "device_name", "driver", "cuda", "torch", "triton", "e3nn", "mace_torch", "python",
                "platform", "lpmace", "git_commit", "date", "command")
# (results key, heading, names a `skipped` row may give the section under, normalised by _slug)
_SECTIONS = (
    ("speed", "Speed", {"speed", "train", "inference"}),
    ("scaling", "Scaling with system size", {"scaling"}),
    ("memory", "Memory", {"memory", "peak_memory"}),
    ("accuracy", "Accuracy against fp64", {"accuracy"}),
    ("equivariance", "Equivariance", {"equivariance"}),
    ("md", "MD stability (NVE)", {"md", "stability", "md_stability", "nve"}),
    ("time_to_accuracy", "Time to accuracy", {"time_to_accuracy", "tta"}),
    ("roofline", "Roofline", {"roofline"}),
)
# The experiment sections (each {"settings", "rows", "seconds"}; what they showed: docs/experiments/),
# shown only when the run asked for them.
_EXPERIMENTS = (
    ("quantize", "Quantized readouts (int8, fp8)"),
    ("species_rank", "Compressed species embeddings (species rank)"),
    ("progressive_correlation", "Progressive correlation order"),
    ("precision_schedule", "Precision schedules"),
    ("startup", "Start-up: a cold and a warm training process"),
)


def _real(value) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def _special(value) -> str | None:
    """The text of a value that is not a finite number, or None for a finite number."""
    if value is None:
        return NONE
    if isinstance(value, bool):
        return "yes" if value else "no"
    if not _real(value):
        return str(value)
    if math.isnan(value):
        return "nan"
    if math.isinf(value):
        return "inf" if value > 0 else "-inf"
    return None


def fmt_error(value, digits: int = 3) -> str:
    """Scientific notation with `digits` significant figures: 1.8e-6 -> "1.80e-6"; 0 -> "0"."""
    special = _special(value)
    if special is not None:
        return special
    if value == 0:
        return "0"
    mantissa, exponent = f"{float(value):.{digits - 1}e}".split("e")
    return f"{mantissa}e{int(exponent)}"


def fmt_number(value, digits: int = 3) -> str:
    """`digits` significant figures, readable: 71.73 -> "71.7", 16812 -> "16,800", 0.0421 -> "0.0421";
    below 1e-3 or from 1e6 on, scientific ("3.20e7"). Integers print whole with separators ("4,096")."""
    special = _special(value)
    if special is not None:
        return special
    if isinstance(value, numbers.Integral):
        return f"{int(value):,}"
    value = float(value)
    size = abs(value)
    if size == 0:
        return "0"
    if size < 1e-3 or size >= 1e6:
        return fmt_error(value, digits)
    if size >= 10 ** (digits - 1):
        return f"{round(value, digits - 1 - math.floor(math.log10(size))):,.0f}"
    return f"{value:.{digits}g}"


def _text(value) -> str:
    return NONE if value is None else str(value)


def _scaled(factor: float):
    """A formatter of value × factor (unit changes: s -> ms, fraction -> %)."""
    return lambda v: fmt_number(v * factor if _real(v) else v)


def _slug(text) -> str:
    return re.sub(r"[^a-z0-9]+", "_", str(text).lower()).strip("_")


def _rows(results: dict, key: str) -> list[dict]:
    rows = results.get(key)
    return [r for r in rows if isinstance(r, dict)] if isinstance(rows, list) else []


def _table(rows: list[dict], columns) -> tuple:
    """A table block; `columns` is [(header, field, formatter)], a field missing from a row is None."""
    return ("table", [c[0] for c in columns], [[fmt(row.get(field)) for _, field, fmt in columns] for row in rows])


_WHO = [("code", "code", _text), ("backend", "backend", _text), ("precision", "precision", _text)]


def _skipped_blocks(results: dict, key: str, aliases: set[str], has_data: bool) -> list:
    """What was skipped in this section and why; a section without data always says so."""
    rows = [r for r in _rows(results, "skipped") if _slug(r.get("section")) in aliases | {key}]
    items = [f"skipped {r.get('what', '?')}: {r.get('why', 'no reason given')}" for r in rows]
    if has_data:
        return [("list", items)] if items else []
    if not items and key == "memory" and figures.on_cpu(results):
        items = ["skipped peak memory: not measured on CPU (torch tracks allocator peaks on CUDA only)"]
    if not items:
        items = [f"skipped {key}: no {key} results in results.json and no reason recorded"]
    return [("p", "Not measured."), ("list", items)]



def _measured(row: dict | None, field: str, fmt=fmt_number) -> str:
    if row is None:
        return NONE
    return fmt(row.get(field)) if status_of(row) == "ok" else status_of(row)


def _baseline(speed: list[dict]) -> tuple | None:
    """The row speed-ups are relative to: mace-torch e3nn fp32 if measured, else lpmace fp32."""
    keys = list(dict.fromkeys(row_key(r) for r in speed))
    preferred = [k for k in keys if k == ("mace-torch", "e3nn", "fp32")]
    preferred += [k for k in keys if k[0] == "lpmace" and k[2] == "fp32"]
    return preferred[0] if preferred else None


def _ratio(numerator, denominator) -> str:
    if not (_real(numerator) and _real(denominator)) or denominator == 0:
        return NONE
    return fmt_number(numerator / denominator)


def _headline(results: dict) -> list:
    speed, accuracy = _rows(results, "speed"), _rows(results, "accuracy")
    equivariance, md = _rows(results, "equivariance"), _rows(results, "md")
    keys = list(dict.fromkeys(row_key(r) for r in speed + accuracy + equivariance + md))
    if not keys:
        return [("p", "No speed, accuracy, equivariance or MD results to summarise.")]
    train, infer = figures.pick_workload(speed, "train"), figures.pick_workload(speed, "infer")
    dataset = figures.pick_dataset(accuracy)
    systems = list(dict.fromkeys(str(r.get("system")) for r in md))
    by_workload = {(r.get("workload"), row_key(r)): r for r in speed}
    errors = {row_key(r): r for r in accuracy if str(r.get("dataset")) == dataset}
    rotations = {row_key(r): r for r in equivariance}
    drifts: dict = {}
    for r in sorted(md, key=lambda r: r.get("engine", "ase") != "ase"):  # the ASE engine's drift where both ran
        drifts.setdefault((str(r.get("system")), row_key(r)), r)
    base = _baseline(speed)

    def speed_up(workload, key):
        mine, ref = by_workload.get((workload, key)), by_workload.get((workload, base))
        if mine is None or ref is None or status_of(mine) != "ok" or status_of(ref) != "ok":
            return NONE
        return _ratio(ref.get("median_ms"), mine.get("median_ms"))

    def drift(row):
        if row is None or row.get("stable") is not False:
            return _measured(row, "drift_mev_per_atom_per_ps", fmt_error)
        return f"unstable at step {fmt_number(row.get('unstable_step'))}"

    headers = ["code", "backend", "precision"]
    if train:
        headers += [f"{train} step (ms)", f"{train} speed-up (×)"]
    if infer:
        headers += [f"{infer} (ms)", f"{infer} peak memory (MB)", f"{infer} speed-up (×)"]
    headers += [f"force error vs fp64 on {dataset} (relative RMSE)" if dataset else "force error vs fp64",
                "equivariance error (relative force RMSE, rotation)"]
    headers += [f"NVE drift {s} (meV/atom/ps)" for s in systems]
    table = []
    for key in keys:
        cells = list(key)
        if train:
            cells += [_measured(by_workload.get((train, key)), "median_ms"), speed_up(train, key)]
        if infer:
            row = by_workload.get((infer, key))
            cells += [_measured(row, "median_ms"), _measured(row, "peak_memory_mb"), speed_up(infer, key)]
        cells += [_measured(errors.get(key), "force_rel_rmse", fmt_error),
                  _measured(rotations.get(key), "force_rel_rmse_rotation", fmt_error)]
        cells += [drift(drifts.get((s, key))) for s in systems]
        table.append(cells)
    note = (f"Speed-up: the median time of {row_label(base)} over the row's, same workload." if base
            else "Speed-up not computed: no mace-torch e3nn fp32 or lpmace fp32 speed row.")
    return [("table", headers, table), ("p", note)]


def _speed(results: dict) -> list:
    return [_table(_rows(results, "speed"), [
        ("workload", "workload", _text), *_WHO, ("atoms", "atoms", fmt_number), ("edges", "edges", fmt_number),
        ("repeats", "repeats", fmt_number), ("median (ms)", "median_ms", fmt_number),
        ("IQR (ms)", "iqr_ms", fmt_number), ("min (ms)", "min_ms", fmt_number), ("max (ms)", "max_ms", fmt_number),
        ("back to back (ms)", "back_to_back_ms", fmt_number),
        ("atom-steps/s", "atom_steps_per_s", fmt_number), ("peak memory (MB)", "peak_memory_mb", fmt_number),
        ("status", "status", _text)])]


def _scaling(results: dict) -> list:
    return [_table(_rows(results, "scaling"), [
        *_WHO, ("atoms", "atoms", fmt_number), ("edges", "edges", fmt_number),
        ("median (ms)", "median_ms", fmt_number), ("atom-steps/s", "atom_steps_per_s", fmt_number),
        ("peak memory (MB)", "peak_memory_mb", fmt_number), ("status", "status", _text)])]


def _memory(results: dict) -> list:
    speed = _rows(results, "speed")
    base_key = _baseline(speed)
    base = {r.get("workload"): r for r in speed if row_key(r) == base_key}
    rows = [{**r, "ratio": _ratio(r.get("peak_memory_mb"), base.get(r.get("workload"), {}).get("peak_memory_mb"))}
            for r in speed if _real(r.get("peak_memory_mb"))]
    return [("p", "Peak memory torch allocated during the measured steps; against system size: see Scaling."),
            _table(rows, [("workload", "workload", _text), *_WHO, ("atoms", "atoms", fmt_number),
                          ("peak memory (MB)", "peak_memory_mb", fmt_number),
                          (f"vs {row_label(base_key) if base_key else 'baseline'} (×)", "ratio", _text)])]


def _accuracy(results: dict) -> list:
    return [("p", "Errors against an fp64 evaluation of the same weights."), _table(_rows(results, "accuracy"), [
        ("dataset", "dataset", _text), ("configs", "configs", fmt_number), ("atoms", "atoms", fmt_number), *_WHO,
        ("energy RMSE (meV/atom)", "energy_rmse_mev_per_atom", fmt_error),
        ("energy max (meV/atom)", "energy_max_mev_per_atom", fmt_error),
        ("force RMSE (meV/Å)", "force_rmse_mev_per_A", fmt_error),
        ("force max (meV/Å)", "force_max_mev_per_A", fmt_error),
        ("force relative RMSE", "force_rel_rmse", fmt_error),
        ("stress RMSE (meV/Å³)", "stress_rmse_mev_per_A3", fmt_error)])]


def _equivariance(results: dict) -> list:
    return [_table(_rows(results, "equivariance"), [
        *_WHO, ("rotations", "rotations", fmt_number),
        ("force relative RMSE, rotation", "force_rel_rmse_rotation", fmt_error),
        ("force relative RMSE, reflection", "force_rel_rmse_reflection", fmt_error),
        ("energy relative error, rotation", "energy_rel_rotation", fmt_error)])]


def _md(results: dict) -> list:
    rows = []
    for row in _rows(results, "md"):
        stable = row.get("stable")
        if stable is False:
            stable = f"no: step {fmt_number(row.get('unstable_step'))} ({row.get('reason') or 'no reason given'})"
        # results.json from before the torch engine: ASE rows with the wall time in s
        engine, ms = row.get("engine", "ase"), row.get("ms_per_step")
        if ms is None and _real(row.get("wall_s_per_step")):
            ms = 1e3 * row["wall_s_per_step"]
        rows.append({**row, "engine": engine, "ms_per_step": ms, "stable": stable,
                     "steps": f"{fmt_number(row.get('steps_done'))} / {fmt_number(row.get('steps'))}"})
    return [("p", "Engines: ase is `lpmace.md.run_md` through `lpmace.Calculator` (a neighbour list per "
                  "force call; the model's time is not taken apart), torch is `lpmace.dynamics.run_dynamics` "
                  "(a Verlet list with a skin, on the device). Same seed, steps and dt: at fp64 both follow "
                  "one trajectory. drift − fp64 drift compares with the same system and engine."),
            _table(rows, [
                ("system", "system", _text), ("atoms", "atoms", fmt_number), ("engine", "engine", _text), *_WHO,
                ("steps done", "steps", _text), ("dt (fs)", "dt_fs", fmt_number),
                ("T (K)", "temperature_K", fmt_number),
                ("drift (meV/atom/ps)", "drift_mev_per_atom_per_ps", fmt_error),
                ("fluctuation (meV/atom)", "fluctuation_mev_per_atom", fmt_error),
                ("drift − fp64 drift (meV/atom/ps)", "drift_vs_fp64", fmt_error), ("stable", "stable", fmt_number),
                ("ms per step", "ms_per_step", fmt_number), ("model ms per step", "model_ms_per_step", fmt_number),
                ("neighbour list builds", "neighbour_list_builds", fmt_number)]),
            ("p", "Per engine and precision, all systems (one run each):"),
            _table(_md_totals(rows), [
                ("engine", "engine", _text), *_WHO, ("systems", "systems", fmt_number), ("atoms", "atoms", fmt_number),
                ("blow-ups", "blow_ups", fmt_number), ("ms per step (sum)", "ms_per_step", fmt_number),
                ("model ms per step (sum)", "model_ms_per_step", fmt_number),
                ("neighbour list builds", "neighbour_list_builds", fmt_number)])]


def _md_totals(rows: list[dict]) -> list[dict]:
    """One row per (engine, code, backend, precision): systems, atoms and blow-ups counted, times per step
    and neighbour list builds summed (None where a row lacks them)."""
    groups: dict = {}
    for row in rows:
        groups.setdefault((row["engine"], *row_key(row)), []).append(row)

    def total(group, field):
        values = [r.get(field) for r in group]
        return sum(values) if all(_real(v) for v in values) else None

    return [{"engine": engine, "code": code, "backend": backend, "precision": precision, "systems": len(group),
             "atoms": total(group, "atoms"), "blow_ups": sum(r.get("unstable_step") is not None for r in group),
             **{f: total(group, f) for f in ("ms_per_step", "model_ms_per_step", "neighbour_list_builds")}}
            for (engine, code, backend, precision), group in groups.items()]


def _time_to_accuracy(results: dict) -> list:
    section = results.get("time_to_accuracy") or {}
    rows = [{**run, "epochs": (run.get("curve") or [{}])[-1].get("epoch")} for run in section.get("runs") or []]
    return [("p", (f"Target {fmt_number(section.get('target_mev_per_A'))} meV/Å, budget "
                  f"{fmt_number(section.get('budget_s'))} s of training per run.")), _table(rows, [
        *_WHO, ("metric", "metric", _text), ("time to target (s)", "time_to_target_s", fmt_number),
        ("final force RMSE (meV/Å)", "final_force_rmse_mev_per_A", fmt_number),
        ("epochs", "epochs", fmt_number), ("status", "status", _text)])]


def _roofline(results: dict) -> list:
    return [_table(_rows(results, "roofline"), [
        ("workload", "workload", _text), *_WHO,
        ("GFLOP", "flop", _scaled(1e-9)), ("GB moved", "bytes", _scaled(1e-9)),
        ("median (ms)", "median_ms", fmt_number), ("achieved TFLOP/s", "achieved_tflop_per_s", fmt_number),
        ("achieved TB/s", "achieved_tb_per_s", fmt_number), ("peak TFLOP/s", "peak_tflop_per_s", fmt_number),
        ("peak TB/s", "peak_tb_per_s", fmt_number),
        ("% of peak FLOP/s", "fraction_of_peak_flop", _scaled(100)),
        ("% of peak bandwidth", "fraction_of_peak_bandwidth", _scaled(100))])]


def _mapping(value) -> str:
    """{"bf16-mixed": 4, "fp32": 2} -> "bf16-mixed 4, fp32 2"."""
    if not isinstance(value, dict):
        return fmt_number(value)
    return ", ".join(f"{k} {fmt_number(v)}" for k, v in value.items()) or NONE


_TEST_RMSE = [("valid E RMSE (meV/atom)", "valid_energy_rmse_mev_per_atom", fmt_number),
              ("valid F RMSE (meV/Å)", "valid_force_rmse_mev_per_A", fmt_number),
              ("test E RMSE (meV/atom)", "test_energy_rmse_mev_per_atom", fmt_number),
              ("test F RMSE (meV/Å)", "test_force_rmse_mev_per_A", fmt_number)]
_SETS = ("3bpa", "ethanol", "si")
# (rows of the section that go in one table, its columns)
_EXPERIMENT_TABLES = {
    "quantize": [(None, [
        ("readout", "mode", _text), ("supported", "supported", fmt_number), ("converted", "converted", _text),
        ("test E RMSE (meV/atom)", "E_rmse_meV_atom", fmt_number),
        ("test F RMSE (meV/Å)", "F_rmse_meV_A", fmt_number),
        ("energy change (meV/atom RMS)", "dE_rms_meV_atom", fmt_error),
        ("force change (relative RMSE)", "dF_rel_rmse", fmt_error),
        ("force change max (meV/Å)", "dF_max_meV_A", fmt_error),
        ("file bytes", "model_bytes", fmt_number), ("readout bytes", "readout_bytes", fmt_number),
        ("ms per config", "ms_per_config", fmt_number), ("time ratio", "time_ratio", fmt_number),
        ("readout alone, 4096×128 (ms)", "readout_ms_4096x128", fmt_number),
        ("readout time ratio", "readout_time_ratio", fmt_number), ("note", "note", _text)])],
    "species_rank": [
        ("count", [("S", "S", fmt_number), ("rank", "rank", _text),
                   ("element params", "element_params", fmt_number), ("KiB fp32", "element_kib", fmt_number),
                   ("KiB, int8 embedding", "element_kib_int8_embedding", fmt_number),
                   ("all params", "total_params", fmt_number), ("element share (%)", "element_fraction", _scaled(100))]),
        ("accuracy", [("S", "S", fmt_number), ("rank", "rank", _text), ("method", "method", _text),
                      ("element params", "element_params", fmt_number),
                      *((f"E RMSE {s} (meV/atom)", f"E_rmse_{s}", fmt_number) for s in _SETS),
                      *((f"F RMSE {s} (meV/Å)", f"F_rmse_{s}", fmt_number) for s in _SETS),
                      ("F deviation from full (meV/Å)", "F_dev_from_full", fmt_number),
                      ("train time (s)", "train_time_s", fmt_number)])],
    "progressive_correlation": [(None, [
        ("run", "run", _text), ("schedule", "schedule", _text), ("epochs", "epochs", fmt_number),
        ("train time (s)", "train_time_s", fmt_number), ("s per epoch at ν", "seconds_per_epoch", _mapping),
        *_TEST_RMSE, ("time to the fixed run's final F RMSE (s)", "time_to_fixed_final_s", fmt_number),
        ("F RMSE at the earlier end (meV/Å)", "force_rmse_at_common_time_mev_per_A", fmt_number),
        ("status", "status", _text)])],
    "precision_schedule": [(None, [
        ("run", "run", _text), ("precision", "precision", _text), ("epochs", "epochs", fmt_number),
        ("epochs by precision", "epochs_by_precision", _mapping), ("train time (s)", "train_time_s", fmt_number),
        ("s per epoch", "seconds_per_epoch", _mapping), ("skipped steps", "skipped_steps", fmt_number), *_TEST_RMSE,
        ("time to the fp32 run's final F RMSE (s)", "time_to_fp32_final_s", fmt_number),
        ("F RMSE at the earliest end (meV/Å)", "force_rmse_at_common_time_mev_per_A", fmt_number),
        ("status", "status", _text)])],
    "startup": [(None, [
        ("process", "process", _text), ("first step done (s)", "first_step_s", fmt_number),
        ("graphs compiled", "compiles", fmt_number), ("epoch loss", "train_loss", fmt_number),
        ("epoch time (s)", "train_time_s", fmt_number), ("process (s)", "process_s", fmt_number),
        ("status", "status", _text)])],
}


def _experiment(results: dict, key: str) -> list:
    """Settings, then the rows (curves stay in results.json); what the numbers showed is in docs/."""
    section = results.get(key) or {}
    rows = [r for r in section.get("rows") or [] if isinstance(r, dict)]
    settings = {**(section.get("settings") or {}), "wall time (s)": section.get("seconds")}
    blocks = [("p", f"What it measures and what it showed: docs/experiments/{key}.md."), _key_values(settings)]
    for part, columns in _EXPERIMENT_TABLES[key]:
        blocks.append(_table([r for r in rows if part is None or r.get("part") == part], columns))
    return blocks


_BUILDERS = {"speed": _speed, "scaling": _scaling, "memory": _memory, "accuracy": _accuracy,
             "equivariance": _equivariance, "md": _md, "time_to_accuracy": _time_to_accuracy, "roofline": _roofline}
_SECTION_FIGURES = {"scaling": "scaling.png", "md": "nve.png", "time_to_accuracy": "time_to_accuracy.png"}


def _has_data(results: dict, key: str) -> bool:
    if key == "memory":
        return any(_real(r.get("peak_memory_mb")) for r in _rows(results, "speed"))
    if key == "time_to_accuracy":
        return bool((results.get(key) or {}).get("runs"))
    return bool(_rows(results, key))


def _figure_blocks(name: str, written: dict, not_drawn: dict) -> list:
    if name in written:
        return [("img", name, name.removesuffix(".png").replace("_", " "))]
    return [("p", f"Figure {name} not drawn: {not_drawn.get(name, 'no data')}.")]


def _key_values(mapping: dict, order=()) -> tuple:
    keys = [k for k in order if k in mapping] + [k for k in mapping if k not in order]
    if not keys:
        return ("p", "None recorded.")

    def text(value):
        if isinstance(value, (list, tuple)):
            return ", ".join(map(str, value)) or NONE
        return json.dumps(value, sort_keys=True) if isinstance(value, dict) else fmt_number(value)
    return ("table", ["field", "value"], [[k, text(mapping[k])] for k in keys])


def _blocks(results: dict, written: dict, not_drawn: dict) -> list:
    environment, settings = results.get("environment") or {}, dict(results.get("settings") or {})
    model_config = settings.pop("model_config", None)
    blocks = [("h", 1, "lpmace bench report"),
              ("p", (f"{environment.get('device_name') or environment.get('device') or 'unknown device'}, "
                    f"{environment.get('date') or 'undated'}. Compare numbers within this report only: "
                    f"every row was measured in the same run.")),
              ("h", 2, "Headline"), *_headline(results),
              *_figure_blocks("pareto.png", written, not_drawn),
              ("h", 2, "Environment"), _key_values({k: environment.get(k) for k in _ENVIRONMENT} | environment,
                                                   _ENVIRONMENT),
              ("h", 2, "Settings"), _key_values(settings)]
    if isinstance(model_config, dict):
        blocks += [("h", 3, "Model configuration"), _key_values(model_config)]
    for key, heading, aliases in _SECTIONS:
        has_data = _has_data(results, key)
        blocks += [("h", 2, heading), *(_BUILDERS[key](results) if has_data else [])]
        if has_data and key in _SECTION_FIGURES:
            blocks += _figure_blocks(_SECTION_FIGURES[key], written, not_drawn)
        blocks += _skipped_blocks(results, key, aliases, has_data)
    for key, heading in _EXPERIMENTS:
        asked = [r for r in _rows(results, "skipped") if _slug(r.get("section")) == key]
        if key in results or asked:
            blocks += [("h", 2, heading), *(_experiment(results, key) if key in results else []),
                       *_skipped_blocks(results, key, set(), key in results)]
    known = set().union(*(aliases | {key} for key, _, aliases in _SECTIONS), (key for key, _ in _EXPERIMENTS))
    others = [r for r in _rows(results, "skipped") if _slug(r.get("section")) not in known]
    if others:
        blocks += [("h", 2, "Other skipped measurements"),
                   ("list", [f"skipped {r.get('what', '?')} ({r.get('section')}): "
                             f"{r.get('why', 'no reason given')}" for r in others])]
    return blocks


def _markdown(blocks: list) -> str:
    def cell(text: str) -> str:
        return str(text).replace("|", "\\|").replace("\n", " ")

    parts = []
    for block in blocks:
        kind = block[0]
        if kind == "h":
            parts.append("#" * block[1] + " " + block[2])
        elif kind == "p":
            parts.append(block[1])
        elif kind == "list":
            parts.append("\n".join(f"- {item}" for item in block[1]))
        elif kind == "table":
            lines = [block[1], ["---"] * len(block[1]), *block[2]]
            parts.append("\n".join("| " + " | ".join(cell(c) for c in line) + " |" for line in lines))
        elif kind == "img":
            parts.append(f"![{block[2]}]({block[1]})")
    return "\n\n".join(parts) + "\n"


_CSS = """body{font-family:system-ui,sans-serif;max-width:1400px;margin:2em auto;padding:0 1em;color:#222}
table{border-collapse:collapse;margin:1em 0;font-size:13px}th,td{border:1px solid #ccc;padding:3px 7px}
th{background:#f2f2f2;text-align:left}td{font-variant-numeric:tabular-nums}tr:nth-child(even){background:#fafafa}
img{max-width:100%}h2{border-bottom:1px solid #ddd;padding-bottom:3px;margin-top:2em}"""


def _html(blocks: list, out: pathlib.Path) -> str:
    esc = html.escape
    parts = []
    for block in blocks:
        kind = block[0]
        if kind == "h":
            parts.append(f"<h{block[1]}>{esc(block[2])}</h{block[1]}>")
        elif kind == "p":
            parts.append(f"<p>{esc(block[1])}</p>")
        elif kind == "list":
            parts.append("<ul>" + "".join(f"<li>{esc(item)}</li>" for item in block[1]) + "</ul>")
        elif kind == "table":
            head = "".join(f"<th>{esc(h)}</th>" for h in block[1])
            body = "".join("<tr>" + "".join(f"<td>{esc(str(c))}</td>" for c in row) + "</tr>" for row in block[2])
            parts.append(f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>")
        elif kind == "img":
            data = base64.b64encode((out / block[1]).read_bytes()).decode("ascii")
            parts.append(f'<img src="data:image/png;base64,{data}" alt="{esc(block[2])}">')
    return ('<!DOCTYPE html>\n<html lang="en">\n<head><meta charset="utf-8"><title>lpmace bench report</title>'
            f"<style>{_CSS}</style></head>\n<body>\n" + "\n".join(parts) + "\n</body>\n</html>\n")


def write_report(results: dict, out: str | os.PathLike) -> dict[str, pathlib.Path]:
    """Write out/report.md, out/report.html (self-contained: PNGs embedded as base64 data URIs, inline
    CSS, no external links or scripts) and the PNG figures that have data (pareto.png, scaling.png,
    nve.png, time_to_accuracy.png), creating `out` if needed; every write is atomic. `results` is the
    results.json dict (schema in `lpmace.bench`); results.json itself is the runner's to write.
    Returns {file name: path} of everything written."""
    out = pathlib.Path(out)
    out.mkdir(parents=True, exist_ok=True)
    written, not_drawn = figures.write_figures(results, out)
    blocks = _blocks(results, written, not_drawn)
    written["report.md"] = atomic_write_text(out / "report.md", _markdown(blocks))
    written["report.html"] = atomic_write_text(out / "report.html", _html(blocks, out))
    return written
