"""The loop's report: per round and overall, as JSON, Markdown and one PNG (overall only).

Per round: training-set size, the committee's test force RMSE against the oracle on the fixed
held-out set, its mean uncertainty (largest per-atom force spread of a frame, averaged over the
sampled frames), Spearman's rank correlation between that uncertainty and the true force RMSE of
the labelled frames (selected and random), the true force RMSE of the selected frames and of the
random MD frames of the same round, the wall time of each phase and the number of processes the
train phase ran on (torchrun ranks; 1 without torchrun). Also the precision policies
of training and sampling (the test set is evaluated as sampling runs).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

from lpmace.atomic import atomic_open, atomic_write_text

PHASE_TIMES = ("train", "sample", "select", "label", "append")
COLUMNS = (  # (key, heading, format)
    ("round", "round", "{}"), ("train_size", "train size", "{}"),
    ("test_force_rmse_meV_per_A", "test F RMSE (meV/Å)", "{:.1f}"),
    ("test_energy_rmse_meV_per_atom", "test E RMSE (meV/atom)", "{:.2f}"),
    ("mean_uncertainty_eV_per_A", "mean uncertainty (eV/Å)", "{:.4f}"),
    ("spearman_uncertainty_error", "Spearman(u, err)", "{:.2f}"),
    ("selected_force_rmse_meV_per_A", "selected F RMSE (meV/Å)", "{:.1f}"),
    ("random_force_rmse_meV_per_A", "random F RMSE (meV/Å)", "{:.1f}"),
    ("ranks", "train ranks", "{}"),
)


def round_rows(state: dict) -> list[dict]:
    """One flat row per round with any recorded phase (missing numbers: None)."""
    rows = []
    for key in sorted(state.get("rounds", {}), key=int):
        phases = state["rounds"][key]
        row = {"round": int(key)}
        for phase in ("train", "sample", "label", "append"):
            row.update({k: v for k, v in phases.get(phase, {}).items() if not isinstance(v, (list, dict))})
        row["train_precision"] = phases.get("train", {}).get("precision")
        row["sample_precision"] = phases.get("sample", {}).get("precision")
        row.pop("precision", None)
        row["wall_s"] = {p: phases[p]["wall_s"] for p in PHASE_TIMES if p in phases}
        rows.append(row)
    return rows


def _markdown(rows: list[dict], title: str, state: dict) -> str:
    cfg = state["config"]
    lines = [f"# {title}", "",
             f"committee of {cfg['committee']}, oracle {cfg['oracle']}; precision: train "
             f"{cfg['train'].get('precision', 'fp32')}, sample {cfg['sample']['precision']}. "
             "Uncertainty: largest per-atom force spread of a frame (norm of the per-component std); "
             "correlation: Spearman's rank correlation over the labelled frames.", "",
             "| " + " | ".join(h for _, h, _ in COLUMNS) + " | wall s (train/sample/select/label/append) |",
             "|" + "---|" * (len(COLUMNS) + 1)]
    for row in rows:
        cells = ["–" if row.get(k) is None or (isinstance(row.get(k), float) and math.isnan(row[k]))
                 else f.format(row[k]) for k, _, f in COLUMNS]
        times = "/".join(f"{row['wall_s'][p]:.1f}" if p in row["wall_s"] else "–" for p in PHASE_TIMES)
        lines.append("| " + " | ".join(cells) + f" | {times} |")
    return "\n".join(lines) + "\n"


def _plot(state: dict, rows: list[dict], path: Path) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(11, 8), layout="constrained")
    FigureCanvasAgg(fig)
    (rmse, size), (compare, scatter) = fig.subplots(2, 2)
    rounds = [r["round"] for r in rows]
    rmse.plot(rounds, [r.get("test_force_rmse_meV_per_A") for r in rows], "o-")
    rmse.set(xlabel="round", ylabel="test force RMSE (meV/Å)", title="committee vs oracle, held-out set")
    size.plot(rounds, [r.get("train_size") for r in rows], "o-")
    size.set(xlabel="round", ylabel="training structures", title="training-set size")
    width = 0.38
    for shift, key, name in ((-width / 2, "selected_force_rmse_meV_per_A", "selected"),
                             (width / 2, "random_force_rmse_meV_per_A", "random MD frames")):
        compare.bar([x + shift for x in rounds], [r.get(key) or 0 for r in rows], width, label=name)
    compare.set(xlabel="round", ylabel="true force RMSE (meV/Å)", title="selected vs random frames")
    compare.legend()
    for ax in (rmse, size, compare):
        ax.set_xticks(rounds)
    for key in sorted(state.get("rounds", {}), key=int):
        label = state["rounds"][key].get("label")
        if label:
            scatter.scatter(label["frame_uncertainty_eV_per_A"], label["frame_force_rmse_meV_per_A"], s=12,
                            label=f"round {key}")
    scatter.set(xlabel="uncertainty (eV/Å)", ylabel="true force RMSE (meV/Å)", title="uncertainty vs error")
    if state.get("rounds"):
        scatter.legend()
    with atomic_open(path, "wb") as f:
        fig.savefig(f, format="png", dpi=100)


def write_reports(out: Path, state: dict) -> None:
    """report.{json,md,png} in `out`, and report.{json,md} in each finished round's folder."""
    rows = round_rows(state)
    for row in rows:
        folder = out / f"round_{row['round']}"
        if "append" in state["rounds"][str(row["round"])] and folder.is_dir():
            atomic_write_text(folder / "report.json", json.dumps(row, indent=1))
            atomic_write_text(folder / "report.md", _markdown([row], f"active learning, round {row['round']}", state))
    summary = {"config": state["config"], "setup": state.get("setup"), "rounds": rows}
    atomic_write_text(out / "report.json", json.dumps(summary, indent=1))
    atomic_write_text(out / "report.md", _markdown(rows, "active learning", state))
    _plot(state, rows, out / "report.png")
