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
        chosen = selected_positions(cols, vals, max_asvs, selection, rng)
        rows.append(SampleRow(i, cols[chosen], vals[chosen].astype(np.float32)))
    return rows


def selected_positions(cols: np.ndarray, vals: np.ndarray, max_asvs: int, selection: Selection, rng: np.random.Generator) -> np.ndarray:
    """Positions (``int64``, ascending) into one sample's stored entries ``cols`` / ``vals`` of the ASVs it keeps:
    the present ones (count > 0), at most ``max_asvs`` of them chosen as :func:`sample_rows` says; ``rng``
    is drawn from only when ``selection='random'`` has to choose (so samples are processed in table order)."""
    present = np.flatnonzero(vals > 0)
    if len(present) <= max_asvs:
        return present
    if selection == "abundance":
        chosen = np.lexsort((cols[present], -vals[present]))[:max_asvs]
    elif selection == "random":
        chosen = rng.choice(len(present), size=max_asvs, replace=False)
    elif selection == "first":
        chosen = np.arange(max_asvs)
    else:
        raise ValueError(f"unknown ASV selection {selection!r}")
    return present[np.sort(chosen)]
