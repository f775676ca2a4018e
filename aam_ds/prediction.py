"""A model's predictions on preprocessed samples: the code path ``aam-ds predict`` and training share.

:func:`predict_inputs` (model inputs -> Predictions) serves both:

- :func:`aam_ds.inference.predict.predict_table` (``aam-ds predict``): a table file, preprocessed
  with the data settings recorded in the export's spec (see :mod:`aam_ds.inference.predict`);
- :func:`predict_split`: a split of the run's own :class:`PreparedData`, which the trainer
  predicts from the consolidated weights at the end of fine-tuning (``predictions_<split>.tsv``).

This module sits below both :mod:`aam_ds.engine` and :mod:`aam_ds.inference`, which never
import each other (tests/test_layering.py).

- Repeated passes (``passes > 1``): each pass keeps a random ``subset_fraction`` of every sample's
  selected ASVs (at least one), drawn from (seed, pass, sample ID) alone, so a sample's draws do
  not depend on the other samples or the batch size. Regression reports the mean over passes and
  the standard deviation (ddof 1); classification the mean class probabilities. With
  ``passes=1`` every selected ASV is used and no spread is reported.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch

from aam_ds.data.dataset import SampleDataset, collate, to_device
from aam_ds.data.prepare import PreparedData
from aam_ds.data.select import SampleRow
from aam_ds.errors import AamInputError
from aam_ds.evaluation.predictions import Predictions, write_predictions
from aam_ds.model.aam import AAMModel

DEFAULT_SUBSET_FRACTION = 0.8
DEFAULT_BATCH_SIZE = 32


@dataclass(frozen=True)
class ModelInputs:
    """Preprocessed samples ready for the model.

    - ``sample_ids[i]``: the sample of ``rows[i]``
    - ``tokens``: ``uint8 [M, L]`` tokens of every ASV column referenced by ``rows``
    - ``rows``: per sample, its selected ASV columns and read counts
    - ``covariates``: ``int64 [N_table, C]`` codes indexed by ``SampleRow.sample_index``, or None
    - ``asv_ids``: the feature ID of each row of ``tokens`` (set by ``aam-ds predict``'s preprocessing)
    """

    sample_ids: list[str]
    tokens: np.ndarray
    rows: list[SampleRow]
    covariates: np.ndarray | None
    asv_ids: list[str] | None = None


# --------------------------------------------------------------------------------------------
# the shared code path


@torch.no_grad()
def predict_inputs(
    model: AAMModel,
    inputs: ModelInputs,
    target_names: Sequence[str],
    class_names: Sequence[str] | None = None,
    passes: int = 1,
    subset_fraction: float = DEFAULT_SUBSET_FRACTION,
    seed: int = 0,
    batch_size: int = DEFAULT_BATCH_SIZE,
    device: str | torch.device = "cpu",
    on_batch: Callable[[int], None] | None = None,
) -> list[Predictions]:
    """One :class:`Predictions` per regression target (original units), or one for classification.

    ``model`` must have a task head; it is moved to ``device`` and put in eval mode. It is an
    :class:`AAMModel` or anything called like ``AAMModel.forward`` with ``to``, ``eval`` and
    ``target_normalizer`` (:class:`aam_ds.inference.onnx.OnnxModel`, an ONNX graph in onnxruntime),
    so both go through the same batching, de-normalisation and softmax. ``on_batch(n)``
    is called after each forward pass with its number of samples (``passes x N`` in all): a progress bar.
    """
    if passes < 1:
        raise AamInputError("--passes", f"must be at least 1, got {passes}", "give a positive number of passes")
    if passes > 1 and not 0.0 < subset_fraction <= 1.0:
        raise AamInputError(
            "--subset-fraction", f"must be in (0, 1], got {subset_fraction}", "e.g. 0.8 keeps 80% of each sample's ASVs per pass"
        )
    if batch_size < 1:
        raise AamInputError("--batch-size", f"must be at least 1, got {batch_size}", "give a positive batch size")
    model = model.to(device).eval()
    if passes == 1:
        outputs = _forward(model, inputs, inputs.rows, batch_size, device, on_batch=on_batch)[None]
    else:
        outputs = np.stack(
            [
                _forward(model, inputs, subset_rows(inputs, subset_fraction, seed, p), batch_size, device, on_batch=on_batch)
                for p in range(passes)
            ]
        )
    mean = outputs.mean(axis=0)  # [N, T] or [N, C]
    if class_names:
        return [Predictions(target_names[0], list(inputs.sample_ids), probabilities=mean, class_names=tuple(class_names))]
    std = outputs.std(axis=0, ddof=1) if passes > 1 else None
    return [
        Predictions(name, list(inputs.sample_ids), values=mean[:, t], std=None if std is None else std[:, t])
        for t, name in enumerate(target_names)
    ]


def _forward(
    model: AAMModel,
    inputs: ModelInputs,
    rows: list[SampleRow],
    batch_size: int,
    device: str | torch.device,
    output: str = "task",
    on_batch: Callable[[int], None] | None = None,
) -> np.ndarray:
    """``float64 [N, T]`` regression outputs in original units, ``[N, C]`` class probabilities, or
    (``output="sample_embedding"``) the sample embeddings ``[N, D]``."""
    dataset = SampleDataset(rows, inputs.tokens, None, inputs.covariates)
    outputs = []
    for start in range(0, len(dataset), batch_size):
        batch = to_device(collate([dataset[i] for i in range(start, min(start + batch_size, len(dataset)))]), torch.device(device))
        values = model(batch["tokens"], batch["counts"], {output}, batch.get("covariates"))[output].float()
        if output == "task":
            values = model.target_normalizer.inverse(values) if model.target_normalizer is not None else values.softmax(dim=-1)
        outputs.append(values.double().cpu().numpy())
        if on_batch is not None:
            on_batch(len(values))
    return np.concatenate(outputs)


@torch.no_grad()
def embed_inputs(
    model: AAMModel, inputs: ModelInputs, batch_size: int = DEFAULT_BATCH_SIZE, device: str | torch.device = "cpu"
) -> np.ndarray:
    """Sample embeddings ``float64 [N, D]`` of ``inputs`` (any export, pretrained or fine-tuned), in eval mode."""
    return _forward(model.to(device).eval(), inputs, inputs.rows, batch_size, device, output="sample_embedding")


def subset_rows(inputs: ModelInputs, fraction: float, seed: int, pass_index: int) -> list[SampleRow]:
    """Each sample keeps ``max(1, round(fraction * k))`` of its ``k`` ASVs, drawn from (seed, pass, sample ID)."""
    subsets = []
    for sample_id, row in zip(inputs.sample_ids, inputs.rows):
        rng = np.random.default_rng([seed, pass_index, zlib.crc32(sample_id.encode())])
        k = len(row.asv_index)
        keep = np.sort(rng.choice(k, size=max(1, round(fraction * k)), replace=False))
        subsets.append(SampleRow(row.sample_index, row.asv_index[keep], row.counts[keep]))
    return subsets


# --------------------------------------------------------------------------------------------
# a split of the run's own data (end of fine-tuning)


def split_inputs(data: PreparedData, split: str) -> ModelInputs:
    """The samples of ``split`` exactly as the trainer feeds them."""
    return rows_inputs(data, data.splits[split])


def rows_inputs(data: PreparedData, rows: Sequence[int]) -> ModelInputs:
    """The samples at ``rows`` (into the table) exactly as the trainer feeds them."""
    picked = [data.rows[i] for i in rows]
    return ModelInputs([data.table.sample_ids[r.sample_index] for r in picked], data.tokens, picked, data.covariates)


def predict_split(
    model: AAMModel, data: PreparedData, split: str, batch_size: int = DEFAULT_BATCH_SIZE, device: str | torch.device = "cpu"
) -> list[Predictions]:
    """Predictions (one pass, every selected ASV) for ``split`` of the run's data, as ``aam-ds predict``
    would make them from the run's export and table. ``model`` is a plain (unwrapped) AAMModel."""
    return predict_inputs(model, split_inputs(data, split), data.target_names, data.class_names, batch_size=batch_size, device=device)


# --------------------------------------------------------------------------------------------
# output


def prediction_paths(path: str | Path, target_names: Sequence[str]) -> list[Path]:
    """``path`` for one target; ``<stem>.<target><suffix>`` beside it for each of several targets."""
    path = Path(path)
    if len(target_names) == 1:
        return [path]
    return [path.with_name(f"{path.stem}.{name}{path.suffix}") for name in target_names]


def write_prediction_files(path: str | Path, predictions: list[Predictions]) -> list[Path]:
    """Write each target's predictions TSV (atomically) at :func:`prediction_paths`; returns the paths."""
    paths = prediction_paths(path, [p.target for p in predictions])
    for out, prediction in zip(paths, predictions):
        write_predictions(out, prediction)
    return paths
