"""Predictions joined with the truth from sample metadata: metrics and the per-sample frame."""

from __future__ import annotations

import numpy as np
import pandas as pd

from aam_ds.data.metadata import align_metadata, categorical_codes, numeric_targets
from aam_ds.errors import AamInputError
from aam_ds.evaluation.metrics import classification_metrics, regression_metrics
from aam_ds.evaluation.predictions import Predictions


def join_truth(predictions: Predictions, metadata: pd.DataFrame) -> tuple[Predictions, np.ndarray, pd.DataFrame]:
    """The predictions of samples that have a metadata row, their truth and their metadata rows.

    Truth is float64 ``[N]`` (regression) or class names ``object [N]`` (classification), read
    from the metadata column named ``predictions.target``. A missing column, a missing / NaN
    truth, a class the model does not know, or no shared sample raise :class:`AamInputError`.
    """
    source = metadata.attrs.get("source", "metadata")
    rows = [i for i, s in enumerate(predictions.sample_ids) if s in metadata.index]
    if not rows:
        raise AamInputError(
            f"{predictions.source} and {source}",
            f"no sample is in both (predictions e.g. {predictions.sample_ids[:3]}, metadata e.g. {list(metadata.index[:3])})",
            "evaluate predictions against the metadata of the same samples; check that the IDs are spelled identically",
        )
    kept = predictions.take(rows)
    aligned = align_metadata(metadata, kept.sample_ids, predictions.source)
    if kept.task == "regression":
        return kept, numeric_targets(aligned, [kept.target], field="--target")[:, 0].astype(np.float64), aligned
    codes, classes = categorical_codes(aligned, kept.target, field="--target")
    truth = np.asarray(classes, dtype=object)[codes]
    unknown = sorted(set(classes) - set(kept.class_names))
    if unknown:
        raise AamInputError(
            f"{source} column {kept.target!r}",
            f"classes {unknown} have no prob_<class> column in {predictions.source} (its classes: {list(kept.class_names)})",
            "evaluate against the metadata the model was trained on (same class names)",
        )
    return kept, truth, aligned


def score(predictions: Predictions, truth: np.ndarray, positive_class: str | None = None) -> dict[str, float]:
    """Regression or classification metrics of ``predictions`` against ``truth`` (same rows)."""
    if predictions.task == "regression":
        return regression_metrics(truth, predictions.values)
    return classification_metrics(truth, predictions.probabilities, predictions.class_names, positive_class)


def scored_frame(predictions: Predictions, truth: np.ndarray, groups: pd.Series | None = None) -> pd.DataFrame:
    """One row per sample, indexed by ``sample_id``.

    Regression columns: ``true, pred, residual`` (pred - true), ``abs_error`` and ``std`` when
    given. Classification: ``true, pred, prob_true`` (probability given to the true class),
    ``correct``. ``groups`` (indexed by sample ID) adds a column under its own name.
    """
    frame = pd.DataFrame(index=pd.Index(predictions.sample_ids, name="sample_id"))
    frame["true"] = truth
    if predictions.task == "regression":
        frame["pred"] = predictions.values
        frame["residual"] = predictions.values - truth
        frame["abs_error"] = np.abs(frame["residual"])
        if predictions.std is not None:
            frame["std"] = predictions.std
    else:
        column_of = {c: i for i, c in enumerate(predictions.class_names)}
        frame["pred"] = predictions.predicted_labels()
        frame["prob_true"] = predictions.probabilities[np.arange(len(truth)), [column_of[t] for t in truth]]
        frame["correct"] = frame["pred"] == frame["true"]
    if groups is not None:
        frame[groups.name] = groups.reindex(frame.index).to_numpy()
    return frame
