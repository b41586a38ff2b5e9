"""Parity plots of predictions against references (PNG files, no display).

Figures are drawn on matplotlib's Agg canvas directly (`matplotlib.figure.Figure`), never through
pyplot, so plotting neither needs a display nor changes the process's matplotlib backend.
"""

from __future__ import annotations

import os
import pathlib
from typing import TYPE_CHECKING, Optional

import numpy as np

from lpmace.atomic import atomic_open

if TYPE_CHECKING:
    from lpmace.evaluate import Metrics

__all__ = ["parity_plot"]


def _panel(ax, predicted: np.ndarray, reference: np.ndarray, quantity: str, unit: str,
           rmse: Optional[float], rmse_unit: str) -> None:
    """One parity panel: predicted against reference with the y = x line and the RMSE."""
    ax.set_xlabel(f"reference {quantity} ({unit})")
    ax.set_ylabel(f"predicted {quantity} ({unit})")
    if reference.size == 0:
        ax.text(0.5, 0.5, f"no reference {quantity}", ha="center", va="center", transform=ax.transAxes)
        return
    finite = np.isfinite(predicted) & np.isfinite(reference)
    values = np.concatenate([predicted[finite], reference[finite]])
    low, high = (float(values.min()), float(values.max())) if values.size else (0.0, 1.0)
    pad = 0.05 * (high - low or 1.0)
    ax.plot([low - pad, high + pad], [low - pad, high + pad], color="0.6", lw=1, zorder=1)
    ax.scatter(reference, predicted, s=4, alpha=0.5, lw=0, zorder=2)
    ax.set_xlim(low - pad, high + pad)
    ax.set_ylim(low - pad, high + pad)
    ax.set_aspect("equal")
    if rmse is not None:
        ax.text(0.04, 0.96, f"RMSE {rmse:.3g} {rmse_unit}\nn = {reference.size:,}",
                ha="left", va="top", transform=ax.transAxes)


def parity_plot(metrics: "Metrics", path: str | os.PathLike, title: str = "") -> pathlib.Path:
    """Write a PNG with two panels: energy per atom (eV/atom) and force components (eV/Å),
    predicted against reference. The file is written atomically (temp file + rename); the folder
    must exist. Returns the path written."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    path = pathlib.Path(path)
    fig = Figure(figsize=(10, 4.8), layout="constrained")
    FigureCanvasAgg(fig)
    energy_ax, force_ax = fig.subplots(1, 2)
    _panel(energy_ax, metrics.energy_per_atom_pred, metrics.energy_per_atom_ref, "energy", "eV/atom",
           metrics.energy_rmse_mev_per_atom, "meV/atom")
    _panel(force_ax, metrics.forces_pred.ravel(), metrics.forces_ref.ravel(), "force", "eV/Å",
           metrics.force_rmse_mev_per_A, "meV/Å")
    energy_ax.set_title("energy per atom")
    force_ax.set_title("force components")
    if title:
        fig.suptitle(title)

    with atomic_open(path, "wb") as f:
        fig.savefig(f, format="png", dpi=120)
    return path
