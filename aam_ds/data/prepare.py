"""prepare_data(spec): every data step from files to datasets, in one place.

Order: load table -> :func:`aam_ds.data.preprocess.preprocess_samples` (drop samples without reads -> rarefy -> align
metadata -> ASV sequences -> tokens (cached) -> drop ASVs the ambiguity policy rejects -> per-sample ASV selection),
the preprocessing ``aam-ds predict`` shares -> targets / covariates -> splits (saved).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from aam_ds.data.cache import cached_tokenize
from aam_ds.data.dataset import RowsOf, SampleDataset
from aam_ds.data.metadata import align_metadata, categorical_codes, load_metadata, numeric_targets
from aam_ds.data.preprocess import preprocess_samples
from aam_ds.data.select import SampleRow
from aam_ds.data.shards import ShardedTable, ShardRows, open_shards
from aam_ds.data.splits import save_splits, split_samples
from aam_ds.data.synthetic import demo_data
from aam_ds.data.table import FeatureTable, load_table
from aam_ds.errors import AamInputError
from aam_ds.spec import RunSpec

# with the demo data and no data.targets, fine-tuning predicts these metadata columns
DEMO_TARGETS = {"regression": "age", "classification": "body_site"}


@dataclass(frozen=True)
class PreparedData:
    """Everything the trainer needs. Arrays indexed by sample are in ``table.sample_ids`` order.

    - ``table``: the preprocessed table; a :class:`~aam_ds.data.shards.ShardedTable` for a sharded dataset
      folder (``data.table: DIR``), whose rows are read on access
    - ``tokens``: ``uint8 [M, max_seq_len]`` for the table's ASVs (columns)
    - ``rows``: per sample, the kept ASV columns and counts (at most ``data.max_asvs``)
    - ``targets``: ``float32 [N, T]`` (regression) or ``int64 [N]`` (classification) or None
    - ``covariates``: ``int64 [N, C]`` category codes or None; ``covariate_classes[c]`` their names
    - ``splits``: sorted row indices for ``train`` / ``val`` / ``test``
    - ``origin``: where the table came from (its path, or that the demo data was generated)
    - ``samples_loaded``: samples in the table as read; ``drops``: reason -> samples dropped since
    - ``validation``: what the ``val`` split is, where the labels of its scores must say it (a cross-validation
      fold's: a part of the fold's training samples, not its test samples); empty: the table's own validation split
    """

    table: FeatureTable | ShardedTable
    tokens: np.ndarray
    rows: list[SampleRow]
    metadata: pd.DataFrame | None
    target_names: list[str]
    targets: np.ndarray | None
    class_names: list[str] | None
    covariate_names: list[str]
    covariates: np.ndarray | None
    covariate_classes: list[list[str]]
    splits: dict[str, np.ndarray]
    tree: Path | None
    token_cache_hit: bool
    origin: str = ""
    samples_loaded: int = 0
    drops: dict[str, int] = field(default_factory=dict)
    validation: str = ""

    def sample_accounting(self) -> str:
        """One line for the run header: samples loaded, dropped (why) and in each split."""
        dropped = "".join(f", {n} dropped ({reason})" for reason, n in self.drops.items())
        splits = " / ".join(f"{name} {len(rows)}" for name, rows in self.splits.items() if len(rows))
        return f"{self.samples_loaded} loaded{dropped}; {splits}"

    @property
    def max_seq_len(self) -> int:
        return self.tokens.shape[1]

    def dataset(self, split: str) -> SampleDataset:
        """The samples of ``split`` ('train', 'val', 'test') as a :class:`SampleDataset`."""
        return SampleDataset(RowsOf(self.rows, self.splits[split]), self.tokens, self.targets, self.covariates)


def prepare_data(spec: RunSpec, run_dir: Path | None = None) -> PreparedData:
    """Load, validate and preprocess the data of ``spec``; save the split ID lists under ``run_dir``.

    With ``spec.data.table`` unset the embedded demo dataset (table, tree, metadata) is used, and a
    fine-tuning task without ``data.targets`` predicts :data:`DEMO_TARGETS` (age / body_site).
    """
    data = spec.data
    if data.table is not None and Path(data.table).is_dir():
        return _prepare_shards(spec, run_dir)
    table_path, tree, metadata_path, sequences = data.table, data.tree, data.metadata, data.sequences
    target_columns = list(data.targets)
    if table_path is None:
        demo = demo_data(data.cache_dir)
        table_path, tree, metadata_path = demo.table, tree or demo.tree, metadata_path or demo.metadata
        if not target_columns and spec.loss.task != "none":
            target_columns = [DEMO_TARGETS[spec.loss.task]]

    table = load_table(table_path)
    samples_loaded, metadata = len(table.sample_ids), None

    def keep_with_metadata(rarefied: FeatureTable) -> FeatureTable:
        nonlocal metadata
        kept, metadata = _with_metadata(rarefied, metadata_path, spec, bool(target_columns))
        return kept

    def cached_tokens(seqs: list[str], ids: list[str], source: str) -> tuple[np.ndarray, bool]:
        cached = cached_tokenize(seqs, data.max_seq_len, data.ambiguous_bases, data.cache_dir, ids=ids, source=source)
        return cached.tokens, cached.hit

    samples = preprocess_samples(table, data, sequences, cached_tokens, ("no metadata", keep_with_metadata))
    table, tokens, rows = samples.table, samples.tokens, samples.rows
    metadata = None if metadata is None else metadata.loc[table.sample_ids]
    return _assembled(
        spec,
        run_dir,
        table,
        tokens,
        rows,
        metadata,
        target_columns,
        tree=Path(tree) if tree else None,
        token_cache_hit=samples.token_cache_hit,
        origin=str(table_path) if data.table else f"demo data (generated, seeded) {table_path}",
        samples_loaded=samples_loaded,
        drops=samples.drops,
    )


def _prepare_shards(spec: RunSpec, run_dir: Path | None) -> PreparedData:
    """:func:`prepare_data` for a sharded dataset folder (``aam-ds shard``): rows read lazily, already preprocessed.

    Sample metadata (targets, covariates, stratified or grouped splits) must cover every sample of the folder."""
    data = spec.data
    table, tokens, tree = open_shards(data.table, data)
    manifest = table.shards.manifest
    metadata = None
    if data.metadata is not None:
        metadata = align_metadata(load_metadata(data.metadata), list(table.sample_ids), table.source)
    elif data.targets or data.covariates or data.split.kind != "random":
        _with_metadata(table, None, spec, bool(data.targets))  # raises: they need metadata
    return _assembled(
        spec,
        run_dir,
        table,
        tokens,
        ShardRows(table.shards),
        metadata,
        list(data.targets),
        tree=Path(data.tree or tree) if (data.tree or tree) else None,
        token_cache_hit=False,
        origin=f"{data.table} (sharded dataset, {len(manifest['shards'])} shards, read lazily)",
        samples_loaded=manifest["samples_loaded"],
        drops=manifest["drops"],
    )


def _assembled(
    spec: RunSpec,
    run_dir: Path | None,
    table: FeatureTable | ShardedTable,
    tokens: np.ndarray,
    rows: list[SampleRow] | ShardRows,
    metadata: pd.DataFrame | None,
    target_columns: list[str],
    **provenance: object,
) -> PreparedData:
    """The :class:`PreparedData` of preprocessed samples and their metadata rows (in table order):
    targets, covariates and splits, the split ID lists saved under ``run_dir``. ``provenance``: the
    remaining fields (tree, token_cache_hit, origin, samples_loaded, drops)."""
    data = spec.data
    targets, class_names = _targets(target_columns, spec.loss.task, metadata)
    covariates, covariate_classes = _covariates(data.covariates, metadata)
    splits = split_samples(len(table.sample_ids), data.split, metadata)
    if run_dir is not None:
        save_splits(run_dir, splits, table.sample_ids)
    return PreparedData(
        table=table,
        tokens=tokens,
        rows=rows,
        metadata=metadata,
        target_names=target_columns,
        targets=targets,
        class_names=class_names,
        covariate_names=list(data.covariates),
        covariates=covariates,
        covariate_classes=covariate_classes,
        splits=splits,
        **provenance,
    )


def _with_metadata(
    table: FeatureTable, metadata_path: Path | None, spec: RunSpec, has_targets: bool
) -> tuple[FeatureTable, pd.DataFrame | None]:
    """The table's metadata rows (None without a metadata file); table samples without a row are
    dropped when ``data.drop_samples_without_metadata`` (else an error)."""
    data = spec.data
    if metadata_path is None:
        if has_targets or data.covariates or data.split.kind != "random":
            raise AamInputError(
                "data.metadata",
                "targets, covariates and stratified / grouped splits need sample metadata",
                "set data.metadata to a QIIME 2 metadata TSV",
            )
        return table, None
    metadata = align_metadata(load_metadata(metadata_path), table.sample_ids, table.source, data.drop_samples_without_metadata)
    if len(metadata) < len(table.sample_ids):
        keep = set(metadata.index)
        table = table.take_samples([i for i, s in enumerate(table.sample_ids) if s in keep]).drop_empty_asvs()
    return table, metadata


def _covariates(columns: list[str], metadata: pd.DataFrame | None) -> tuple[np.ndarray | None, list[list[str]]]:
    """``int64 [N, C]`` codes of the covariate columns (values as written) and each one's classes."""
    if not columns:
        return None, []
    coded = [categorical_codes(metadata, c, "data.covariates", allow_missing=True) for c in columns]
    return np.stack([codes for codes, _ in coded], axis=1), [classes for _, classes in coded]


def _targets(columns: list[str], task: str, metadata: pd.DataFrame | None) -> tuple[np.ndarray | None, list[str] | None]:
    """Regression targets ``float32 [N, T]``, or classification codes ``int64 [N]`` with class names."""
    if not columns:
        return None, None
    if task != "classification":
        return numeric_targets(metadata, columns), None
    if len(columns) != 1:
        raise AamInputError("data.targets", f"classification predicts one column, got {columns}", "give a single target column")
    codes, classes = categorical_codes(metadata, columns[0], "data.targets")
    if len(classes) < 2:
        raise AamInputError(f"data.targets={columns[0]!r}", f"has a single class {classes}", "classification needs at least two classes")
    return codes, classes
