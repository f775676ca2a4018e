"""Train / validation / test splits and k-fold partitions (random, stratified, grouped), seeded.

Splits are arrays of row indices into the (aligned) table; the sample-ID lists are saved per run
as ``<run_dir>/splits/{train,val,test}.txt`` so a run can be reproduced or audited.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal, Sequence

import numpy as np
import pandas as pd
from sklearn.model_selection import KFold, StratifiedKFold

from aam_ds.data.metadata import categorical_codes, is_numeric_column
from aam_ds.errors import AamInputError
from aam_ds.io_utils import atomic_write_text
from aam_ds.spec import SplitSpec

SPLIT_NAMES = ("train", "val", "test")
SplitKind = Literal["random", "stratified", "grouped"]
_STRATIFY_BINS = 5  # a numeric column with more distinct values is stratified by quantile bins


def split_labels(metadata: pd.DataFrame | None, kind: SplitKind, column: str | None, field: str) -> np.ndarray | None:
    """Integer class (stratified) or group (grouped) code per sample, ``int64 [N]``; None for random.

    A numeric stratification column (:func:`~aam_ds.data.metadata.is_numeric_column`) with more than
    5 distinct values is cut into 5 quantile bins; any other column's codes follow its values as written.
    """
    if kind == "random":
        return None
    if metadata is None:
        raise AamInputError(field, f"a {kind} split needs sample metadata", "set data.metadata to a QIIME 2 metadata file")
    if column is None:
        raise AamInputError(field, f"a {kind} split needs a metadata column", f"set {field}")
    if kind == "stratified":
        values = metadata[column] if column in metadata.columns else None
        if values is not None and values.notna().all() and is_numeric_column(values):
            numbers = pd.to_numeric(values)
            if numbers.nunique() > _STRATIFY_BINS:
                return pd.qcut(numbers.rank(method="first"), _STRATIFY_BINS, labels=False).to_numpy(dtype=np.int64)
    return categorical_codes(metadata, column, field)[0]


def split_samples(n_samples: int, split: SplitSpec, metadata: pd.DataFrame | None = None) -> dict[str, np.ndarray]:
    """Row indices (sorted ``int64``) of the train / val / test samples.

    ``metadata`` must be aligned to the table rows. Random and stratified splits take
    ``round(fraction * n)`` samples (per class when stratified); a grouped split moves whole
    groups, so its fractions are met approximately and no group is in two splits.
    """
    column = split.column if split.kind == "stratified" else split.group_column
    field = "data.split.column" if split.kind == "stratified" else "data.split.group_column"
    labels = split_labels(metadata, split.kind, column, field)
    rng = np.random.default_rng(split.seed)
    fractions = {"test": split.test_fraction, "val": split.val_fraction}
    if split.kind == "grouped":
        assignment = _grouped_assignment(labels, fractions, rng)
    else:
        assignment = np.zeros(n_samples, dtype=np.int64)  # 0 train, 1 val, 2 test
        strata = [np.arange(n_samples)] if labels is None else [np.flatnonzero(labels == c) for c in np.unique(labels)]
        for members in strata:
            order = rng.permutation(members)
            n_test = round(fractions["test"] * len(order))
            n_val = round(fractions["val"] * len(order))
            assignment[order[:n_test]] = 2
            assignment[order[n_test : n_test + n_val]] = 1
    splits = {name: np.flatnonzero(assignment == code) for code, name in enumerate(SPLIT_NAMES)}
    if len(splits["train"]) == 0:
        raise AamInputError(
            "data.split",
            f"no samples are left for training ({n_samples} samples, {split.kind} split)",
            "lower data.split.val_fraction / test_fraction or use more samples (or groups)",
        )
    return splits


def _grouped_assignment(groups: np.ndarray, fractions: dict[str, float], rng: np.random.Generator) -> np.ndarray:
    """Whole groups, in seeded random order, go to test then val until each reaches its share."""
    assignment = np.zeros(len(groups), dtype=np.int64)
    unique, sizes = np.unique(groups, return_counts=True)
    order = rng.permutation(len(unique))
    cursor = 0
    for code, name in ((2, "test"), (1, "val")):
        target = round(fractions[name] * len(groups))
        taken = 0
        while taken < target and cursor < len(order):
            group = unique[order[cursor]]
            assignment[groups == group] = code
            taken += sizes[order[cursor]]
            cursor += 1
    return assignment


def carve_validation(
    split: SplitSpec, rest: np.ndarray, test: np.ndarray, metadata: pd.DataFrame | None, seed: int
) -> dict[str, np.ndarray]:
    """Train / val / test rows of a fold: ``test`` held out, a validation part carved from the rows
    ``rest`` by ``split``'s rule (its ``val_fraction``, no test share, ``seed``), the rest trains.
    ``metadata``: the table's metadata (aligned to its rows) or None."""
    part = None if metadata is None else metadata.iloc[rest]
    inner = split_samples(len(rest), split.model_copy(update={"test_fraction": 0.0, "seed": seed}), part)
    return {"train": rest[inner["train"]], "val": rest[inner["val"]], "test": np.asarray(test, dtype=np.int64)}


def kfold_splits(n_samples: int, k: int, kind: SplitKind = "random", seed: int = 0, labels: np.ndarray | None = None) -> list[np.ndarray]:
    """Held-out row indices (sorted ``int64``) of each of ``k`` folds; together they cover every row once.

    ``labels`` (from :func:`split_labels`) are classes for ``stratified`` and groups for ``grouped``;
    a grouped fold never shares a group with another fold (groups are shuffled, then each goes to
    the fold with the fewest samples so far).
    """
    if k < 2 or k > n_samples:
        raise AamInputError("k-fold", f"k={k} folds for {n_samples} samples", "choose 2 <= k <= number of samples")
    rows = np.arange(n_samples)
    if kind == "random":
        folds = [test for _, test in KFold(k, shuffle=True, random_state=seed).split(rows)]
    elif kind == "stratified":
        folds = [test for _, test in StratifiedKFold(k, shuffle=True, random_state=seed).split(rows, labels)]
    else:
        unique, sizes = np.unique(labels, return_counts=True)
        if len(unique) < k:
            raise AamInputError("k-fold", f"only {len(unique)} groups for k={k} grouped folds", "lower k or use more groups")
        filled = np.zeros(k, dtype=np.int64)
        fold_of = np.empty(len(unique), dtype=np.int64)
        for g in np.random.default_rng(seed).permutation(len(unique)):
            fold_of[g] = int(np.argmin(filled))
            filled[fold_of[g]] += sizes[g]
        group_index = np.searchsorted(unique, labels)
        folds = [np.flatnonzero(fold_of[group_index] == f) for f in range(k)]
    return [np.sort(f).astype(np.int64) for f in folds]


def save_splits(run_dir: str | Path, splits: dict[str, np.ndarray], sample_ids: Sequence[str]) -> dict[str, Path]:
    """Write ``<run_dir>/splits/<name>.txt`` (one sample ID per line) atomically; return the paths."""
    paths = {}
    for name, rows in splits.items():
        path = Path(run_dir) / "splits" / f"{name}.txt"
        atomic_write_text(path, "".join(f"{sample_ids[i]}\n" for i in rows))
        paths[name] = path
    return paths
