"""What a finished run writes from its consolidated weights (:meth:`aam_ds.engine.trainer.Trainer.finish`).

- :func:`export_spec`: the spec recorded in ``<run_dir>/model.pt``, with the model section the
  model was actually built from;
- :func:`target_description`: what predict needs to map a fine-tuned model's outputs back to
  metadata;
- :func:`write_split_predictions`: fine-tuning's ``<run_dir>/predictions_<split>.tsv``, through
  the same code path as ``aam-ds predict`` (:mod:`aam_ds.prediction`);
- :func:`run_files`: what W&B and MLflow keep of the run, with its evaluation reports.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from aam_ds.data.prepare import PreparedData
from aam_ds.evaluation.predictions import Predictions
from aam_ds.export import EXPORT_NAME, Export, build_exported_model
from aam_ds.model.aam import AAMModel
from aam_ds.prediction import predict_split, write_prediction_files
from aam_ds.spec import ModelSpec, RunSpec

EVALUATION_DIR = "evaluation"  # <run_dir>/evaluation: reports written for tracking services
MAX_SCATTER_POINTS = 5000  # distance pairs drawn in the plot (a split of N samples has N(N-1)/2)


def export_spec(spec: RunSpec, model_spec: ModelSpec) -> dict[str, Any]:
    """The run spec as JSON, with the model section the model was actually built from (a fine-tuned
    model takes its architecture from the pretrained export, not from the fine-tuning spec)."""
    return {**spec.model_dump(mode="json"), "model": model_spec.model_dump(mode="json")}


def write_split_predictions(
    export: Export, data: PreparedData, run_dir: Path, batch_size: int, device: torch.device
) -> dict[str, list[Predictions]]:
    """``<run_dir>/predictions_<split>.tsv`` for val and test, from the consolidated weights: the
    same code path as ``aam-ds predict``, so a later predict on the export reproduces them.
    Returns split -> one Predictions per target."""
    model = build_exported_model(export)
    written = {}
    for split in ("val", "test"):
        if len(data.splits.get(split, [])):
            written[split] = predict_split(model, data, split, batch_size, device)
            write_prediction_files(run_dir / f"predictions_{split}.tsv", written[split])
    return written


def run_files(
    run_dir: Path, data: PreparedData, predictions: dict[str, list[Predictions]], scatter: tuple[np.ndarray, np.ndarray] | None
) -> dict[str, list[Path]]:
    """What a tracking service keeps of a finished run, by folder of its file tree: ``""`` the spec,
    DeepSpeed config, export and split predictions; ``evaluation/...`` reports written now under
    ``<run_dir>/evaluation``: pretraining's predicted vs true distances of the last validation
    (``scatter``, float ``[P]`` each) and, per split and target of ``predictions``, the report of
    ``aam-ds evaluate`` (metrics.json, per-sample tables, predicted vs true or confusion matrix)."""
    from aam_ds.evaluation.plots import plot_predicted_vs_true
    from aam_ds.evaluation.report import write_evaluation

    files = {"": [run_dir / name for name in ("spec.json", "ds_config.json", EXPORT_NAME)] + sorted(run_dir.glob("predictions_*.tsv"))}
    out = run_dir / EVALUATION_DIR
    if scatter is not None and len(scatter[0]):
        predicted, true = (np.ravel(a) for a in scatter)
        keep = np.random.default_rng(0).permutation(len(true))[:MAX_SCATTER_POINTS]
        files[EVALUATION_DIR] = [
            plot_predicted_vs_true(
                out / "distance_scatter.png", true[keep], predicted[keep], "distance", title=f"last validation, {len(true)} sample pairs"
            )
        ]
    for split, per_target in predictions.items():
        rows = data.splits[split]
        for index, prediction in enumerate(per_target):
            truth = (
                data.targets[rows, index]
                if prediction.task == "regression"
                else np.asarray(data.class_names, dtype=object)[data.targets[rows]]
            )
            folder = f"{EVALUATION_DIR}/{split}" + (f"-{prediction.target}" if len(per_target) > 1 else "")
            report = write_evaluation(run_dir / folder, prediction, truth)
            files[folder] = [run_dir / folder / "metrics.json", *map(Path, report["files"].values())]
    return files


def target_description(data: PreparedData, model: AAMModel, finetuning: bool) -> dict[str, Any] | None:
    """What predict needs to map outputs back to metadata: names, classes, normaliser mean / std."""
    if not finetuning:
        return None
    norm = model.target_normalizer
    return {
        "target_names": data.target_names,
        "class_names": data.class_names,
        "covariate_names": data.covariate_names,
        "covariate_classes": data.covariate_classes,
        "normalizer": None if norm is None else {"mean": norm.mean.tolist(), "std": norm.std.tolist()},
    }
