"""A regularised linear baseline on centred log-ratio (CLR) abundances, its penalty chosen by inner CV.

Often the strongest classical baseline for microbiome prediction (stronger than a random forest
on some tables): ridge regression (``RidgeCV``, efficient leave-one-out over the penalty grid)
or L2 logistic regression (``LogisticRegressionCV``, inner stratified k-fold), both from
scikit-learn, on ``clr(counts + pseudocount)`` standardised per ASV within each training fold.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
from sklearn.linear_model import LogisticRegressionCV, RidgeCV
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from aam_ds.data.table import FeatureTable
from aam_ds.evaluation.cross_validation import CrossValidation, cross_validate_estimator

PENALTIES = np.logspace(-3, 5, 17)  # ridge alpha grid; logistic C = 1 / alpha


def clr(table: FeatureTable, pseudocount: float = 1.0) -> np.ndarray:
    """Centred log-ratio of ``counts + pseudocount``, ``float64 [N, M]`` (each row sums to 0).

    Aitchison 1982, The statistical analysis of compositional data, J. R. Stat. Soc. B 44: 139-177.
    Dense: ``N x M`` float64 (Huang oral: 2,537 x 5,574 = 113 MB).
    """
    logs = np.log(table.counts.toarray() + pseudocount)
    return logs - logs.mean(axis=1, keepdims=True)


def linear_model(task: str, seed: int = 0, inner_folds: int = 5):
    """An unfitted standardise + ridge / logistic pipeline with the penalty chosen by inner CV."""
    if task == "regression":
        estimator = RidgeCV(alphas=PENALTIES)
    else:
        estimator = LogisticRegressionCV(Cs=1.0 / PENALTIES, cv=inner_folds, max_iter=5000, random_state=seed)
    return make_pipeline(StandardScaler(), estimator)


def cross_validate_linear(
    table: FeatureTable,
    target: str,
    truth: np.ndarray,
    folds: Sequence[tuple[np.ndarray, np.ndarray]],
    class_names: Sequence[str] = (),
    seed: int = 0,
    positive_class: str | None = None,
) -> CrossValidation:
    """Out-of-fold predictions of :func:`linear_model` on :func:`clr` features (arguments as
    :func:`aam_ds.evaluation.cross_validation.cross_validate_estimator`)."""
    task = "classification" if class_names else "regression"
    return cross_validate_estimator(
        clr(table),
        lambda: linear_model(task, seed),
        table.sample_ids,
        target,
        truth,
        folds,
        class_names,
        positive_class,
        "linear model on CLR (out of fold)",
    )
