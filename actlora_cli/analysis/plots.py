"""Figures for the studies, as PNG files: layer scores with the chosen layers marked, the C(k) curve with
the tau thresholds, per-seed score profiles, and scorer-by-layer (or task-by-task) heatmaps; for run
comparisons, metric against trainable parameters and step time by phase.

Every figure is drawn on its own Agg canvas instead of through pyplot with matplotlib.use("Agg"): importing
this module never switches the backend of the caller (a notebook, say), needs no display, and leaves no
figure registered in pyplot's global state to leak."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import matplotlib
import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.patches import Patch

from ..selection import cumulative_importance, k_for_tau

DPI = 100


def _figure(n_columns: int, height: float = 4.0) -> Figure:
    """A figure wide enough for ``n_columns`` layer (or task) labels, on an Agg canvas."""
    fig = Figure(figsize=(max(6.0, 0.45 * n_columns + 2.0), height), dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _save(fig: Figure, path: Path | str) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png")
    return path


def plot_layer_scores(
    scores: Sequence[float],
    selected: Sequence[int],
    path: Path | str,
    title: str,
    stderr: Sequence[float] | None = None,
) -> Path:
    """Bar chart of per-layer scores; the selected layers are filled, the others pale (no legend when none is
    selected: the probe's own plot); ``stderr``: error bars of twice the standard error."""
    fig = _figure(len(scores))
    ax = fig.add_subplot()
    chosen = set(selected)
    layers = range(len(scores))
    colors = {True: "tab:orange", False: "lightsteelblue"}
    errors = None if stderr is None else [2 * e for e in stderr]
    ax.bar(layers, scores, color=[colors[i in chosen] for i in layers], yerr=errors, capsize=3)
    ax.set(xticks=list(layers), xlabel="layer", ylabel="score", title=title)
    if chosen:
        ax.legend(
            handles=[
                Patch(color=colors[True], label=f"selected ({len(chosen)})"),
                Patch(color=colors[False], label="not selected"),
            ]
        )
    return _save_atomic(fig, path)


def plot_cumulative(
    scores: Sequence[float],
    taus: Sequence[float],
    path: Path | str,
    title: str = "Cumulative importance C(k)",
) -> Path:
    """C(k) against k, a dashed line at each tau, and the point (k_tau, C(k_tau)) marked and labelled."""
    scores = [float(s) for s in scores]
    curve = cumulative_importance(scores)
    ks = range(1, len(curve) + 1)
    fig = _figure(len(curve))
    ax = fig.add_subplot()
    ax.plot(ks, curve, marker="o", color="tab:blue", label="C(k)")
    for tau in taus:
        k = k_for_tau(scores, tau)
        ax.axhline(tau, color="grey", linestyle="--", linewidth=0.8)
        ax.plot([k], [curve[k - 1]], marker="s", color="tab:red", markersize=8)
        ax.annotate(f"τ={tau:g}: k={k}", (k, curve[k - 1]), textcoords="offset points", xytext=(6, -12))
    ax.set(xticks=list(ks), ylim=(0, 1.05), xlabel="k (top-ranked layers)", ylabel="C(k)", title=title)
    return _save(fig, path)


def plot_seed_scores(
    scores_by_seed: Sequence[Sequence[float]], path: Path | str, title: str = "Layer scores by seed"
) -> Path:
    """One line per seed over the layers, so (in)stability across seeds shows as (non-)overlap."""
    n_layers = len(scores_by_seed[0])
    fig = _figure(n_layers)
    ax = fig.add_subplot()
    for i, scores in enumerate(scores_by_seed):
        ax.plot(range(n_layers), scores, marker=".", alpha=0.8, label=f"seed {i}")
    ax.set(xticks=list(range(n_layers)), xlabel="layer", ylabel="score", title=title)
    ax.legend(fontsize="small", ncol=max(1, len(scores_by_seed) // 6))
    return _save(fig, path)


def plot_heatmap(
    matrix: dict[str, Sequence[float | None]],
    path: Path | str,
    title: str,
    xlabel: str = "layer",
    ylabel: str = "scorer",
    column_labels: Sequence[str] | None = None,
) -> Path:
    """Rows of ``matrix`` (e.g. one per scorer) against columns (layers by default, or ``column_labels``),
    with a colorbar. None cells are grey."""
    rows = list(matrix)
    values = np.array([[np.nan if v is None else v for v in matrix[r]] for r in rows], dtype=float)
    n_columns = values.shape[1]
    fig = _figure(n_columns, height=1.5 + 0.45 * len(rows))
    ax = fig.add_subplot()
    cmap = matplotlib.colormaps["viridis"].with_extremes(bad="lightgrey")
    image = ax.imshow(np.ma.masked_invalid(values), aspect="auto", cmap=cmap)
    fig.colorbar(image, ax=ax)
    ax.set(xticks=range(n_columns), yticks=range(len(rows)), xlabel=xlabel, ylabel=ylabel, title=title)
    if column_labels is None:
        ax.set_xticklabels(range(n_columns))
    else:  # names (metrics, tasks) are wider than a cell: slanted so that neighbours do not overlap
        ax.set_xticklabels(column_labels, rotation=30, ha="right")
    ax.set_yticklabels(rows)
    return _save(fig, path)


def _save_atomic(fig: Figure, path: Path | str) -> Path:
    """_save through a temporary file and a rename: a chart written beside a report is never half there."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        _save(fig, tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def plot_metric_vs_parameters(
    labels: Sequence[str],
    parameters: Sequence[float],
    metric: Sequence[float],
    metric_std: Sequence[float],
    path: Path | str,
    ylabel: str = "metric",
    title: str = "Metric against trainable parameters (mean ± std over seeds)",
) -> Path:
    """One labelled point per group at (trainable parameters, mean metric) with ±std error bars; the x axis
    is logarithmic, since methods' parameter counts span orders of magnitude."""
    fig = _figure(len(labels), height=4.5)
    ax = fig.add_subplot()
    for label, x, y, err in zip(labels, parameters, metric, metric_std, strict=True):
        ax.errorbar([x], [y], yerr=[err], marker="o", capsize=4, linestyle="none")
        ax.annotate(label, (x, y), textcoords="offset points", xytext=(6, 6), fontsize="small")
    ax.set_xscale("log")
    ax.margins(x=0.25, y=0.15)  # room for the labels of the outermost points
    ax.set(xlabel="trainable parameters (log scale)", ylabel=ylabel, title=title)
    ax.grid(True, alpha=0.3)
    return _save_atomic(fig, path)


def plot_step_phases(
    labels: Sequence[str],
    phases: dict[str, Sequence[float]],
    total_std: Sequence[float],
    path: Path | str,
    title: str = "Mean training step time by phase (error bar: std of the total)",
) -> Path:
    """Stacked bars, one per group, of the mean time of each phase (forward, backward, optimizer); the error
    bar on top is the std of the step's total time."""
    fig = _figure(len(labels), height=4.5)
    ax = fig.add_subplot()
    positions = np.arange(len(labels))
    bottom = np.zeros(len(labels))
    for phase, values in phases.items():
        ax.bar(positions, values, bottom=bottom, label=phase)
        bottom += np.asarray(values, dtype=float)
    ax.errorbar(positions, bottom, yerr=total_std, fmt="none", ecolor="black", capsize=4)
    ax.set(xticks=positions, ylabel="ms per step", title=title)
    ax.set_xticklabels(labels, rotation=30, ha="right", fontsize="small")
    ax.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0))  # beside the bars, never over them
    return _save_atomic(fig, path)
