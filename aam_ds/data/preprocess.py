"""The one preprocessing of a feature table into model inputs, shared by training and prediction.

Order (:func:`preprocess_samples`): drop samples without reads -> rarefy (``data.rarefy_depth``,
``data.rarefy_seed``) -> the caller's sample filter (training: samples without metadata) -> ASV
sequences -> tokens (``max_seq_len``, ambiguity policy) -> drop the ASVs the policy rejects, then
samples left without reads -> per-sample ASV selection (``max_asvs``, ``asv_selection``, seed
``split.seed``). Training (:func:`aam_ds.data.prepare.prepare_data`) and ``aam-ds predict``
(:func:`aam_ds.inference.predict.prepare_inputs`) both call it, so a model always sees samples
preprocessed the same way; samples without reads are dropped here alone, by
:func:`aam_ds.data.table.without_empty_samples`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

import numpy as np

from aam_ds.data.rarefy import rarefy
from aam_ds.data.select import SampleRow, sample_rows
from aam_ds.data.sequences import asv_sequences, dropped_rows, tokenize
from aam_ds.data.table import FeatureTable, without_empty_samples
from aam_ds.errors import AamInputError, notice
from aam_ds.spec import DataSpec

# (ASV sequences, ASV IDs, source named in errors) -> (tokens uint8 [M, max_seq_len], read from a cache)
TokensOf = Callable[[list[str], list[str], str], tuple[np.ndarray, bool]]
# (reason named in the sample accounting, table -> the table without the samples it leaves out)
SampleFilter = tuple[str, Callable[[FeatureTable], FeatureTable]]


@dataclass(frozen=True)
class PreprocessedSamples:
    """A table's samples as the model reads them.

    - ``table``: the kept samples and their ASVs (columns), rarefied when the spec says so
    - ``tokens``: ``uint8 [M, max_seq_len]`` of the table's ASVs, in column order
    - ``rows``: per kept sample, its selected ASV columns and counts (at most ``data.max_asvs``)
    - ``token_cache_hit``: the tokens were read from the on-disk cache
    - ``drops``: reason -> samples dropped, in the order the steps ran
    """

    table: FeatureTable
    tokens: np.ndarray
    rows: list[SampleRow]
    token_cache_hit: bool = False
    drops: dict[str, int] = field(default_factory=dict)


def preprocess_samples(
    table: FeatureTable,
    data: DataSpec,
    sequences: str | Path | None,
    tokens_of: TokensOf,
    sample_filter: SampleFilter | None = None,
    empty_reason: str = "nothing to learn from",
) -> PreprocessedSamples:
    """Preprocess ``table`` with the data settings ``data`` (the module docstring gives the order).

    ``sequences``: a FASTA / .qza of the ASVs, or None when the observation IDs are sequences.
    ``tokens_of`` tokenises them (training: through the token cache; prediction: refusing the
    ambiguity codes a model trained with ``ambiguous_bases=error`` cannot read).
    ``sample_filter``: ``(reason, filter)`` run after rarefaction. ``empty_reason`` completes the
    notice about samples without reads.

    Raises:
        AamInputError: no sample has reads, none reaches the rarefaction depth, sequences that
            cannot be read or tokenised, or no reads left once rejected ASVs are dropped.
    """
    drops: dict[str, int] = {}

    def step(reason: str, result: FeatureTable) -> FeatureTable:
        if len(result.sample_ids) < len(table.sample_ids):
            drops[reason] = len(table.sample_ids) - len(result.sample_ids)
        return result

    for reason, result in sample_reads(table, data, empty_reason):
        table = step(reason, result)
    if sample_filter is not None:
        table = step(sample_filter[0], sample_filter[1](table))
    seqs = asv_sequences(table.asv_ids, sequences, table.source)
    tokens, hit = tokens_of(seqs, list(table.asv_ids), str(sequences or table.source))
    kept, tokens = drop_rejected_asvs(table, tokens)
    table = step("no reads left without ASVs with ambiguous bases", kept)
    rows = sample_rows(table, data.max_asvs, data.asv_selection, seed=data.split.seed)
    return PreprocessedSamples(table, tokens, rows, hit, drops)


def sample_reads(table: FeatureTable, data: DataSpec, empty_reason: str) -> Iterator[tuple[str, FeatureTable]]:
    """The steps that decide each sample's reads, in order, as ``(reason a sample is dropped, the table after the step)``:
    samples without reads dropped, then rarefaction to ``data.rarefy_depth`` (seeded by ``data.rarefy_seed``)."""
    table = without_empty_samples(table, empty_reason)
    yield "no reads", table
    if data.rarefy_depth is not None:
        yield f"fewer reads than data.rarefy_depth {data.rarefy_depth}", rarefy(table, data.rarefy_depth, data.rarefy_seed)


def distance_table(table: FeatureTable, data: DataSpec, sequences: str | Path | None) -> FeatureTable:
    """The samples and reads of ``table`` that training compares with ``data.metric`` (pretraining's on-the-fly targets),
    for ``aam-ds distances``: with ``data.rarefy_depth``, :func:`sample_reads` (the same seeded draws), then, with
    ``data.ambiguous_bases=drop_asv``, without the ASVs whose sequences hold ambiguous bases. (The sample filter and the
    per-sample ASV selection of :func:`preprocess_samples` change no distance between the samples kept.)

    ``sequences``: a FASTA / .qza of the ASVs (read with ``drop_asv`` alone), or None when the observation IDs are sequences.

    Raises:
        AamInputError: as :func:`preprocess_samples` (no sample with reads, none reaching the depth, unreadable sequences).
    """
    if data.rarefy_depth is not None:  # (without rarefaction a sample without reads keeps its defined distances)
        table = list(sample_reads(table, data, "nothing to rarefy"))[-1][1]
    if data.ambiguous_bases != "drop_asv":
        return table
    seqs = asv_sequences(table.asv_ids, sequences, table.source)
    tokens = tokenize(seqs, data.max_seq_len, data.ambiguous_bases, ids=list(table.asv_ids), source=str(sequences or table.source))
    return drop_rejected_asvs(table, tokens)[0]


def drop_rejected_asvs(table: FeatureTable, tokens: np.ndarray) -> tuple[FeatureTable, np.ndarray]:
    """Remove ASVs that ``ambiguous_bases='drop_asv'`` rejected (all-PAD token rows), then samples left
    without reads; the tokens follow the table's remaining columns."""
    rejected = dropped_rows(tokens)
    if not rejected.any():
        return table, tokens
    keep = np.flatnonzero(~rejected)
    notice(f"{table.source}: dropping {rejected.sum()} ASVs with ambiguous bases (data.ambiguous_bases=drop_asv)")
    table = FeatureTable(table.sample_ids, [table.asv_ids[j] for j in keep], table.counts[:, keep].tocsr(), table.source)
    if table.counts.sum() == 0:
        raise AamInputError(table.source, "no reads remain after dropping ASVs with ambiguous bases", "set data.ambiguous_bases=as_n")
    tokens, row_of = tokens[keep], {asv: i for i, asv in enumerate(table.asv_ids)}
    table = without_empty_samples(table, "every ASV they had holds ambiguous bases")
    return table, tokens[[row_of[asv] for asv in table.asv_ids]]
