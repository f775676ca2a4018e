"""PNG plots of predictions: predicted vs true, residuals, confusion matrix.

Figures are built with matplotlib's object API (no pyplot state, no display needed) and
rendered by the Agg canvas, then written atomically.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from aam_ds.io_utils import atomic_path

_DPI = 120


def save_figure(fig: Figure, path: str | Path) -> Path:
    """Save ``fig`` as PNG at ``path`` (atomically); returns the path."""
    FigureCanvasAgg(fig)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=_DPI, bbox_inches="tight")
    return Path(path)


def plot_predicted_vs_true(
    path: str | Path, y_true: np.ndarray, y_pred: np.ndarray, target: str, std: np.ndarray | None = None, title: str = ""
) -> Path:
    """Scatter of predictions ``[N]`` against the truth ``[N]`` with the y = x line (and +-std bars)."""
    fig = Figure(figsize=(5, 5))
    ax = fig.add_subplot()
    if std is not None:
        ax.errorbar(y_true, y_pred, yerr=std, fmt="none", ecolor="0.7", elinewidth=0.8, zorder=1)
    ax.scatter(y_true, y_pred, s=10, alpha=0.6, zorder=2)
    low, high = float(min(y_true.min(), y_pred.min())), float(max(y_true.max(), y_pred.max()))
    ax.plot([low, high], [low, high], color="black", linewidth=1, linestyle="--", label="y = x", zorder=3)
    ax.set(xlabel=f"true {target}", ylabel=f"predicted {target}", title=title)
    ax.legend(loc="upper left")
    return save_figure(fig, path)


def plot_residuals(path: str | Path, y_true: np.ndarray, y_pred: np.ndarray, target: str, title: str = "") -> Path:
    """Residuals (prediction - truth) against the truth, with the zero line."""
    fig = Figure(figsize=(6, 4))
    ax = fig.add_subplot()
    ax.scatter(y_true, y_pred - y_true, s=10, alpha=0.6)
    ax.axhline(0.0, color="black", linewidth=1, linestyle="--")
    ax.set(xlabel=f"true {target}", ylabel=f"predicted - true {target}", title=title)
    return save_figure(fig, path)


def plot_confusion_matrix(
    path: str | Path, y_true: Sequence[str], y_pred: Sequence[str], class_names: Sequence[str], title: str = ""
) -> Path:
    """Counts of (true class, predicted class), rows = truth, columns = prediction."""
    index = {c: i for i, c in enumerate(class_names)}
    counts = np.zeros((len(class_names), len(class_names)), dtype=np.int64)
    np.add.at(counts, ([index[t] for t in y_true], [index[p] for p in y_pred]), 1)
    size = 2.5 + 0.6 * len(class_names)
    fig = Figure(figsize=(size, size))
    ax = fig.add_subplot()
    image = ax.imshow(counts, cmap="Blues")
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04)
    ticks = np.arange(len(class_names))
    ax.set_xticks(ticks, labels=list(class_names), rotation=45, ha="right")
    ax.set_yticks(ticks, labels=list(class_names))
    dark = counts > counts.max() / 2
    for i, j in np.ndindex(counts.shape):
        ax.text(j, i, str(counts[i, j]), ha="center", va="center", color="white" if dark[i, j] else "black")
    ax.set(xlabel="predicted", ylabel="true", title=title)
    return save_figure(fig, path)
