"""Metrics of predictions against the truth, per-group error tables and the worst samples.

Regression: MAE, RMSE, R2 in the target's units; Pearson r (pretraining's distance fit). Classification: accuracy, balanced accuracy,
ROC AUC and F1 from class probabilities (the predicted class is the most probable one).
"""

from __future__ import annotations

import warnings
from typing import Sequence

import numpy as np
import pandas as pd
from sklearn.metrics import balanced_accuracy_score, f1_score, mean_absolute_error, mean_squared_error, r2_score, roc_auc_score

REGRESSION_METRICS = ("mae", "rmse", "r2")
CLASSIFICATION_METRICS = ("accuracy", "balanced_accuracy", "auc", "f1")


def regression_metrics(y_true: Sequence[float], y_pred: Sequence[float]) -> dict[str, float]:
    """``{mae, rmse, r2, n}`` of predictions ``[N]`` against the truth ``[N]`` (same units).

    R2 is NaN for fewer than two samples.
    """
    y_true = np.asarray(y_true, dtype=np.float64).ravel()
    y_pred = np.asarray(y_pred, dtype=np.float64).ravel()
    _check_lengths(len(y_true), len(y_pred))
    return {
        "mae": float(mean_absolute_error(y_true, y_pred)),
        "rmse": float(np.sqrt(mean_squared_error(y_true, y_pred))),
        "r2": float(r2_score(y_true, y_pred)) if len(y_true) >= 2 else float("nan"),
        "n": len(y_true),
    }


def pearson_r(y_true: Sequence[float], y_pred: Sequence[float]) -> float:
    """Pearson correlation of predictions ``[N]`` with the truth ``[N]``; NaN for fewer than two values
    or a constant input (e.g. pretraining's embedding distances against the target distances)."""
    y_true = np.asarray(y_true, dtype=np.float64).ravel()
    y_pred = np.asarray(y_pred, dtype=np.float64).ravel()
    _check_lengths(len(y_true), len(y_pred))
    if len(y_true) < 2 or y_true.std() == 0 or y_pred.std() == 0:
        return float("nan")
    return float(np.corrcoef(y_true, y_pred)[0, 1])


def classification_metrics(
    y_true: Sequence[str], y_prob: np.ndarray, class_names: Sequence[str], positive_class: str | None = None
) -> dict[str, float]:
    """``{accuracy, balanced_accuracy, auc, f1, n}`` of class probabilities ``y_prob [N, C]``.

    ``y_true`` holds class names (each one of ``class_names``, the column order of ``y_prob``).
    Two classes: AUC and F1 are those of ``positive_class`` (default: the second class name).
    More classes: AUC is the macro one-vs-rest mean over the classes present in ``y_true`` (and
    absent from some sample), F1 the macro mean. AUC is NaN when ``y_true`` holds one class only.
    """
    class_names = [str(c) for c in class_names]
    y_prob = np.asarray(y_prob, dtype=np.float64)
    if y_prob.ndim != 2 or y_prob.shape[1] != len(class_names):
        raise ValueError(f"y_prob has shape {y_prob.shape}; expected [N, {len(class_names)}]")
    index = {c: i for i, c in enumerate(class_names)}
    unknown = sorted({str(y) for y in y_true} - set(index))
    if unknown:
        raise ValueError(f"true labels {unknown[:5]} are not among the classes {class_names}")
    true = np.array([index[str(y)] for y in y_true], dtype=np.int64)
    _check_lengths(len(true), len(y_prob))
    pred = y_prob.argmax(axis=1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "y_pred contains classes not in y_true" is expected on small folds
        balanced = balanced_accuracy_score(true, pred)
    if len(class_names) == 2:
        pos = 1 if positive_class is None else class_names.index(str(positive_class))
        auc = _binary_auc(true == pos, y_prob[:, pos])
        f1 = f1_score(true == pos, pred == pos, zero_division=0)
    else:
        aucs = [_binary_auc(true == c, y_prob[:, c]) for c in range(len(class_names))]
        aucs = [a for a in aucs if np.isfinite(a)]
        auc = float(np.mean(aucs)) if aucs else float("nan")
        f1 = f1_score(true, pred, average="macro", zero_division=0)
    return {
        "accuracy": float(np.mean(pred == true)),
        "balanced_accuracy": float(balanced),
        "auc": float(auc),
        "f1": float(f1),
        "n": len(true),
    }


def _binary_auc(is_positive: np.ndarray, score: np.ndarray) -> float:
    if is_positive.all() or not is_positive.any():
        return float("nan")
    return float(roc_auc_score(is_positive, score))


def _check_lengths(n_true: int, n_pred: int) -> None:
    if n_true != n_pred:
        raise ValueError(f"{n_true} true values but {n_pred} predictions")
    if n_true == 0:
        raise ValueError("no samples to score")


def per_group_table(scored: pd.DataFrame, group_column: str) -> pd.DataFrame:
    """Error per value of ``group_column`` in a scored frame, worst group first.

    ``scored`` is a per-sample frame (see :func:`aam_ds.evaluation.scoring.scored_frame`): with an
    ``abs_error`` column (regression) the table has ``n, mae, rmse, bias, mean_true`` per group
    (bias = mean of prediction - truth); otherwise (classification) ``n, accuracy, mean_prob_true``.
    """
    grouped = scored.groupby(group_column, dropna=False, sort=True)
    if "abs_error" in scored.columns:
        table = pd.DataFrame(
            {
                "n": grouped.size(),
                "mae": grouped["abs_error"].mean(),
                "rmse": grouped["residual"].apply(lambda r: float(np.sqrt(np.mean(np.square(r))))),
                "bias": grouped["residual"].mean(),
                "mean_true": grouped["true"].mean(),
            }
        )
        worst_first = "mae"
    else:
        table = pd.DataFrame(
            {
                "n": grouped.size(),
                "accuracy": grouped["correct"].mean(),
                "mean_prob_true": grouped["prob_true"].mean(),
            }
        )
        worst_first = "accuracy"
    return table.sort_values(worst_first, ascending=worst_first == "accuracy", kind="stable")


def worst_samples(scored: pd.DataFrame, k: int = 20) -> pd.DataFrame:
    """The ``k`` worst-predicted samples of a scored frame: largest absolute error (regression)
    or lowest probability given to the true class (classification)."""
    if "abs_error" in scored.columns:
        return scored.sort_values("abs_error", ascending=False, kind="stable").head(k)
    return scored.sort_values("prob_true", ascending=True, kind="stable").head(k)
