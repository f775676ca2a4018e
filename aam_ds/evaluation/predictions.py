"""The predictions TSV written by ``aam-ds predict`` / ``aam-ds rf-baseline`` and read by ``aam-ds evaluate``.

Columns: ``sample_id``, then

- regression: ``<target>`` (the prediction, in the target's units) and optionally ``<target>_std``
  (spread over repeated passes);
- classification: ``<target>`` (the predicted class) and ``prob_<class>`` for every class.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from aam_ds.data.files import read_input_text
from aam_ds.errors import AamInputError
from aam_ds.io_utils import atomic_path

SAMPLE_ID = "sample_id"
PROB_PREFIX = "prob_"


@dataclass(frozen=True)
class Predictions:
    """One model's predictions of ``target`` for ``N`` samples.

    Regression: ``values`` float64 ``[N]`` in the target's units, ``std`` float64 ``[N]`` or None.
    Classification: ``probabilities`` float64 ``[N, C]``, columns in the order of ``class_names``.
    """

    target: str
    sample_ids: list[str]
    values: np.ndarray | None = None
    std: np.ndarray | None = None
    probabilities: np.ndarray | None = None
    class_names: tuple[str, ...] = ()
    source: str = "<predictions>"

    @property
    def task(self) -> str:
        return "classification" if self.probabilities is not None else "regression"

    def predicted_labels(self) -> np.ndarray:
        """Most probable class name per sample, ``str [N]`` (classification only)."""
        return np.asarray(self.class_names, dtype=object)[self.probabilities.argmax(axis=1)]

    def take(self, rows: np.ndarray | list[int]) -> "Predictions":
        """The predictions of the given rows, in that order."""
        rows = np.asarray(rows, dtype=np.int64)
        pick = lambda a: None if a is None else a[rows]  # noqa: E731
        return Predictions(
            self.target,
            [self.sample_ids[i] for i in rows],
            pick(self.values),
            pick(self.std),
            pick(self.probabilities),
            self.class_names,
            self.source,
        )


def write_predictions(path: str | Path, predictions: Predictions) -> None:
    """Write the predictions TSV atomically (format in the module docstring)."""
    frame = pd.DataFrame({SAMPLE_ID: predictions.sample_ids})
    target = predictions.target
    if predictions.task == "regression":
        frame[target] = predictions.values
        if predictions.std is not None:
            frame[f"{target}_std"] = predictions.std
    else:
        frame[target] = predictions.predicted_labels()
        for c, name in enumerate(predictions.class_names):
            frame[f"{PROB_PREFIX}{name}"] = predictions.probabilities[:, c]
    with atomic_path(path) as tmp:
        frame.to_csv(tmp, sep="\t", index=False)


def read_predictions(path: str | Path, target: str, task: str | None = None) -> Predictions:
    """Read a predictions TSV; the task is classification when ``prob_<class>`` columns are present.

    Raises :class:`AamInputError` for a missing file or column, repeated sample IDs, non-finite
    values, or a ``task`` that contradicts the columns.
    """
    path = Path(path)
    source = str(path)
    if not path.is_file():
        raise AamInputError(source, "predictions file not found", "give the TSV written by `aam-ds predict` or `aam-ds rf-baseline`")
    frame = pd.read_csv(io.StringIO(read_input_text(path, "a predictions TSV")), sep="\t", dtype={SAMPLE_ID: str})
    for column in (SAMPLE_ID, target):
        if column not in frame.columns:
            raise AamInputError(
                source,
                f"no column {column!r} (columns: {list(frame.columns)[:10]})",
                f"the file needs '{SAMPLE_ID}' and the predicted target's column; check --target",
            )
    ids = frame[SAMPLE_ID].tolist()
    repeated = frame[SAMPLE_ID][frame[SAMPLE_ID].duplicated()].tolist()
    if repeated:
        raise AamInputError(source, f"repeated sample IDs {repeated[:5]}", "keep one prediction per sample")
    prob_columns = [c for c in frame.columns if c.startswith(PROB_PREFIX)]
    found = "classification" if prob_columns else "regression"
    if task is not None and task != found:
        raise AamInputError(
            source,
            f"--task {task} but the file holds {found} predictions "
            f"({'prob_<class> columns' if prob_columns else f'no prob_<class> columns, only {target!r}'})",
            "pass the matching --task (or leave it out to infer it)",
        )
    if found == "classification":
        probabilities = _finite(frame, prob_columns, source)
        names = tuple(c.removeprefix(PROB_PREFIX) for c in prob_columns)
        return Predictions(target, ids, probabilities=probabilities, class_names=names, source=source)
    std_column = f"{target}_std"
    std = _finite(frame, [std_column], source)[:, 0] if std_column in frame.columns else None
    return Predictions(target, ids, values=_finite(frame, [target], source)[:, 0], std=std, source=source)


def _finite(frame: pd.DataFrame, columns: list[str], source: str) -> np.ndarray:
    """``float64 [N, len(columns)]``; non-numeric, empty or infinite cells are an error."""
    values = frame[columns].apply(pd.to_numeric, errors="coerce").to_numpy(dtype=np.float64)
    bad_rows, bad_cols = np.nonzero(~np.isfinite(values))
    if len(bad_rows):
        examples = [f"{frame[SAMPLE_ID].iloc[r]}:{columns[c]}" for r, c in zip(bad_rows[:5], bad_cols[:5])]
        raise AamInputError(
            source, f"{len(bad_rows)} missing or non-numeric predictions, e.g. {examples}", "write a finite number in every prediction cell"
        )
    return values
