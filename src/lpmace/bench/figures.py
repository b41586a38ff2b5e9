"""PNG figures of a bench results dict (schema in `lpmace.bench`): speed against accuracy (Pareto),
scaling with system size, NVE energy traces and time-to-accuracy curves.

Drawn on matplotlib's Agg canvas directly (`Figure`), never through pyplot, as in `lpmace.plots`: no
display is needed and the process's matplotlib backend is left alone. A figure is drawn only when its
section has something to plot; otherwise its builder says why in one line, which the report prints.
"""

from __future__ import annotations

import math
import numbers
import os
import pathlib
from collections.abc import Callable, Iterable

import numpy as np

from lpmace.atomic import atomic_open

__all__ = ["FIGURES", "on_cpu", "pick_dataset", "pick_workload", "row_key", "row_label", "status_of",
           "write_figures"]

Key = tuple[str, str, str]
_COLOURS = ("tab:blue", "tab:orange", "tab:green", "tab:red", "tab:purple", "tab:brown", "tab:pink",
            "tab:olive", "tab:cyan", "tab:gray")
_MARKERS = ("o", "s", "^", "D", "v", "P", "X", "h")


def row_key(row: dict) -> Key:
    """(code, backend, precision): what produced a row."""
    return str(row.get("code", "?")), str(row.get("backend", "?")), str(row.get("precision", "?"))


def row_label(key: Key) -> str:
    return " ".join(key)


def status_of(row: dict) -> str:
    """The row's status; rows without one were measured ("ok")."""
    return str(row.get("status") or "ok")


def finite(value) -> bool:
    """A real number that is not NaN or infinite (None, bools and strings are not)."""
    return isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(float(value))


def on_cpu(results: dict) -> bool:
    """Whether the run was on a CPU (its environment names a device, not a CUDA one): no peak memory there."""
    device = str((results.get("environment") or {}).get("device") or "")
    return bool(device) and "cuda" not in device.lower()


def pick_workload(rows: Iterable[dict], prefix: str) -> str | None:
    """The first workload name (in row order) that starts with `prefix` ("infer", "train")."""
    for row in rows:
        name = str(row.get("workload") or "")
        if name.lower().startswith(prefix):
            return name
    return None


def pick_dataset(rows: Iterable[dict]) -> str | None:
    """The accuracy dataset the headline and the Pareto plot use: the W2 synthetic box if measured (the
    inference workload, so error and speed describe the same graph), else the first dataset."""
    names = list(dict.fromkeys(str(row.get("dataset")) for row in rows))
    return next((n for n in names if n.startswith("W2")), names[0] if names else None)


class _Styles:
    """Colour by precision, marker by (code, backend): the same row looks the same in every figure."""

    def __init__(self, keys: Iterable[Key]):
        keys = list(dict.fromkeys(keys))
        precisions = list(dict.fromkeys(k[2] for k in keys))
        engines = list(dict.fromkeys(k[:2] for k in keys))
        self._colour = {p: _COLOURS[i % len(_COLOURS)] for i, p in enumerate(precisions)}
        self._marker = {e: _MARKERS[i % len(_MARKERS)] for i, e in enumerate(engines)}

    def __call__(self, key: Key) -> dict:
        return {"color": self._colour.get(key[2], "black"), "marker": self._marker.get(key[:2], "o")}


def _figure(panels: int, width: float = 6.4, height: float = 4.8, columns: int = 3):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    ncols = min(panels, columns)
    nrows = math.ceil(panels / ncols)
    fig = Figure(figsize=(width * ncols, height * nrows), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(nrows, ncols, squeeze=False).ravel()
    for ax in axes[panels:]:
        ax.set_visible(False)
    return fig, list(axes[:panels])


def _note(ax, text: str, y: float = 0.02) -> None:
    ax.text(0.01, y, text, ha="left", va="bottom", fontsize=7, color="0.35", transform=ax.transAxes, wrap=True)


def _legend(ax) -> None:
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=7)


def _plain_ticks(axis) -> None:
    """Tick labels of a log axis as plain numbers ("20", "6e+04"), easier to read off than 2×10¹."""
    from matplotlib.ticker import FuncFormatter

    axis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    axis.set_minor_formatter(FuncFormatter(lambda v, _: f"{v:g}" if f"{v:g}"[0] in "1235" else ""))


def pareto_figure(results: dict, style: _Styles):
    """x: relative force RMSE against fp64 (log), y: atom-steps/s (log); a panel for the inference
    workload and one for the training workload. fp64 (error exactly 0) sits on the left edge."""
    accuracy, speed = results.get("accuracy") or [], results.get("speed") or []
    dataset = pick_dataset(accuracy)
    if dataset is None:
        return "no accuracy rows: the force error against fp64 is the x axis"
    errors = {row_key(r): r.get("force_rel_rmse") for r in accuracy if str(r.get("dataset")) == dataset}
    panels = []
    for workload in filter(None, (pick_workload(speed, "infer"), pick_workload(speed, "train"))):
        points, left_out = [], []
        for row in (r for r in speed if r.get("workload") == workload):
            key, error, rate = row_key(row), errors.get(row_key(row)), row.get("atom_steps_per_s")
            if status_of(row) != "ok" or not finite(rate):
                left_out.append(f"{row_label(key)} ({status_of(row)})")
            elif not finite(error) or error < 0:
                left_out.append(f"{row_label(key)} (force error {error})")
            else:
                points.append((key, float(error), float(rate)))
        if points:
            panels.append((workload, points, left_out))
    if not panels:
        return "no speed row of an infer/train workload has a finite force error against fp64"

    fig, axes = _figure(len(panels))
    for ax, (workload, points, left_out) in zip(axes, panels):
        positive = [e for _, e, _ in points if e > 0]
        # A log axis cannot show 0: the fp64 reference goes on the left edge, a decade below the best.
        edge = min(positive) / 10 if positive else 1e-12
        placed = []
        for key, error, rate in points:
            x = error if error > 0 else edge
            ax.scatter([x], [rate], s=45, zorder=3, clip_on=False, **style(key))
            text = row_label(key) + ("\n0 (reference)" if error == 0 else "")
            # A point within ~15% of a labelled one in both x and y (fp32 of both codes) is labelled below
            # it, so the two labels do not print on top of each other.
            crowded = any(abs(math.log10(x / px)) < 0.2 and abs(math.log10(rate / py)) < 0.06 for px, py in placed)
            placed.append((x, rate))
            ax.annotate(text, (x, rate), xytext=(5, -16 if crowded else 4), textcoords="offset points", fontsize=7)
        ax.set_xscale("log")
        ax.set_yscale("log")
        _plain_ticks(ax.yaxis)
        ax.set_xlim(edge, max(positive) * 10 if positive else 1.0)
        # Left-out rows go under the axis label, where they cannot cover a point.
        ax.set_xlabel(f"force error against fp64 on {dataset} (relative RMSE)"
                      + ("\nnot shown: " + "; ".join(left_out) if left_out else ""))
        ax.set_ylabel(f"{workload}: atom-steps/s")
        ax.set_title(f"{workload}: up and to the left is better")
    return fig


def scaling_figure(results: dict, style: _Styles):
    """Median time and peak memory against atoms (log-log), one line per (code, backend, precision);
    a series that failed (OOM, error) ends with a cross and the status at the first atom count that did."""
    rows = results.get("scaling") or []
    if not rows:
        return "no scaling rows"
    series: dict[Key, list[dict]] = {}
    for row in rows:
        if finite(row.get("atoms")):
            series.setdefault(row_key(row), []).append(row)
    if not series:
        return "no scaling row has an atom count"
    memory_measured = any(finite(r.get("peak_memory_mb")) for r in rows)
    fig, (time_ax, memory_ax) = _figure(2)
    panels = [(time_ax, "median_ms", "median time (ms)")]
    if memory_measured:
        panels.append((memory_ax, "peak_memory_mb", "peak memory (MB)"))
    else:
        memory_ax.text(0.5, 0.5, "peak memory not measured" + (" on CPU" if on_cpu(results) else ""), ha="center",
                       va="center", transform=memory_ax.transAxes)
        memory_ax.set_axis_off()
    for ax, field, ylabel in panels:
        measured = [r[field] for r in rows if status_of(r) == "ok" and finite(r.get(field)) and r[field] > 0]
        floor = min(measured) if measured else 1.0
        for key, group in series.items():
            group = sorted(group, key=lambda r: r["atoms"])
            ok = [(r["atoms"], r[field]) for r in group if status_of(r) == "ok" and finite(r.get(field))]
            if ok:
                ax.plot(*zip(*ok), label=row_label(key), lw=1.2, ms=5, **style(key))
            failed = next((r for r in group if status_of(r) != "ok"), None)
            if failed is not None:
                # No value at the failed size: the cross sits level with the series' last point, joined
                # to it by a dotted line so it reads as where the series stopped, not as a measurement.
                y = ok[-1][1] if ok else floor
                if ok:
                    ax.plot([ok[-1][0], failed["atoms"]], [y, y], ls=":", lw=1, color=style(key)["color"])
                ax.scatter([failed["atoms"]], [y], marker="x", s=60, zorder=4, color=style(key)["color"])
                ax.annotate(status_of(failed).split(":")[0], (failed["atoms"], y), xytext=(0, -14), ha="center",
                            textcoords="offset points", fontsize=7, color=style(key)["color"])
        ax.set_xscale("log")
        ax.set_yscale("log")
        _plain_ticks(ax.xaxis)
        _plain_ticks(ax.yaxis)
        ax.margins(x=0.08)  # room for the status under a cross at the largest size
        ax.set_xlabel("atoms")
        ax.set_ylabel(ylabel)
    _legend(time_ax)
    time_ax.set_title("time per step against system size")
    if memory_measured:
        memory_ax.set_title("peak memory against system size")
    return fig


def nve_figure(results: dict, style: _Styles):
    """Per MD system one panel: total energy minus its first value (meV/atom) against time (ps), one
    line per precision and engine (the torch engine dashed, over ASE's solid line: at fp64 they
    coincide); an unstable run ends with a cross where it stopped."""
    rows = [r for r in results.get("md") or [] if (r.get("trace") or {}).get("time_fs")]
    if not rows:
        return "no md rows with an energy trace"
    systems = list(dict.fromkeys(str(r.get("system")) for r in rows))
    fig, axes = _figure(len(systems), columns=2)
    for ax, system in zip(axes, systems):
        group = [r for r in rows if str(r.get("system")) == system]
        full_labels = len({row_key(r)[:2] for r in group}) > 1
        engines = len({r.get("engine", "ase") for r in group}) > 1
        stable_span, unstable_span = 0.0, 0.0
        for row in group:
            key = row_key(row)
            time = np.asarray([np.nan if t is None else t for t in row["trace"]["time_fs"]], float)
            energy = np.asarray([np.nan if e is None else e for e in row["trace"].get("total_mev_per_atom") or []],
                                float)
            n = min(len(time), len(energy))
            time, energy = time[:n] / 1000.0, energy[:n]
            ok = np.isfinite(time) & np.isfinite(energy)
            label = row_label(key) if full_labels else key[2]
            engine = str(row.get("engine", "ase"))
            label = f"{engine} {label}" if engines else label
            if not ok.any():
                _note(ax, f"{label}: no finite energy in the trace")
                continue
            shifted = energy[ok] - energy[ok][0]
            ax.plot(time[ok], shifted, lw=1, label=label, color=style(key)["color"],
                    linestyle="--" if engine == "torch" else "-")
            span = float(np.max(np.abs(shifted)))
            if row.get("stable") is False:
                unstable_span = max(unstable_span, span)
                ax.scatter([time[ok][-1]], [shifted[-1]], marker="x", s=60, zorder=4, color=style(key)["color"])
                ax.annotate(f"unstable at step {row.get('unstable_step')}", (time[ok][-1], shifted[-1]),
                            xytext=(4, 4), textcoords="offset points", fontsize=7, color=style(key)["color"])
            else:
                stable_span = max(stable_span, span)
        # A blow-up is orders of magnitude above a stable run's wobble: symlog keeps both readable.
        if stable_span > 0 and unstable_span > 10 * stable_span:
            ax.set_yscale("symlog", linthresh=stable_span)
        atoms = group[0].get("atoms")
        ax.set_title(f"{system} ({atoms} atoms)" if atoms is not None else system)
        ax.set_xlabel("time (ps)")
        ax.set_ylabel("total energy − initial (meV/atom)")
        _legend(ax)
    return fig


def time_to_accuracy_figure(results: dict, style: _Styles):
    """Force RMSE (meV/Å, log) against training wall time (s) per run; dashed line at the target."""
    section = results.get("time_to_accuracy") or {}
    runs = []
    for run in section.get("runs") or []:
        curve = [(p.get("time_s"), p.get("force_rmse_mev_per_A")) for p in run.get("curve") or []]
        curve = [(t, f) for t, f in curve if finite(t) and finite(f)]
        if curve:
            runs.append((run, curve))
    if not runs:
        return "no time-to-accuracy curve has a finite point"
    fig, (ax,) = _figure(1, width=7.2)
    metrics = {str(run.get("metric")) for run, _ in runs}
    for run, curve in runs:
        key = row_key(run)
        label = row_label(key) + (f" ({run.get('metric')})" if len(metrics) > 1 else "")
        ax.plot(*zip(*curve), lw=1.2, ms=3, label=label, **style(key))
        if finite(run.get("time_to_target_s")) and finite(section.get("target_mev_per_A")):
            ax.scatter([run["time_to_target_s"]], [section["target_mev_per_A"]], marker="*", s=120, zorder=4,
                       color=style(key)["color"])
    if finite(section.get("target_mev_per_A")):
        ax.axhline(section["target_mev_per_A"], ls="--", color="0.4",
                   label=f"target {section['target_mev_per_A']:g} meV/Å")
    if finite(section.get("budget_s")):
        ax.axvline(section["budget_s"], ls=":", color="0.6", label=f"budget {section['budget_s']:g} s")
    ax.set_yscale("log")
    _plain_ticks(ax.yaxis)
    ax.set_xlabel("training wall time (s)")
    ax.set_ylabel(("force RMSE" if len(metrics) > 1 else metrics.pop()) + " (meV/Å)")
    ax.set_title("time to accuracy")
    _legend(ax)
    return fig


# File name -> builder; a builder returns a Figure, or one line saying why there is nothing to draw.
FIGURES: dict[str, Callable] = {
    "pareto.png": pareto_figure,
    "scaling.png": scaling_figure,
    "nve.png": nve_figure,
    "time_to_accuracy.png": time_to_accuracy_figure,
}


def write_figures(results: dict, out: str | os.PathLike) -> tuple[dict[str, pathlib.Path], dict[str, str]]:
    """Draw every figure of `FIGURES` that has data into the existing folder `out` (atomic writes).
    Returns ({file name: path} written, {file name: why not drawn}). A figure that fails to draw is
    reported as not drawn with its error, so one bad row never costs the rest of the report."""
    out = pathlib.Path(out)
    sections = ("speed", "scaling", "accuracy", "equivariance", "md")
    rows = [r for s in sections for r in results.get(s) or []]
    rows += (results.get("time_to_accuracy") or {}).get("runs") or []
    style = _Styles(row_key(r) for r in rows)
    written, not_drawn = {}, {}
    for name, build in FIGURES.items():
        try:
            fig = build(results, style)
            if isinstance(fig, str):
                not_drawn[name] = fig
                continue
            with atomic_open(out / name, "wb") as f:
                fig.savefig(f, format="png", dpi=110)
        # A report without one figure beats no report at the end of an hour of measurements.
        except Exception as err:  # noqa: BLE001
            not_drawn[name] = f"drawing failed: {type(err).__name__}: {err}"
            continue
        written[name] = out / name
    return written, not_drawn
