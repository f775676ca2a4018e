"""Cross-validation folds shared between models: drawing them and the folds file.

A folds file is a TSV ``sample_id<TAB>fold`` (fold = 0 .. k-1) so that the random forest and
AAM runs are scored on exactly the same held-out samples. Folds themselves are drawn by
:func:`aam_ds.data.splits.kfold_splits`.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from aam_ds.data.files import read_input_text
from aam_ds.data.splits import kfold_splits, split_labels
from aam_ds.errors import AamInputError
from aam_ds.io_utils import atomic_path

FOLD = "fold"


def draw_folds(metadata: pd.DataFrame, k: int, split: str, seed: int = 0, column: str | None = None) -> list[np.ndarray]:
    """Held-out rows of each of ``k`` folds over the rows of ``metadata`` (aligned to the table).

    ``split``: ``random``; ``stratified`` by ``column``; ``grouped`` by ``column``. Folds are drawn
    by :func:`aam_ds.data.splits.kfold_splits`.
    """
    if split == "grouped" and column is None:
        raise AamInputError("--split grouped", "no grouping given", "add --group-column COLUMN")
    field = "--group-column" if split == "grouped" else "--stratify-column"
    return kfold_splits(len(metadata), k, split, seed, split_labels(metadata, split, column, field))


def train_test_pairs(held_out: Sequence[np.ndarray], n_samples: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """``(train rows, test rows)`` per fold from the held-out rows of each fold."""
    pairs = []
    for test in held_out:
        train = np.setdiff1d(np.arange(n_samples), test)
        pairs.append((train, np.asarray(test, dtype=np.int64)))
    return pairs


def fold_of_samples(held_out: Sequence[np.ndarray], n_samples: int) -> np.ndarray:
    """Fold number of every row, ``int64 [N]``; every row must be held out exactly once."""
    fold_of = np.full(n_samples, -1, dtype=np.int64)
    for f, rows in enumerate(held_out):
        if (fold_of[rows] != -1).any():
            raise ValueError(f"fold {f} holds out rows already held out by another fold")
        fold_of[rows] = f
    if (fold_of == -1).any():
        raise ValueError(f"{int((fold_of == -1).sum())} rows are in no fold")
    return fold_of


def write_folds(path: str | Path, sample_ids: Sequence[str], held_out: Sequence[np.ndarray]) -> Path:
    """Write the folds file (``sample_id``, ``fold``) atomically."""
    frame = pd.DataFrame({"sample_id": list(sample_ids), FOLD: fold_of_samples(held_out, len(sample_ids))})
    with atomic_path(path) as tmp:
        frame.to_csv(tmp, sep="\t", index=False)
    return Path(path)


def read_folds(path: str | Path, sample_ids: Sequence[str]) -> list[np.ndarray]:
    """Held-out rows (sorted ``int64``) of each fold for the rows ``sample_ids``, from a folds file.

    Samples of the file that are not in ``sample_ids`` are ignored; a sample of ``sample_ids``
    absent from the file is an error (the folds would not be the same).
    """
    path = Path(path)
    if not path.is_file():
        raise AamInputError(str(path), "folds file not found", "give the folds.tsv written by `aam-ds rf-baseline`")
    frame = pd.read_csv(io.StringIO(read_input_text(path, "a folds TSV")), sep="\t", dtype={"sample_id": str})
    if list(frame.columns[:2]) != ["sample_id", FOLD]:
        raise AamInputError(str(path), f"columns are {list(frame.columns)}", "a folds file has the columns sample_id, fold")
    fold_by_id = dict(zip(frame["sample_id"], frame[FOLD]))
    missing = [s for s in sample_ids if s not in fold_by_id]
    if missing:
        raise AamInputError(
            str(path),
            f"{len(missing)} of {len(sample_ids)} samples have no fold, e.g. {missing[:5]}",
            "write the folds file for this table (same samples), or drop those samples from the table",
        )
    fold_of = np.array([fold_by_id[s] for s in sample_ids], dtype=np.int64)
    k = int(fold_of.max()) + 1
    folds = [np.flatnonzero(fold_of == f) for f in range(k)]
    if fold_of.min() < 0 or any(len(f) == 0 for f in folds):
        raise AamInputError(str(path), f"folds are not numbered 0..{k - 1} with samples in each", "rewrite the folds file")
    return folds
