"""Per-sample ASV selection: each sample keeps at most ``max_asvs`` of its ASVs."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np

from aam_ds.data.table import FeatureTable

Selection = Literal["abundance", "random", "first"]


@dataclass(frozen=True)
class SampleRow:
    """One sample's kept ASVs: ``asv_index`` int64 ``[k]`` (table columns, ascending) and
    ``counts`` float32 ``[k]`` reads; ``sample_index`` is the sample's row in the table."""

    sample_index: int
    asv_index: np.ndarray
    counts: np.ndarray


def sample_rows(table: FeatureTable, max_asvs: int, selection: Selection = "abundance", seed: int = 0) -> list[SampleRow]:
    """The present ASVs (count > 0) of every sample, at most ``max_asvs`` each.

    ``abundance`` keeps the highest counts (ties broken by table order), ``random`` a seeded uniform
    choice, ``first`` the first ones in table order. Kept ASVs are listed in table order.
    """
    rng = np.random.default_rng(seed)
    csr = table.counts.tocsr()
    csr.sort_indices()
    rows = []
    for i in range(csr.shape[0]):
        start, end = csr.indptr[i], csr.indptr[i + 1]
        cols, vals = csr.indices[start:end].astype(np.int64), csr.data[start:end]
        present = vals > 0
        cols, vals = cols[present], vals[present]
        if len(cols) > max_asvs:
            if selection == "abundance":
                chosen = np.lexsort((cols, -vals))[:max_asvs]
            elif selection == "random":
                chosen = rng.choice(len(cols), size=max_asvs, replace=False)
            elif selection == "first":
                chosen = np.arange(max_asvs)
            else:
                raise ValueError(f"unknown ASV selection {selection!r}")
            chosen = np.sort(chosen)
            cols, vals = cols[chosen], vals[chosen]
        rows.append(SampleRow(i, cols, vals.astype(np.float32)))
    return rows
