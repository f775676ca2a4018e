"""Seeded rarefaction: subsample every sample to the same read depth without replacement."""

from __future__ import annotations

from typing import Sequence

import numpy as np
import scipy.sparse as sp

from aam_ds.data.table import FeatureTable
from aam_ds.errors import AamInputError, notice


def rarefy(table: FeatureTable, depth: int, seed: int = 0) -> FeatureTable:
    """Draw ``depth`` reads from each sample without replacement (multivariate hypergeometric).

    Samples with fewer than ``depth`` reads are dropped (with a warning giving the count); ASVs
    left with no reads are dropped. The same ``seed`` gives the same table.
    """
    counts = table.counts
    if not np.array_equal(counts.data, np.round(counts.data)):
        raise AamInputError(
            table.source,
            "rarefaction needs integer read counts but the table has fractional values",
            "give raw counts or unset data.rarefy_depth",
        )
    totals = np.asarray(counts.sum(axis=1)).ravel()
    keep = np.flatnonzero(totals >= depth)
    if len(keep) == 0:
        raise AamInputError(
            f"data.rarefy_depth={depth}",
            f"every sample of {table.source} has fewer reads (the deepest has {int(totals.max())})",
            f"choose a depth at most {int(totals.max())}, e.g. near the 10th percentile of sample depths "
            f"({int(np.percentile(totals, 10))})",
        )
    if len(keep) < len(totals):
        notice(f"rarefaction to {depth} reads drops {len(totals) - len(keep)} of {len(totals)} samples with fewer reads")
    rarefied = rarefied_rows(counts, keep, depth, np.random.default_rng(seed))
    kept = FeatureTable([table.sample_ids[i] for i in keep], table.asv_ids, rarefied, table.source)
    return kept.drop_empty_asvs()


def rarefied_rows(counts: sp.csr_matrix, rows: Sequence[int], depth: int, rng: np.random.Generator) -> sp.csr_matrix:
    """The ``rows`` of ``counts`` (integer read counts, each at least ``depth``), each drawn down to
    ``depth`` reads without replacement (multivariate hypergeometric), in order from ``rng``:
    float64 ``[len(rows), M]``."""
    indptr, indices, values = [0], [np.zeros(0, dtype=counts.indices.dtype)], [np.zeros(0)]
    for row in rows:
        start, end = counts.indptr[row], counts.indptr[row + 1]
        drawn = rng.multivariate_hypergeometric(counts.data[start:end].astype(np.int64), depth)
        nonzero = drawn > 0
        indices.append(counts.indices[start:end][nonzero])
        values.append(drawn[nonzero].astype(np.float64))
        indptr.append(indptr[-1] + int(nonzero.sum()))
    return sp.csr_matrix((np.concatenate(values), np.concatenate(indices), np.asarray(indptr)), shape=(len(rows), counts.shape[1]))
