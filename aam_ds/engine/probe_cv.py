"""Fine-tuning's probe ensemble (``model.probe_ensemble_folds`` = k): the fine-tuned model averaged
with a linear probe on the pretrained model's frozen sample embeddings, the weight chosen by inner
cross-validation on the training samples (:class:`aam_ds.model.probe_ensemble.ProbeEnsemble`).

After the run's own fine-tuning (:func:`attach_probe_ensemble`):

1. the training samples are cut into k inner folds (stratified by class for classification,
   grouped by ``data.split.group_column`` for a grouped split, else random; seeded by
   ``data.split.seed``), and for each the same fine-tuning runs on the other k-1 folds in
   ``<run_dir>/probe_ensemble/inner<j>/`` (a validation part carved from them by the run's split rule
   when the run has one, so that it selects its export as the run does) and predicts the held-out fold
   (rank 0 then deletes the inner runs' checkpoints: nothing resumes an inner fold, and k of them per
   fold would fill a disk);
2. the probe (:func:`aam_ds.evaluation.linear_baseline.linear_model`: standardise, then logistic or
   ridge regression with its penalty chosen by its own inner CV) is fitted the same way on the
   pretrained embeddings, giving out-of-fold predictions of both models on every training sample;
3. the fine-tuned model's share ``w`` is the grid value (0, 0.1, ..., 1) whose mixture has the
   lowest out-of-fold loss: log-loss for classification, mean absolute error (``loss.regression_loss:
   mae``) or mean squared error for regression; ties keep the larger ``w``;
4. the probe is refitted on every training sample, and rank 0 rewrites ``model.pt`` with the probe
   and ``w`` (:func:`aam_ds.export.probe_part`) and the run's split predictions from it (the fine-tuned
   network's own move to ``<run_dir>/probe_ensemble/finetuned/``), and writes
   ``<run_dir>/probe_ensemble/weight.json`` (``w``, the out-of-fold loss at each share).

W&B / MLflow keep the run's files as they were when its fine-tuning finished (before the probe).
Stacking: Wolpert 1992, Stacked generalization, Neural Networks 5: 241-259; a linear probe:
Alain & Bengio 2016, arXiv:1610.01644.
"""

from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path

import numpy as np
import torch

from aam_ds.data.prepare import PreparedData
from aam_ds.data.splits import carve_validation, kfold_splits, split_labels
from aam_ds.engine.distributed import DistContext
from aam_ds.engine.run_export import write_split_predictions
from aam_ds.errors import AamInputError, notice
from aam_ds.export import Export, build_exported_model, load_export, probe_part, write_export
from aam_ds.io_utils import atomic_write_json
from aam_ds.model.probe_ensemble import LinearProbe
from aam_ds.prediction import embed_inputs, predict_inputs, rows_inputs
from aam_ds.spec import RunSpec

WEIGHTS = np.round(np.linspace(0.0, 1.0, 11), 2)  # the fine-tuned model's share, tried in turn
ENSEMBLE_DIR = "probe_ensemble"
NETWORK_DIR = "finetuned"  # <run_dir>/probe_ensemble/finetuned/predictions_<split>.tsv: the fine-tuned network alone
WEIGHT_FILE = "weight.json"  # <run_dir>/probe_ensemble/weight.json: the share chosen and the out-of-fold loss at each


def check_probe_ensemble(spec: RunSpec) -> None:
    """Refuse (AamInputError) a probe ensemble that cannot be built, before any training."""
    k = spec.model.probe_ensemble_folds
    if k == 1:
        raise AamInputError("model.probe_ensemble_folds", "1 inner fold leaves nothing to choose the weight on", "give 0 (off) or k >= 2")
    if k and spec.model.pretrained is None:
        raise AamInputError(
            "model.probe_ensemble_folds",
            "the probe reads a pretrained model's sample embeddings, and model.pretrained is not set",
            "set model.pretrained=<pretraining's model.pt>, or model.probe_ensemble_folds=0",
        )


def attach_probe_ensemble(spec: RunSpec, ds_config_path: Path | None, data: PreparedData, export_path: Path, ctx: DistContext) -> None:
    """Steps 1-4 of the module docstring for the finished fine-tuning run ``spec`` (its run folder
    claimed) on ``data``; every rank trains the inner folds, rank 0 fits, chooses and writes. Where
    the training samples cannot be cut into k inner folds that each train (too few samples, groups
    or members of a class), the export stays the fine-tuned network, with a notice saying why."""
    from aam_ds.engine.trainer import train

    k, train_rows = spec.model.probe_ensemble_folds, data.splits["train"]
    try:
        held_out = inner_folds(spec, data, train_rows, k)
        inner_exports, inner_runs = [], []
        for j, test in enumerate(held_out):
            splits = inner_splits(spec, data, np.setdiff1d(train_rows, test), test, j)
            inner_runs.append(inner_spec(spec, j, len(splits["train"]), ctx.world_size))
            result = train(inner_runs[-1], ds_config_path, finetuning=True, data=dataclasses.replace(data, splits=splits))
            inner_exports.append(result.export_path)
        if not ctx.is_main:
            return
        for inner in inner_runs:  # nothing resumes an inner fold: its export is what is kept
            shutil.rmtree(inner.checkpoint_dir(), ignore_errors=True)
        pretrained = load_export(spec.model.pretrained)
        weight, losses, probe = fit_ensemble(spec, data, pretrained, held_out, inner_exports, ctx.device)
    except (AamInputError, ValueError) as exc:  # ValueError: scikit-learn's stratified k-fold with too few members
        return keep_network(spec, ctx, k, str(exc))
    export = load_export(export_path)
    export.probe = probe_part(pretrained, probe, weight, k)
    write_export(export_path, export)
    write_weight(
        spec, {"weight": weight, "inner_folds": k, "training_samples": len(train_rows), "losses": dict(zip(map(str, WEIGHTS), losses))}
    )
    write_split_predictions(export, data, spec.tracking.run_dir, spec.parallel.micro_batch_size, ctx.device)
    print(
        f"probe ensemble ({k} inner folds of {len(train_rows)} training samples): fine-tuned model's share {weight:g}, "
        f"out-of-fold loss {losses[-1]:.4g} fine-tuned alone, {losses[0]:.4g} probe alone, {min(losses):.4g} mixed; "
        f"written to {export_path}",
        flush=True,
    )


def fit_ensemble(
    spec: RunSpec, data: PreparedData, pretrained: Export, held_out: list[np.ndarray], inner_exports: list[Path], device
) -> tuple[float, list[float], dict[str, np.ndarray]]:
    """Steps 2-4 on rank 0: out-of-fold predictions of the inner fine-tunings and of the probe, the
    share chosen on them, the probe refitted on every training sample. Returns (share, the loss at each
    share of :data:`WEIGHTS`, the probe)."""
    train_rows, batch, seed = data.splits["train"], spec.parallel.micro_batch_size, spec.data.split.seed
    embeddings = embed_inputs(build_exported_model(pretrained), rows_inputs(data, train_rows), batch, device)
    truth = data.targets[train_rows]
    finetuned_oof, probe_oof = [], []
    for test, path in zip(held_out, inner_exports):
        at = np.searchsorted(train_rows, test)
        network = build_exported_model(load_export(path))
        predictions = predict_inputs(network, rows_inputs(data, test), data.target_names, data.class_names, batch_size=batch, device=device)
        probe = fit_probe(np.delete(embeddings, at, axis=0), np.delete(truth, at, axis=0), data, seed)
        finetuned_oof.append((at, model_outputs(predictions)))
        probe_oof.append((at, probe_outputs(probe, embeddings[at], data)))
    weight, losses = choose_weight(in_order(finetuned_oof), in_order(probe_oof), truth, data, spec.loss.regression_loss)
    return weight, losses, fit_probe(embeddings, truth, data, seed)


def in_order(parts: list[tuple[np.ndarray, np.ndarray]]) -> np.ndarray:
    """Rows ``[at]`` of each ``(at, values)`` part placed into one array over every position."""
    out = np.zeros((sum(len(at) for at, _ in parts), parts[0][1].shape[1]))
    for at, values in parts:
        out[at] = values
    return out


def keep_network(spec: RunSpec, ctx: DistContext, k: int, reason: str) -> None:
    """No probe ensemble: the export stays the fine-tuned network (share 1), with a notice and ``weight.json`` saying why."""
    notice(f"model.probe_ensemble_folds={k}: no probe ensemble ({reason}); the export is the fine-tuned network alone")
    if ctx.is_main:
        write_weight(spec, {"weight": 1.0, "inner_folds": k, "skipped": reason})


def write_weight(spec: RunSpec, record: dict) -> None:
    """``probe_ensemble/weight.json``, and the fine-tuned network's own split predictions kept in
    ``probe_ensemble/finetuned/`` (before a mixture replaces them)."""
    folder = spec.tracking.run_dir / ENSEMBLE_DIR
    (folder / NETWORK_DIR).mkdir(parents=True, exist_ok=True)
    for path in spec.tracking.run_dir.glob("predictions_*.tsv"):
        shutil.copyfile(path, folder / NETWORK_DIR / path.name)
    atomic_write_json(folder / WEIGHT_FILE, record)


def inner_folds(spec: RunSpec, data: PreparedData, train_rows: np.ndarray, k: int) -> list[np.ndarray]:
    """Rows (into the table) of each inner fold of the training rows: stratified by class, grouped by
    the split's group column, or random."""
    split = spec.data.split
    if split.kind == "grouped":
        kind, labels = "grouped", split_labels(data.metadata.iloc[train_rows], "grouped", split.group_column, "data.split.group_column")
    elif data.class_names:
        kind, labels = "stratified", np.asarray(data.targets[train_rows], dtype=np.int64)
    else:
        kind, labels = "random", None
    return [train_rows[fold] for fold in kfold_splits(len(train_rows), k, kind, split.seed, labels)]


def inner_splits(spec: RunSpec, data: PreparedData, rest: np.ndarray, test: np.ndarray, j: int) -> dict[str, np.ndarray]:
    """Inner fold ``j``'s rows: ``test`` held out; when the run has a validation split, one is carved
    from ``rest`` by the run's split rule (as :func:`aam_ds.engine.crossval.fold_splits` does for a
    fold), so that the inner fine-tuning selects its export as the run's does; the rest trains."""
    if not len(data.splits.get("val", [])):
        return {"train": rest, "val": np.array([], dtype=np.int64), "test": test}
    return carve_validation(spec.data.split, rest, test, data.metadata, spec.data.split.seed + 1000 + j)


def inner_spec(spec: RunSpec, j: int, n_train: int, world_size: int) -> RunSpec:
    """Inner fold ``j``'s fine-tuning: the run's spec in ``<run_dir>/probe_ensemble/inner<j>``, untracked, no ensemble;
    a global batch larger than its ``n_train`` training samples shrinks its micro batch to fit (a small table)."""
    run_dir = spec.tracking.run_dir / ENSEMBLE_DIR / f"inner{j}"
    tracking = spec.tracking.model_copy(
        update={"run_dir": run_dir, "overwrite": True, "name": f"{spec.tracking.name or spec.tracking.run_dir.name}-inner{j}"}
    )
    tracking = tracking.model_copy(update={"wandb": "disabled", "mlflow": "disabled"})
    checkpoint = spec.checkpoint.model_copy(update={"dir": None, "resume": False})
    model = spec.model.model_copy(update={"probe_ensemble_folds": 0})
    plan = spec.parallel.batch_plan(world_size)
    if plan.global_batch_size > n_train:
        plan = plan.with_micro(max(1, n_train // (plan.grad_accum_steps * world_size)), plan.grad_accum_steps)
    parallel = spec.parallel.model_copy(update=plan.sizes())
    return spec.model_copy(update={"tracking": tracking, "checkpoint": checkpoint, "model": model, "parallel": parallel})


def model_outputs(predictions) -> np.ndarray:
    """Class probabilities ``[N, C]`` or values ``[N, T]`` (original units) of a list of Predictions."""
    if predictions[0].probabilities is not None:
        return predictions[0].probabilities
    return np.stack([p.values for p in predictions], axis=1)


def fit_probe(embeddings: np.ndarray, truth: np.ndarray, data: PreparedData, seed: int) -> dict[str, np.ndarray]:
    """The linear probe fitted on ``embeddings [N, D]``: ``mean``, ``scale`` ``[D]``, ``coef [O, D]``, ``intercept [O]``
    (the arguments of :class:`~aam_ds.model.probe_ensemble.LinearProbe`; O = classes, targets).

    Raises:
        AamInputError: a class absent from these training samples (the probe could not score it).
    """
    from aam_ds.evaluation.linear_baseline import linear_model

    task = "classification" if data.class_names else "regression"
    pipeline = linear_model(task, seed).fit(embeddings, truth if task == "classification" else np.asarray(truth, dtype=np.float64))
    scaler, estimator = pipeline[0], pipeline[-1]
    if task == "classification" and len(estimator.classes_) != len(data.class_names):
        raise AamInputError(
            "model.probe_ensemble_folds",
            f"an inner fold's training samples hold {len(estimator.classes_)} of the {len(data.class_names)} classes",
            "use fewer inner folds, or model.probe_ensemble_folds=0 for a class this rare",
        )
    coef, intercept = np.atleast_2d(estimator.coef_), np.atleast_1d(estimator.intercept_)
    if task == "classification" and len(coef) == 1:  # binary: P(second class) = sigmoid(z) = softmax([0, z])
        coef, intercept = np.vstack([np.zeros_like(coef), coef]), np.concatenate([[0.0], intercept])
    return {"mean": scaler.mean_, "scale": scaler.scale_, "coef": coef, "intercept": intercept}


def probe_outputs(probe: dict[str, np.ndarray], embeddings: np.ndarray, data: PreparedData) -> np.ndarray:
    """The probe's class probabilities ``[N, C]`` or values ``[N, T]`` (original units)."""
    z = LinearProbe(**probe)(torch.as_tensor(embeddings))  # what the exported ensemble computes
    return (z.softmax(dim=-1) if data.class_names else z).double().numpy()


def choose_weight(
    finetuned: np.ndarray, probe: np.ndarray, truth: np.ndarray, data: PreparedData, regression_loss: str
) -> tuple[float, list[float]]:
    """The fine-tuned model's share in :data:`WEIGHTS` with the lowest out-of-fold loss of the
    mixture, and the loss at each share (log-loss; or MAE / MSE averaged over targets)."""
    losses = []
    for w in WEIGHTS:
        mixed = w * finetuned + (1 - w) * probe
        if data.class_names:
            picked = mixed[np.arange(len(truth)), np.asarray(truth, dtype=np.int64)]
            losses.append(float(-np.log(np.clip(picked, 1e-12, None)).mean()))
        else:
            error = mixed - np.asarray(truth, dtype=np.float64).reshape(mixed.shape)
            losses.append(float(np.abs(error).mean() if regression_loss == "mae" else (error**2).mean()))
    best = max(i for i, loss in enumerate(losses) if loss <= min(losses) * (1 + 1e-9))  # ties (to rounding) keep the larger
    return float(WEIGHTS[best]), losses
