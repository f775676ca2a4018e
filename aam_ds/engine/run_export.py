"""What a finished run writes from its consolidated weights (:meth:`aam_ds.engine.trainer.Trainer.finish`).

- :func:`export_spec`: the spec recorded in ``<run_dir>/model.pt``, with the model section the
  model was actually built from;
- :func:`target_description`: what predict needs to map a fine-tuned model's outputs back to
  metadata;
- :func:`write_split_predictions`: fine-tuning's ``<run_dir>/predictions_<split>.tsv``, through
  the same code path as ``aam-ds predict`` (:mod:`aam_ds.prediction`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from aam_ds.data.prepare import PreparedData
from aam_ds.export import Export, build_exported_model
from aam_ds.model.aam import AAMModel
from aam_ds.prediction import predict_split, write_prediction_files
from aam_ds.spec import RunSpec


def export_spec(spec: RunSpec, model: AAMModel) -> dict[str, Any]:
    """The run spec as JSON, with the model section the model was actually built from (a fine-tuned
    model takes its architecture from the pretrained export, not from the fine-tuning spec)."""
    return {**spec.model_dump(mode="json"), "model": model.spec.model_dump(mode="json")}


def write_split_predictions(export: Export, data: PreparedData, run_dir: Path, batch_size: int, device: torch.device) -> None:
    """``<run_dir>/predictions_<split>.tsv`` for val and test, from the consolidated weights: the
    same code path as ``aam-ds predict``, so a later predict on the export reproduces them."""
    model = build_exported_model(export)
    for split in ("val", "test"):
        if len(data.splits.get(split, [])):
            write_prediction_files(run_dir / f"predictions_{split}.tsv", predict_split(model, data, split, batch_size, device))


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
