"""Evaluation reports: files (metrics.json, per-sample / per-group / worst-sample TSVs, PNG plots)
and Rich tables of metrics (one row per model or per fold)."""

from __future__ import annotations

from pathlib import Path
from typing import Mapping

import numpy as np
import pandas as pd
from rich.console import Console
from rich.table import Table

from aam_ds.evaluation.metrics import CLASSIFICATION_METRICS, REGRESSION_METRICS, per_group_table, worst_samples
from aam_ds.evaluation.plots import plot_confusion_matrix, plot_predicted_vs_true, plot_residuals
from aam_ds.evaluation.predictions import Predictions
from aam_ds.evaluation.scoring import score, scored_frame
from aam_ds.io_utils import atomic_path, atomic_write_json


def metric_names(task: str) -> tuple[str, ...]:
    """The metric names reported for ``task`` (regression or classification)."""
    return REGRESSION_METRICS if task == "regression" else CLASSIFICATION_METRICS


def wide_console() -> Console:
    """A Rich console at least 120 columns wide (pipes and logs otherwise get 80)."""
    out = Console()
    if not out.is_terminal:
        out.width = max(out.width, 120)
    return out


def metrics_table(rows: Mapping[str, Mapping[str, float]], task: str, title: str, first_column: str = "model") -> Table:
    """A Rich table with one row per entry of ``rows`` (name -> metrics) and one column per metric.

    A metric given as ``(mean, std)`` prints as ``mean +- std``.
    """
    table = Table(title=title)
    table.add_column(first_column)
    for name in (*metric_names(task), "n"):
        table.add_column(name, justify="right", no_wrap=True)
    for name, metrics in rows.items():
        table.add_row(name, *(_format(metrics.get(m)) for m in (*metric_names(task), "n")))
    return table


def _format(value) -> str:
    if value is None:
        return ""
    if isinstance(value, tuple):
        return f"{value[0]:.3f}±{value[1]:.3f}"
    if isinstance(value, (int, np.integer)):
        return str(value)
    return "nan" if not np.isfinite(value) else f"{value:.3f}"


def write_tsv(path: str | Path, frame: pd.DataFrame, index: bool = True) -> Path:
    """Write ``frame`` as TSV (6 significant digits) at ``path`` (atomically); returns the path."""
    with atomic_path(path) as tmp:
        frame.to_csv(tmp, sep="\t", index=index, float_format="%.6g")
    return Path(path)


def write_evaluation(
    out_dir: str | Path,
    predictions: Predictions,
    truth: np.ndarray,
    groups: pd.Series | None = None,
    n_worst: int = 20,
    positive_class: str | None = None,
    extra: Mapping[str, object] | None = None,
) -> dict:
    """Score the predictions and write the report into ``out_dir``; return ``metrics.json``'s content.

    Files: ``metrics.json``, ``per_sample.tsv``, ``worst_samples.tsv``, ``per_group.tsv`` (when
    ``groups`` is given), and ``pred_vs_true.png`` + ``residuals.png`` (regression) or
    ``confusion_matrix.png`` (classification).
    """
    out_dir = Path(out_dir)
    metrics = score(predictions, truth, positive_class)
    scored = scored_frame(predictions, truth, groups)
    files = {
        "per_sample": write_tsv(out_dir / "per_sample.tsv", scored),
        "worst_samples": write_tsv(out_dir / "worst_samples.tsv", worst_samples(scored, n_worst)),
    }
    if groups is not None:
        files["per_group"] = write_tsv(out_dir / "per_group.tsv", per_group_table(scored, groups.name))
    target = predictions.target
    if predictions.task == "regression":
        title = f"MAE {metrics['mae']:.3g}, R2 {metrics['r2']:.3g}, n={metrics['n']}"
        files["pred_vs_true"] = plot_predicted_vs_true(
            out_dir / "pred_vs_true.png", truth, predictions.values, target, predictions.std, title
        )
        files["residuals"] = plot_residuals(out_dir / "residuals.png", truth, predictions.values, target, title)
    else:
        title = f"accuracy {metrics['accuracy']:.3g}, AUC {metrics['auc']:.3g}, n={metrics['n']}"
        files["confusion_matrix"] = plot_confusion_matrix(
            out_dir / "confusion_matrix.png", truth, scored["pred"], predictions.class_names, title
        )
    report = {
        "target": target,
        "task": predictions.task,
        "metrics": metrics,
        "predictions": predictions.source,
        "files": {k: str(v) for k, v in files.items()},
        **(extra or {}),
    }
    atomic_write_json(out_dir / "metrics.json", report)
    return report
