"""Random-forest baseline on relative abundances, cross-validated on explicitly given folds.

The folds are passed in (``[(train rows, test rows), ...]``) so that the baseline and an AAM
model are scored on exactly the same held-out samples.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Sequence

import numpy as np
import scipy.sparse as sp
from sklearn.ensemble import RandomForestClassifier, RandomForestRegressor

from aam_ds.data.table import FeatureTable
from aam_ds.errors import AamInputError
from aam_ds.evaluation.folds import fold_of_samples
from aam_ds.evaluation.predictions import Predictions
from aam_ds.evaluation.scoring import score


def relative_abundance(table: FeatureTable) -> sp.csr_matrix:
    """Counts divided by each sample's total, ``csr float64 [N, M]`` (rows sum to 1; empty rows stay 0)."""
    totals = np.asarray(table.counts.sum(axis=1), dtype=np.float64).ravel()
    scale = np.divide(1.0, totals, out=np.zeros_like(totals), where=totals > 0)
    return sp.csr_matrix(sp.diags(scale) @ table.counts)


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


def random_forest(task: str, trees: int = 500, seed: int = 0, n_jobs: int = 1, max_features: str | float | None = None):
    """An unfitted scikit-learn forest; ``max_features=None`` keeps scikit-learn's default
    (all features for regression, sqrt for classification)."""
    options = dict(n_estimators=trees, random_state=seed, n_jobs=n_jobs)
    if max_features is not None:
        options["max_features"] = max_features
    return RandomForestRegressor(**options) if task == "regression" else RandomForestClassifier(**options)


def cross_validate_rf(
    table: FeatureTable,
    target: str,
    truth: np.ndarray,
    folds: Sequence[tuple[np.ndarray, np.ndarray]],
    class_names: Sequence[str] = (),
    trees: int = 500,
    seed: int = 0,
    n_jobs: int = 1,
    max_features: str | float | None = None,
    positive_class: str | None = None,
) -> CrossValidation:
    """Fit a forest on each fold's relative abundances (training rows) and predict its test rows;
    see :func:`cross_validate_estimator` for ``truth``, ``class_names`` and ``folds``."""
    task = "classification" if class_names else "regression"
    return cross_validate_estimator(
        relative_abundance(table), lambda: random_forest(task, trees, seed, n_jobs, max_features), table.sample_ids,
        target, truth, folds, class_names, positive_class, "random forest (out of fold)",
    )  # fmt: skip


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
        model = make_estimator().fit(features[train], truth[train])
        if task == "regression":
            values[test] = model.predict(features[test])
        else:
            probabilities[test] = 0.0
            probabilities[np.ix_(test, [column_of[c] for c in model.classes_])] = model.predict_proba(features[test])
    predictions = Predictions(
        target, list(sample_ids), values=values, probabilities=probabilities, class_names=tuple(class_names), source=source,
    )  # fmt: skip
    fold_metrics = [score(predictions.take(test), truth[test], positive_class) for _, test in folds]
    return CrossValidation(predictions, truth, fold_of, fold_metrics, score(predictions, truth, positive_class))


def comparison_rows(
    cv: CrossValidation, others: dict[str, Predictions], reference_name: str = "random forest", positive_class: str | None = None
) -> dict[str, dict]:
    """Side-by-side rows (pooled, then mean +- std over ``cv``'s folds) of the cross-validated model and
    other models' out-of-fold predictions, all scored on the samples every model predicted.

    Raises :class:`AamInputError` when another model shares no sample with ``cv``.
    """
    row_of = {s: i for i, s in enumerate(cv.predictions.sample_ids)}
    shared = set(row_of)
    for name, other in others.items():
        common = shared & set(other.sample_ids)
        if not common:
            raise AamInputError(
                other.source, f"no sample in common with the {reference_name} predictions ({len(row_of)} samples)",
                "compare out-of-fold predictions of the same samples (same table)",
            )  # fmt: skip
        shared = common
    rows_cv = np.array(sorted(row_of[s] for s in shared), dtype=np.int64)
    ids = [cv.predictions.sample_ids[i] for i in rows_cv]
    models = {reference_name: cv.predictions.take(rows_cv)}
    for name, other in others.items():
        position = {s: i for i, s in enumerate(other.sample_ids)}
        models[name] = other.take([position[s] for s in ids])
    truth, fold_of = cv.truth[rows_cv], cv.fold_of[rows_cv]
    pooled, spread = {}, {}
    for name, predictions in models.items():
        pooled[f"{name} (pooled)"] = score(predictions, truth, positive_class)
        per_fold = [
            score(predictions.take(np.flatnonzero(fold_of == f)), truth[fold_of == f], positive_class)
            for f in np.unique(fold_of)
        ]
        spread[f"{name} (fold mean ± std)"] = fold_spread(per_fold)
    return {**pooled, **spread}
