"""PNG plots of ``aam-ds explain`` (matplotlib object API, Agg canvas; see docs/explain.md for how to read them)."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from aam_ds.evaluation.plots import save_figure

TOP_N = 15


def plot_sample_attention(path: Path, layers: np.ndarray, labels: Sequence[str], title: str) -> Path:
    """Heatmaps of sample-encoder attention ``[n_layers, H, k, k]`` (rows: query ASV, columns: key
    ASV), one panel per layer and head."""
    n_layers, heads, k = layers.shape[0], layers.shape[1], layers.shape[2]
    size = max(2.2, min(0.18 * k, 6.0))
    fig = Figure(figsize=(size * heads + 1, size * n_layers + 0.6), layout="constrained")
    for layer in range(n_layers):
        for head in range(heads):
            ax = fig.add_subplot(n_layers, heads, layer * heads + head + 1)
            image = ax.imshow(layers[layer, head], cmap="viridis", vmin=0.0, interpolation="nearest")
            ax.set_title(f"layer {layer} head {head}", fontsize=8)
            ax.set_xlabel("key ASV (attended to)", fontsize=7)
            ax.set_ylabel("query ASV", fontsize=7)
            ticks = np.arange(k) if k <= 30 else []
            ax.set_xticks(ticks, [labels[i] for i in ticks], rotation=90, fontsize=5)
            ax.set_yticks(ticks, [labels[i] for i in ticks], fontsize=5)
            fig.colorbar(image, ax=ax, fraction=0.046, pad=0.02)
    fig.suptitle(title, fontsize=9)
    return save_figure(fig, path)


def plot_pool_weights(path: Path, pool: np.ndarray, weighted: np.ndarray, labels: Sequence[str], title: str) -> Path:
    """Per-ASV bars of one sample's attention-pooling weights (plain and abundance-weighted), largest first."""
    order = np.argsort(-pool)[: 3 * TOP_N]
    fig = Figure(figsize=(7, 0.9 + 0.22 * len(order)), layout="constrained")
    ax = fig.add_subplot()
    y = np.arange(len(order))
    ax.barh(y - 0.2, pool[order], height=0.4, label="attention pool")
    ax.barh(y + 0.2, weighted[order], height=0.4, label="abundance-weighted pool")
    ax.set_yticks(y, [labels[i] for i in order], fontsize=6)
    ax.invert_yaxis()
    shown = f"the {len(order)} largest of {len(pool)} ASVs" if len(order) < len(pool) else f"its {len(pool)} ASVs"
    ax.set(xlabel=f"pooling weight ({shown}; sums to 1 over the sample's ASVs)", title=title)
    ax.legend(fontsize=7, loc="lower right")
    return save_figure(fig, path)


def plot_nucleotide_attention(path: Path, layers: np.ndarray, pool: np.ndarray, sequence: str, title: str) -> Path:
    """Nucleotide attention within one ASV: per layer the head-averaged ``[L, L]`` map, and the pooling weight per position."""
    length = len(sequence)
    n_layers = layers.shape[0]
    fig = Figure(figsize=(4.2 * (n_layers + 1), 4.2), layout="constrained")
    for layer in range(n_layers):
        ax = fig.add_subplot(1, n_layers + 1, layer + 1)
        image = ax.imshow(layers[layer].mean(axis=0)[:length, :length], cmap="viridis", vmin=0.0, interpolation="nearest")
        ax.set(title=f"layer {layer} (mean over heads)", xlabel="key position", ylabel="query position")
        fig.colorbar(image, ax=ax, fraction=0.046, pad=0.02)
    ax = fig.add_subplot(1, n_layers + 1, n_layers + 1)
    ax.bar(np.arange(length), pool[:length], width=1.0)
    ax.set(title="pooling weight per nucleotide", xlabel="position")
    fig.suptitle(title, fontsize=9)
    return save_figure(fig, path)


def plot_top_features(
    path: Path, table: pd.DataFrame, methods: Sequence[str], label: str, title: str, classification: bool = False
) -> Path:
    """One panel per method: the ``TOP_N`` features with the highest score (``table[method]``), with
    the permutation interval (``permutation_ci_low`` / ``_high``) as error bars; ``classification``
    names integrated gradients' score as a classifier's (see :func:`aam_ds.explain.importance.attribution_score`)."""
    fig = Figure(figsize=(5.2 * len(methods), 0.8 + 0.3 * TOP_N), layout="constrained")
    for i, method in enumerate(methods):
        ax = fig.add_subplot(1, len(methods), i + 1)
        top = table.sort_values(method, ascending=False).head(TOP_N)
        y = np.arange(len(top))
        error = None
        if f"{method}_ci_low" in top and top[f"{method}_ci_low"].notna().all():
            error = np.vstack([top[method] - top[f"{method}_ci_low"], top[f"{method}_ci_high"] - top[method]])
        ax.barh(y, top[method], xerr=error, color=f"C{i}", ecolor="0.3", capsize=2)
        ax.set_yticks(y, [str(v)[:48] for v in top[label]], fontsize=7)
        ax.invert_yaxis()
        unit = _score_unit(method, classification) + (" (95% CI over repeats)" if error is not None else "")
        ax.set(title=method.replace("_", " "), xlabel=unit)
    fig.suptitle(title, fontsize=10)
    return save_figure(fig, path)


def _score_unit(method: str, classification: bool) -> str:
    if method == "integrated_gradients":
        return "mean |attribution| (logit)" if classification else "share of the prediction variance"
    if method == "attention":
        return "mean pooling weight"
    return "log-loss increase" if classification else "MAE increase (target units)"
