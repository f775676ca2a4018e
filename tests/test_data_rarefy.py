"""Seeded rarefaction without replacement."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp

from aam_ds.data.rarefy import rarefy
from aam_ds.data.table import FeatureTable, load_table


def _table(rows: list[list[int]]) -> FeatureTable:
    ids = [f"S{i}" for i in range(len(rows))]
    return FeatureTable(ids, [f"A{j}" for j in range(len(rows[0]))], sp.csr_matrix(np.array(rows, dtype=float)), "t")


def test_real_table_rarefied_to_depth_reproducibly(shared_data):
    table = load_table(shared_data / "small/moving_pictures.table.biom")
    totals = np.asarray(table.counts.sum(axis=1)).ravel()
    depth = int(np.percentile(totals, 25))
    with pytest.warns(UserWarning, match=f"drops {(totals < depth).sum()} of 34"):
        first = rarefy(table, depth, seed=3)
    np.testing.assert_array_equal(np.asarray(first.counts.sum(axis=1)).ravel(), depth)
    assert first.sample_ids == [s for s, t in zip(table.sample_ids, totals) if t >= depth]
    with pytest.warns(UserWarning):
        again, other = rarefy(table, depth, seed=3), rarefy(table, depth, seed=4)
    assert again.asv_ids == first.asv_ids and (again.counts != first.counts).nnz == 0
    assert (other.counts.shape != first.counts.shape) or (other.counts != first.counts).nnz > 0
    # without replacement: never more reads of an ASV than the sample had; no all-zero ASVs kept
    original = table.take_samples([table.sample_ids.index(s) for s in first.sample_ids])
    cols = [table.asv_ids.index(a) for a in first.asv_ids]
    assert (first.counts.toarray() <= original.counts[:, cols].toarray()).all()
    assert (np.asarray(first.counts.sum(axis=0)).ravel() > 0).all()


def test_rarefaction_is_unbiased_and_exact_when_depth_is_total():
    table = _table([[500, 300, 200, 0], [1, 0, 0, 9]])
    with pytest.warns(UserWarning, match="drops 1 of 2"):
        draws = np.stack([rarefy(table, 100, seed=s).counts.toarray()[0] for s in range(300)])
    # hypergeometric mean depth * count / total = [50, 30, 20]; sd of the mean over 300 draws < 0.3
    np.testing.assert_allclose(draws.mean(axis=0), [50, 30, 20], atol=1.5)
    full = rarefy(_table([[5, 3, 0], [2, 6, 0]]), 8)
    np.testing.assert_array_equal(full.counts.toarray(), [[5, 3], [2, 6]])
    assert full.asv_ids == ["A0", "A1"]
