"""Predict sample metadata with a fine-tuned export, preprocessing exactly as training did.

Two entry points share one code path, :func:`predict_inputs` (model inputs -> Predictions):

- :func:`predict_table` (``aam-ds predict``): a table file, preprocessed by :func:`prepare_inputs`
  with the data settings recorded in the export's spec, in training's order: rarefaction ->
  ASV sequences -> tokens (``max_seq_len``, ambiguity policy) -> removal of the ASVs the policy
  drops -> per-sample ASV selection (``max_asvs``, ``asv_selection``, seed ``split.seed``) ->
  covariate codes in the training classes.
- :func:`predict_split`: a split of the run's own :class:`PreparedData` (the end of fine-tuning).

Choices made for prediction (training's settings where they define the model's inputs):

- Rarefaction: when training rarefied (``data.rarefy_depth``), the table is rarefied to the same
  depth with the same seed, since the model only ever saw rarefied samples; the training table
  therefore reproduces training's inputs exactly. Samples shallower than the depth cannot be
  rarefied and are left out (with a warning naming how many), as in training; so are samples
  without any reads.
- Sequences: observation IDs must be DNA or a FASTA / .qza must be given; the training run's
  FASTA is not reused (it belongs to the training table). Ambiguity codes follow the model's
  policy: ``as_n`` reads them as N, ``drop_asv`` drops those ASVs (and samples left empty, with a
  warning), ``error`` refuses the table, since the model never learnt such inputs.
- Metadata: read only when the model has covariates; target columns are never needed. Every
  table sample needs a row, and a covariate value unseen in training is refused (a missing value
  is the class ``<missing>``, valid only if training had it).
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

from aam_ds.data.dataset import SampleDataset, collate
from aam_ds.data.metadata import align_metadata, categorical_codes, load_metadata
from aam_ds.data.prepare import PreparedData, drop_rejected_asvs
from aam_ds.data.rarefy import rarefy
from aam_ds.data.select import SampleRow, sample_rows
from aam_ds.data.sequences import asv_sequences, dropped_rows, tokenize
from aam_ds.data.table import FeatureTable, load_table
from aam_ds.engine.evaluate import to_device
from aam_ds.errors import AamInputError, notice
from aam_ds.evaluation.predictions import Predictions, write_predictions
from aam_ds.export import Export, build_exported_model, load_export
from aam_ds.model.aam import AAMModel
from aam_ds.spec import DataSpec

DEFAULT_SUBSET_FRACTION = 0.8
DEFAULT_BATCH_SIZE = 32


@dataclass(frozen=True)
class ModelInputs:
    """Preprocessed samples ready for the model.

    - ``sample_ids[i]``: the sample of ``rows[i]``
    - ``tokens``: ``uint8 [M, L]`` tokens of every ASV column referenced by ``rows``
    - ``rows``: per sample, its selected ASV columns and read counts
    - ``covariates``: ``int64 [N_table, C]`` codes indexed by ``SampleRow.sample_index``, or None
    """

    sample_ids: list[str]
    tokens: np.ndarray
    rows: list[SampleRow]
    covariates: np.ndarray | None


# --------------------------------------------------------------------------------------------
# the shared code path


@torch.no_grad()
def predict_inputs(
    model: AAMModel, inputs: ModelInputs, target_names: Sequence[str], class_names: Sequence[str] | None = None,
    passes: int = 1, subset_fraction: float = DEFAULT_SUBSET_FRACTION, seed: int = 0,
    batch_size: int = DEFAULT_BATCH_SIZE, device: str | torch.device = "cpu", on_batch: Callable[[int], None] | None = None,
) -> list[Predictions]:
    """One :class:`Predictions` per regression target (original units), or one for classification.

    ``model`` must have a task head; it is moved to ``device`` and put in eval mode. ``on_batch(n)``
    is called after each forward pass with its number of samples (``passes x N`` in all): a progress bar.
    """
    if passes < 1:
        raise AamInputError("--passes", f"must be at least 1, got {passes}", "give a positive number of passes")
    if passes > 1 and not 0.0 < subset_fraction <= 1.0:
        raise AamInputError("--subset-fraction", f"must be in (0, 1], got {subset_fraction}", "e.g. 0.8 keeps 80% of each sample's ASVs per pass")
    if batch_size < 1:
        raise AamInputError("--batch-size", f"must be at least 1, got {batch_size}", "give a positive batch size")
    model = model.to(device).eval()
    if passes == 1:
        outputs = _forward(model, inputs, inputs.rows, batch_size, device, on_batch=on_batch)[None]
    else:
        outputs = np.stack([
            _forward(model, inputs, subset_rows(inputs, subset_fraction, seed, p), batch_size, device, on_batch=on_batch)
            for p in range(passes)
        ])  # fmt: skip
    mean = outputs.mean(axis=0)  # [N, T] or [N, C]
    if class_names:
        return [Predictions(target_names[0], list(inputs.sample_ids), probabilities=mean, class_names=tuple(class_names))]
    std = outputs.std(axis=0, ddof=1) if passes > 1 else None
    return [
        Predictions(name, list(inputs.sample_ids), values=mean[:, t], std=None if std is None else std[:, t])
        for t, name in enumerate(target_names)
    ]


def _forward(model: AAMModel, inputs: ModelInputs, rows: list[SampleRow], batch_size: int, device: str | torch.device,
             output: str = "task", on_batch: Callable[[int], None] | None = None) -> np.ndarray:
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
def embed_inputs(model: AAMModel, inputs: ModelInputs, batch_size: int = DEFAULT_BATCH_SIZE,
                 device: str | torch.device = "cpu") -> np.ndarray:
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
    rows = [data.rows[i] for i in data.splits[split]]
    return ModelInputs([data.table.sample_ids[r.sample_index] for r in rows], data.tokens, rows, data.covariates)


def predict_split(model: AAMModel, data: PreparedData, split: str, batch_size: int = DEFAULT_BATCH_SIZE,
                  device: str | torch.device = "cpu") -> list[Predictions]:
    """Predictions (one pass, every selected ASV) for ``split`` of the run's data, as ``aam-ds predict``
    would make them from the run's export and table. ``model`` is a plain (unwrapped) AAMModel."""
    return predict_inputs(model, split_inputs(data, split), data.target_names, data.class_names,
                          batch_size=batch_size, device=device)


# --------------------------------------------------------------------------------------------
# a table file (aam-ds predict)


def predict_table(
    export: Export | str | Path, table: str | Path, sequences: str | Path | None = None, metadata: str | Path | None = None,
    passes: int = 1, subset_fraction: float = DEFAULT_SUBSET_FRACTION, seed: int = 0,
    batch_size: int = DEFAULT_BATCH_SIZE, device: str | torch.device = "cpu",
    progress: Callable[[int], Callable[[int], None]] | None = None,
) -> list[Predictions]:
    """Predict every (kept) sample of ``table`` with a fine-tuned export (a path or a loaded Export).

    Returns one :class:`Predictions` per regression target, in original units, or one with class
    probabilities. Refuses (AamInputError) a pretraining export, sequences the model cannot read,
    and missing or unknown covariates. ``progress(total)``, once the table is read, returns the
    ``on_batch`` callback of :func:`predict_inputs` (``total`` = passes x samples).
    """
    source = "model export" if isinstance(export, Export) else str(export)
    export = export if isinstance(export, Export) else load_export(Path(export))
    description = task_description(export, source)
    inputs = prepare_inputs(export, table, sequences, metadata)
    on_batch = progress(passes * len(inputs.sample_ids)) if progress is not None else None
    return predict_inputs(build_exported_model(export), inputs, description["target_names"], description["class_names"],
                          passes, subset_fraction, seed, batch_size, device, on_batch)


def task_description(export: Export, source: str) -> dict:
    """The export's target description (names, classes, covariates); refuses an export without a task head."""
    has_head = export.model_args.get("n_targets", 0) or export.model_args.get("n_classes", 0)
    if export.targets is None or not has_head:
        raise AamInputError(
            source, "is a pretraining export: it has no task head, so it cannot predict metadata",
            "fine-tune it first (`aam-ds finetune --set model.pretrained=<this file> --set loss.task=... "
            "--set data.targets=[...]`) and predict with that run's model.pt",
        )  # fmt: skip
    return export.targets


def prepare_inputs(export: Export, table: str | Path, sequences: str | Path | None = None,
                   metadata: str | Path | None = None) -> ModelInputs:
    """Preprocess ``table`` with the export's data settings (see the module docstring)."""
    data = DataSpec.model_validate(export.spec["data"])
    feature_table = without_empty_samples(load_table(table))
    if data.rarefy_depth is not None:
        feature_table = rarefy(feature_table, data.rarefy_depth, data.rarefy_seed)
    seqs = asv_sequences(feature_table.asv_ids, sequences, feature_table.source)
    tokens = readable_tokens(seqs, feature_table.asv_ids, data, str(sequences or feature_table.source))
    feature_table, tokens, _ = drop_rejected_asvs(feature_table, tokens, None)
    rows = sample_rows(feature_table, data.max_asvs, data.asv_selection, seed=data.split.seed)
    covariates = None
    if export.targets and export.targets["covariate_names"]:
        covariates = covariate_codes(feature_table.sample_ids, feature_table.source, metadata, export.targets)
    return ModelInputs(list(feature_table.sample_ids), tokens, rows, covariates)


def without_empty_samples(table: FeatureTable) -> FeatureTable:
    """The table without samples that have no reads (nothing to predict from), with a warning."""
    nonempty = np.flatnonzero(np.asarray(table.counts.sum(axis=1)).ravel() > 0)
    if len(nonempty) == len(table.sample_ids):
        return table
    empty = sorted(set(table.sample_ids) - {table.sample_ids[i] for i in nonempty})
    notice(f"{table.source}: {len(empty)} samples have no reads and get no prediction, e.g. {empty[:5]}")
    return table.take_samples(nonempty).drop_empty_asvs()


def readable_tokens(seqs: list[str], ids: list[str], data: DataSpec, source: str) -> np.ndarray:
    """Tokens ``uint8 [M, max_seq_len]`` under the model's ambiguity policy; with policy ``error``
    ASVs holding IUPAC codes are refused, naming the policy the model was trained with."""
    if data.ambiguous_bases != "error":
        return tokenize(seqs, data.max_seq_len, data.ambiguous_bases, ids=ids, source=source)
    tokens = tokenize(seqs, data.max_seq_len, "drop_asv", ids=ids, source=source)  # same tokens, ambiguous rows blank
    ambiguous = np.flatnonzero(dropped_rows(tokens))
    if len(ambiguous):
        raise AamInputError(
            source,
            f"{len(ambiguous)} of {len(ids)} ASVs contain IUPAC ambiguity codes (e.g. {ids[ambiguous[0]]!r}), "
            "which this model cannot read: it was trained with data.ambiguous_bases=error",
            "remove those ASVs from the table (`qiime feature-table filter-features`), or fine-tune a model with "
            "data.ambiguous_bases=as_n or drop_asv",
        )  # fmt: skip
    return tokens


def covariate_codes(sample_ids: list[str], table_source: str, metadata: str | Path | None, targets: dict) -> np.ndarray:
    """``int64 [N, C]`` codes of the model's covariates for ``sample_ids``, in the training classes."""
    names, classes = targets["covariate_names"], targets["covariate_classes"]
    if metadata is None:
        raise AamInputError(
            "--metadata", f"the model uses the covariates {names}, which come from sample metadata",
            f"pass --metadata with a QIIME 2 metadata TSV holding the columns {names} for every sample of {table_source}",
        )  # fmt: skip
    frame = load_metadata(metadata)
    missing = [s for s in sample_ids if s not in frame.index]
    if missing:
        raise AamInputError(
            str(metadata), f"{len(missing)} of the {len(sample_ids)} samples of {table_source} have no metadata row, "
            f"e.g. {missing[:5]}; the model's covariates {names} need one for every sample",
            "add rows for those samples (IDs spelled exactly as in the table) or filter them out of the table",
        )  # fmt: skip
    frame = align_metadata(frame, sample_ids, table_source)
    columns = []
    for name, known in zip(names, classes):
        codes, found = categorical_codes(frame, name, f"--metadata column {name!r}", allow_missing=True)
        lookup = {c: i for i, c in enumerate(known)}
        unknown = [c for c in found if c not in lookup]
        if unknown:
            examples = list(frame.index[np.isin(codes, [i for i, c in enumerate(found) if c not in lookup])][:5])
            raise AamInputError(
                f"{metadata} column {name!r}",
                f"values {unknown[:5]} (samples {examples}) were not seen in training, whose categories are {known}",
                "map them to a training category, or predict only samples with known categories",
            )  # fmt: skip
        columns.append(np.asarray([lookup[c] for c in found], dtype=np.int64)[codes])
    return np.stack(columns, axis=1)


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
