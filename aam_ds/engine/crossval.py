"""k-fold cross-validation of fine-tuning (``aam-ds cv``), on every rank.

Folds come from ``data.split.folds_file`` (a ``sample_id<TAB>fold`` TSV, e.g. the ``folds.tsv`` of
``aam-ds rf-baseline``, so AAM and the random forest are scored on the same held-out samples) or
are drawn by :func:`aam_ds.data.splits.kfold_splits` from ``data.split.kind`` / ``column`` /
``group_column`` / ``seed`` with ``data.split.folds`` folds.

Fold ``f``: its held-out samples are the test split; validation is carved from the remaining
samples by the same split rule (:func:`aam_ds.data.splits.split_samples` with ``val_fraction`` and
no test share), so grouped folds keep groups out of validation too; the rest trains. A fold's
evaluation lines and summary say so ("val (10 % of the fold's training part)"): they are not its test score. Each fold is
an ordinary fine-tuning run in ``<run_dir>/fold<f>/`` (export, metrics.jsonl, predictions_*.tsv).
The run folder is claimed as a training run's is (default ``runs/cv-<time>``); a resumed
cross-validation resumes each fold that left a checkpoint and starts the others afresh.

Written to ``<run_dir>`` by rank 0: ``folds.tsv``, ``oof_predictions.tsv`` (every sample once, the
``aam-ds evaluate`` predictions format) and ``cv_metrics.json`` (per fold, mean +- std, pooled);
rank 0 then prints the same metrics as one table and names these files.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Callable

import numpy as np

from aam_ds.data.prepare import PreparedData, prepare_data
from aam_ds.data.splits import carve_validation, kfold_splits, split_labels
from aam_ds.engine.checkpoint import latest_tag
from aam_ds.engine.distributed import DistContext, init_distributed, main_first
from aam_ds.engine.run_folder import claim_run_dir
from aam_ds.engine.trainer import finetune
from aam_ds.errors import AamInputError
from aam_ds.evaluation.cross_validation import CrossValidation, fold_spread
from aam_ds.evaluation.folds import fold_of_samples, read_folds, write_folds
from aam_ds.evaluation.predictions import Predictions, read_predictions, write_predictions
from aam_ds.evaluation.report import metrics_table, wide_console
from aam_ds.evaluation.scoring import score
from aam_ds.io_utils import atomic_write_json
from aam_ds.spec import RunSpec, SplitSpec

OOF_NAME = "oof_predictions.tsv"
METRICS_NAME = "cv_metrics.json"


def cross_validate(
    spec: RunSpec, ds_config_path: Path | None = None, on_fold: Callable[[int], None] | None = None
) -> CrossValidation | None:
    """Fine-tune once per fold; the out-of-fold predictions and their metrics on rank 0 (None elsewhere).

    ``on_fold(f)`` is called before fold ``f`` starts (e.g. to advance a progress display)."""
    ctx = init_distributed(spec.parallel.collective_timeout_s)
    return _cross_validate(ctx, spec, ds_config_path, on_fold)


def _cross_validate(
    ctx: DistContext, spec: RunSpec, ds_config_path: Path | None, on_fold: Callable[[int], None] | None = None
) -> CrossValidation | None:
    if spec.loss.task == "none":
        raise AamInputError(
            "loss.task", "cross-validation fine-tunes a task", "set loss.task=regression or classification and data.targets"
        )
    spec = claim_run_dir(spec, "cv", ctx, checkpointed=False)
    run_dir = spec.tracking.run_dir
    data = main_first(ctx, lambda _: prepare_data(spec))  # rank 0 fills the token cache first
    if len(data.target_names) != 1:
        raise AamInputError("data.targets", f"cross-validation scores one target, got {data.target_names}", "give a single target column")
    held_out = fold_rows(spec.data.split, data)
    if ctx.is_main:
        write_folds(run_dir / "folds.tsv", data.table.sample_ids, held_out)
    for fold, test in enumerate(held_out):
        if on_fold is not None:
            on_fold(fold)
        fold_data = dataclasses.replace(
            data, splits=fold_splits(spec.data.split, data, test, fold), validation=fold_validation(spec.data.split)
        )
        finetune(fold_spec(spec, fold), ds_config_path, fold_data)
    if not ctx.is_main:
        return None
    cv = pooled_predictions(data, held_out, [run_dir / f"fold{f}" / "predictions_test.tsv" for f in range(len(held_out))])
    write_predictions(run_dir / OOF_NAME, cv.predictions)
    folds_from = str(spec.data.split.folds_file or f"{spec.data.split.kind} k-fold, seed {spec.data.split.seed}")
    atomic_write_json(
        run_dir / METRICS_NAME,
        {
            "target": data.target_names[0],
            "task": spec.loss.task,
            "folds": len(held_out),
            "pooled": cv.pooled,
            "fold_metrics": cv.fold_metrics,
            "fold_mean_std": fold_spread(cv.fold_metrics),
            "folds_from": folds_from,
        },
    )
    print_cross_validation(cv, spec.loss.task, data.target_names[0], folds_from, run_dir)
    return cv


def print_cross_validation(cv: CrossValidation, task: str, target: str, folds_from: str, run_dir: Path) -> None:
    """Rank 0's closing report: one table (each fold, mean ± std over folds, pooled), where the
    folds came from and the files written."""
    console = wide_console()
    title = f"cross-validation of {target} ({task}), {len(cv.fold_metrics)} folds"
    console.print(metrics_table(cv.table_rows(), task, title, first_column="fold"))
    console.print(
        f"folds: {folds_from}\nwrote {run_dir}/folds.tsv, {OOF_NAME} (for aam-ds evaluate), {METRICS_NAME}; "
        f"each fold's run in {run_dir}/fold<f>/",
        markup=False,
        highlight=False,
        soft_wrap=True,
    )


def fold_rows(split: SplitSpec, data: PreparedData) -> list[np.ndarray]:
    """Held-out rows of each fold (into ``data.table``): read from ``split.folds_file`` or drawn."""
    if split.folds_file is not None:
        return read_folds(split.folds_file, data.table.sample_ids)
    column = split.column if split.kind == "stratified" else split.group_column
    field = "data.split.column" if split.kind == "stratified" else "data.split.group_column"
    labels = split_labels(data.metadata, split.kind, column, field)
    return kfold_splits(len(data.table.sample_ids), split.folds, split.kind, split.seed, labels)


def fold_splits(split: SplitSpec, data: PreparedData, test: np.ndarray, fold: int) -> dict[str, np.ndarray]:
    """Train / val / test rows of one fold: ``test`` held out, validation carved from the rest by ``split``'s rule."""
    rest = np.setdiff1d(np.arange(len(data.table.sample_ids)), test)
    return carve_validation(split, rest, test, data.metadata, split.seed + fold)


def fold_validation(split: SplitSpec) -> str:
    """What a fold's ``val`` split is, for the labels of its scores: not the fold's test samples
    (empty without a validation split: nothing to label)."""
    return f"{100 * split.val_fraction:g} % of the fold's training part" if split.val_fraction else ""


def fold_spec(spec: RunSpec, fold: int) -> RunSpec:
    """The fold's run: its own run folder (and checkpoint folder when one is set), named
    ``<cross-validation's name or folder>-fold<f>`` so that its console header, summary and W&B run
    say which fold it is. When the
    cross-validation is resumed, a fold that left a checkpoint resumes it and any other fold
    starts afresh, replacing what an interrupted start of it left behind."""
    name = f"fold{fold}"
    tracking = spec.tracking.model_copy(
        update={"run_dir": spec.tracking.run_dir / name, "name": f"{spec.tracking.name or spec.tracking.run_dir.name}-{name}"}
    )
    checkpoint = spec.checkpoint.model_copy(update={"dir": spec.checkpoint.dir / name if spec.checkpoint.dir else None})
    run = spec.model_copy(update={"tracking": tracking, "checkpoint": checkpoint})
    if not spec.checkpoint.resume:
        return run
    started = latest_tag(run.checkpoint_dir()) is not None
    return run.model_copy(
        update={
            "tracking": tracking.model_copy(update={"overwrite": not started}),
            "checkpoint": checkpoint.model_copy(update={"resume": started}),
        }
    )


def pooled_predictions(data: PreparedData, held_out: list[np.ndarray], fold_files: list[Path]) -> CrossValidation:
    """Each fold's test predictions placed at their samples' rows, scored per fold and pooled."""
    task = "classification" if data.class_names else "regression"
    truth = data.targets[:, 0].astype(np.float64) if task == "regression" else np.asarray(data.class_names, dtype=object)[data.targets]
    return pooled_fold_files(data.target_names[0], data.table.sample_ids, tuple(data.class_names or ()), truth, held_out, fold_files)


def pooled_fold_files(
    target: str,
    sample_ids: list[str],
    class_names: tuple[str, ...],
    truth: np.ndarray,
    held_out: list[np.ndarray],
    fold_files: list[Path],
    source: str = "AAM (out of fold)",
) -> CrossValidation:
    """The predictions files of the folds (each predicting exactly its held-out rows of
    ``sample_ids``) as one :class:`CrossValidation`: ``truth`` ``[N]`` (values, or class names),
    ``class_names`` (empty for regression) the column order of the pooled probabilities."""
    task = "classification" if class_names else "regression"
    n = len(sample_ids)
    values = np.full(n, np.nan) if task == "regression" else None
    probabilities = np.full((n, len(class_names)), np.nan) if task == "classification" else None
    row_of = {s: i for i, s in enumerate(sample_ids)}
    for rows, path in zip(held_out, fold_files):
        fold = read_predictions(path, target, task)
        at = np.array([row_of[s] for s in fold.sample_ids], dtype=np.int64)
        if sorted(at.tolist()) != sorted(rows.tolist()):
            raise RuntimeError(f"{path} does not predict exactly its fold's held-out samples")
        if task == "regression":
            values[at] = fold.values
        else:
            probabilities[at] = fold.probabilities[:, [fold.class_names.index(c) for c in class_names]]
    predictions = Predictions(target, list(sample_ids), values=values, probabilities=probabilities, class_names=class_names, source=source)
    fold_metrics = [score(predictions.take(rows), truth[rows]) for rows in held_out]
    return CrossValidation(predictions, truth, fold_of_samples(held_out, n), fold_metrics, score(predictions, truth))
