"""Cross-validation results shared by every model: out-of-fold predictions scored per fold and pooled.

:class:`CrossValidation` is what the baselines (random forest, linear model, the benchmark's linear
probe; all through :func:`cross_validate_estimator`) and AAM's k-fold fine-tuning
(:mod:`aam_ds.engine.crossval`) return, so that their folds, tables and reports line up.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import numpy as np
import scipy.sparse as sp

from aam_ds.evaluation.folds import fold_of_samples
from aam_ds.evaluation.predictions import Predictions
from aam_ds.evaluation.scoring import score


@dataclass(frozen=True)
class CrossValidation:
    """Out-of-fold predictions of every sample and their metrics per fold and pooled."""

    predictions: Predictions
    truth: np.ndarray
    fold_of: np.ndarray
    fold_metrics: list[dict[str, float]]
    pooled: dict[str, float]

    def table_rows(self) -> dict[str, dict]:
        """Rows for :func:`aam_ds.evaluation.report.metrics_table`: each fold, mean +- std over folds, pooled."""
        rows = {f"fold {f}": m for f, m in enumerate(self.fold_metrics)}
        rows["mean ± std"] = fold_spread(self.fold_metrics)
        rows["pooled"] = self.pooled
        return rows


def fold_spread(fold_metrics: Sequence[dict[str, float]]) -> dict[str, tuple[float, float]]:
    """``metric -> (mean, std)`` over folds (NaN folds, e.g. AUC of a one-class fold, are skipped)."""
    names = [k for k in fold_metrics[0] if k != "n"]
    return {k: (float(np.nanmean([m[k] for m in fold_metrics])), float(np.nanstd([m[k] for m in fold_metrics]))) for k in names}


def cross_validate_estimator(
    features: np.ndarray | sp.spmatrix,
    make_estimator: Callable[[], Any],
    sample_ids: Sequence[str],
    target: str,
    truth: np.ndarray,
    folds: Sequence[tuple[np.ndarray, np.ndarray]],
    class_names: Sequence[str] = (),
    positive_class: str | None = None,
    source: str = "out of fold",
) -> CrossValidation:
    """Fit a fresh scikit-learn estimator on each fold's training rows of ``features [N, F]`` and
    predict its test rows.

    ``truth`` is float ``[N]`` (regression) or class names ``[N]`` (classification, with
    ``class_names`` listing every class); rows follow ``sample_ids``. Every row must be a test row of
    exactly one fold. Classes absent from a fold's training rows get probability 0.
    """
    task = "classification" if class_names else "regression"
    n = len(sample_ids)
    values = np.full(n, np.nan) if task == "regression" else None
    probabilities = np.full((n, len(class_names)), np.nan) if task == "classification" else None
    fold_of = fold_of_samples([test for _, test in folds], n)
    column_of = {c: i for i, c in enumerate(class_names)}
    for train, test in folds:
        with warnings.catch_warnings():  # scikit-learn's notices of changing defaults (1.9: LogisticRegressionCV) are not the user's
            warnings.simplefilter("ignore", FutureWarning)
            model = make_estimator().fit(features[train], truth[train])
        if task == "regression":
            values[test] = model.predict(features[test])
        else:
            probabilities[test] = 0.0
            probabilities[np.ix_(test, [column_of[c] for c in model.classes_])] = model.predict_proba(features[test])
    predictions = Predictions(
        target,
        list(sample_ids),
        values=values,
        probabilities=probabilities,
        class_names=tuple(class_names),
        source=source,
    )
    fold_metrics = [score(predictions.take(test), truth[test], positive_class) for _, test in folds]
    return CrossValidation(predictions, truth, fold_of, fold_metrics, score(predictions, truth, positive_class))
