"""Random-forest baseline on relative abundances, cross-validated on explicitly given folds.

The folds are passed in (``[(train rows, test rows), ...]``) so that the baseline and an AAM
model are scored on exactly the same held-out samples.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import scipy.sparse as sp
from sklearn.ensemble import RandomForestClassifier, RandomForestRegressor

from aam_ds.data.table import FeatureTable
from aam_ds.errors import AamInputError
from aam_ds.evaluation.cross_validation import CrossValidation, cross_validate_estimator, fold_spread
from aam_ds.evaluation.predictions import Predictions
from aam_ds.evaluation.scoring import score


def relative_abundance(table: FeatureTable) -> sp.csr_matrix:
    """Counts divided by each sample's total, ``csr float64 [N, M]`` (rows sum to 1; empty rows stay 0)."""
    totals = np.asarray(table.counts.sum(axis=1), dtype=np.float64).ravel()
    scale = np.divide(1.0, totals, out=np.zeros_like(totals), where=totals > 0)
    return sp.csr_matrix(sp.diags(scale) @ table.counts)


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
    see :func:`aam_ds.evaluation.cross_validation.cross_validate_estimator` for ``truth``, ``class_names`` and ``folds``."""
    task = "classification" if class_names else "regression"
    return cross_validate_estimator(
        relative_abundance(table),
        lambda: random_forest(task, trees, seed, n_jobs, max_features),
        table.sample_ids,
        target,
        truth,
        folds,
        class_names,
        positive_class,
        "random forest (out of fold)",
    )


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
                other.source,
                f"no sample in common with the {reference_name} predictions ({len(row_of)} samples)",
                "compare out-of-fold predictions of the same samples (same table)",
            )
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
        per_fold = [score(predictions.take(np.flatnonzero(fold_of == f)), truth[fold_of == f], positive_class) for f in np.unique(fold_of)]
        spread[f"{name} (fold mean ± std)"] = fold_spread(per_fold)
    return {**pooled, **spread}
