"""Predict sample metadata with a fine-tuned export on a table file (``aam-ds predict``),
preprocessing exactly as training did.

:func:`predict_table` preprocesses the table with :func:`prepare_inputs`, using the data settings
recorded in the export's spec and training's own preprocessing function
(:func:`aam_ds.data.preprocess.preprocess_samples`): rarefaction -> ASV sequences -> tokens
(``max_seq_len``, ambiguity policy) -> removal of the ASVs the policy drops -> per-sample ASV
selection (``max_asvs``, ``asv_selection``, seed ``split.seed``) -> covariate codes in the
training classes; it then predicts through :func:`aam_ds.prediction.predict_inputs`, the code
path the trainer's predictions of a run's own splits take too (repeated passes: see
:mod:`aam_ds.prediction`).

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
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import numpy as np
import torch

from aam_ds.data.metadata import align_metadata, categorical_codes, load_metadata
from aam_ds.data.preprocess import preprocess_samples
from aam_ds.data.sequences import dropped_rows, tokenize
from aam_ds.data.table import load_table
from aam_ds.errors import AamInputError
from aam_ds.evaluation.predictions import Predictions
from aam_ds.export import Export, build_exported_model, load_export
from aam_ds.inference.onnx import OnnxModel
from aam_ds.model.aam import AAMModel
from aam_ds.prediction import DEFAULT_BATCH_SIZE, DEFAULT_SUBSET_FRACTION, ModelInputs, predict_inputs
from aam_ds.spec import DataSpec


def predict_table(
    export: Export | str | Path,
    table: str | Path,
    sequences: str | Path | None = None,
    metadata: str | Path | None = None,
    passes: int = 1,
    subset_fraction: float = DEFAULT_SUBSET_FRACTION,
    seed: int = 0,
    batch_size: int = DEFAULT_BATCH_SIZE,
    device: str | torch.device = "cpu",
    progress: Callable[[int], Callable[[int], None]] | None = None,
) -> list[Predictions]:
    """Predict every (kept) sample of ``table`` with a fine-tuned export (a model.pt or model.onnx path,
    or a loaded Export).

    Returns one :class:`Predictions` per regression target, in original units, or one with class
    probabilities. Refuses (AamInputError) a pretraining export, sequences the model cannot read,
    and missing or unknown covariates. ``progress(total)``, once the table is read, returns the
    ``on_batch`` callback of :func:`predict_inputs` (``total`` = passes x samples).
    """
    source = "model export" if isinstance(export, Export) else str(export)
    export, model = load_predictor(export)
    description = task_description(export, source)
    inputs = prepare_inputs(export, table, sequences, metadata)
    on_batch = progress(passes * len(inputs.sample_ids)) if progress is not None else None
    return predict_inputs(
        model, inputs, description["target_names"], description["class_names"], passes, subset_fraction, seed, batch_size, device, on_batch
    )


def load_predictor(model: Export | str | Path) -> tuple[Export, AAMModel | OnnxModel]:
    """The export's description and a model to run: the AAMModel of a model.pt (or loaded Export), or
    the onnxruntime session of a ``.onnx`` file written by ``aam-ds export-onnx`` (whose description
    comes from its metadata; see :mod:`aam_ds.inference.onnx`)."""
    if isinstance(model, Export):
        return model, build_exported_model(model)
    if Path(model).suffix == ".onnx":
        graph = OnnxModel(model)
        return graph.description, graph
    export = load_export(Path(model))
    return export, build_exported_model(export)


def task_description(export: Export, source: str) -> dict:
    """The export's target description (names, classes, covariates); refuses an export without a task head."""
    has_head = export.model_args.get("n_targets", 0) or export.model_args.get("n_classes", 0)
    if export.targets is None or not has_head:
        raise AamInputError(
            source,
            "is a pretraining export: it has no task head, so it cannot predict metadata",
            "fine-tune it first (`aam-ds finetune --set model.pretrained=<this file> --set loss.task=... "
            "--set data.targets=[...]`) and predict with that run's model.pt",
        )
    return export.targets


def prepare_inputs(
    export: Export, table: str | Path, sequences: str | Path | None = None, metadata: str | Path | None = None
) -> ModelInputs:
    """Preprocess ``table`` with the export's data settings through
    :func:`aam_ds.data.preprocess.preprocess_samples`, training's own preprocessing (see the module
    docstring), then code its covariates in the training classes."""
    data = DataSpec.model_validate(export.spec["data"])

    def readable(seqs: list[str], ids: list[str], source: str) -> tuple[np.ndarray, bool]:
        return readable_tokens(seqs, ids, data, source), False

    samples = preprocess_samples(
        load_table(table), data, sequences, readable, empty_reason="nothing to predict from; they get no prediction"
    )
    feature_table, covariates = samples.table, None
    if export.targets and export.targets["covariate_names"]:
        covariates = covariate_codes(feature_table.sample_ids, feature_table.source, metadata, export.targets)
    return ModelInputs(list(feature_table.sample_ids), samples.tokens, samples.rows, covariates, list(feature_table.asv_ids))


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
        )
    return tokens


def covariate_codes(sample_ids: list[str], table_source: str, metadata: str | Path | None, targets: dict) -> np.ndarray:
    """``int64 [N, C]`` codes of the model's covariates for ``sample_ids``, in the training classes."""
    names, classes = targets["covariate_names"], targets["covariate_classes"]
    if metadata is None:
        raise AamInputError(
            "--metadata",
            f"the model uses the covariates {names}, which come from sample metadata",
            f"pass --metadata with a QIIME 2 metadata TSV holding the columns {names} for every sample of {table_source}",
        )
    frame = load_metadata(metadata)
    missing = [s for s in sample_ids if s not in frame.index]
    if missing:
        raise AamInputError(
            str(metadata),
            f"{len(missing)} of the {len(sample_ids)} samples of {table_source} have no metadata row, "
            f"e.g. {missing[:5]}; the model's covariates {names} need one for every sample",
            "add rows for those samples (IDs spelled exactly as in the table) or filter them out of the table",
        )
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
            )
        columns.append(np.asarray([lookup[c] for c in found], dtype=np.int64)[codes])
    return np.stack(columns, axis=1)
