"""Per-sample ASV selection, SampleDataset and collate (the batch contract)."""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp
import torch

from aam_ds.data.dataset import SampleDataset, collate
from aam_ds.data.select import sample_rows
from aam_ds.data.sequences import PAD, tokenize
from aam_ds.data.table import FeatureTable

COUNTS = np.array([[0, 5, 1, 5, 9, 2], [3, 0, 0, 0, 0, 1]], dtype=float)
TABLE = FeatureTable(["s0", "s1"], [f"a{j}" for j in range(6)], sp.csr_matrix(COUNTS), "t")


def test_abundance_selection_breaks_ties_by_table_order():
    rows = sample_rows(TABLE, max_asvs=3, selection="abundance")
    assert rows[0].asv_index.tolist() == [1, 3, 4]  # 9, then the tie 5/5 both kept over 2 and 1
    assert rows[0].counts.tolist() == [5, 5, 9] and rows[0].counts.dtype == np.float32
    assert sample_rows(TABLE, 2, "abundance")[0].asv_index.tolist() == [1, 4]  # tie: a1 before a3
    assert rows[1].asv_index.tolist() == [0, 5]  # fewer present than the limit: all present kept


def test_first_and_random_selection():
    assert sample_rows(TABLE, 2, "first")[0].asv_index.tolist() == [1, 2]
    picks = [tuple(sample_rows(TABLE, 2, "random", seed=s)[0].asv_index) for s in range(20)]
    assert picks[0] == tuple(sample_rows(TABLE, 2, "random", seed=0)[0].asv_index)
    assert len(set(picks)) > 1 and all(set(p) <= {1, 2, 3, 4, 5} for p in picks)


def test_collate_builds_the_documented_batch():
    tokens = tokenize(["ACGT", "CC", "GGGA", "TTTT", "ACG", "AAAA"], 5)
    rows = sample_rows(TABLE, 4, "abundance")
    targets = np.array([[1.5], [2.5]], dtype=np.float32)
    covariates = np.array([[0, 2], [1, 0]], dtype=np.int64)
    data = SampleDataset(rows, tokens, targets, covariates)
    batch = collate([data[1], data[0]])
    assert batch["tokens"].dtype == torch.int64 and batch["tokens"].shape == (2, 4, 5)
    assert batch["counts"].dtype == torch.float32 and batch["counts"].shape == (2, 4)
    assert batch["sample_index"].tolist() == [1, 0]
    # sample s1 has 2 ASVs (a0, a5): rows 2-3 are padding
    assert torch.equal(batch["tokens"][0, 0], torch.from_numpy(tokens[0]).long())
    assert torch.equal(batch["tokens"][0, 1], torch.from_numpy(tokens[5]).long())
    assert (batch["tokens"][0, 2:] == PAD).all() and (batch["counts"][0, 2:] == 0).all()
    assert batch["counts"][1].tolist() == [5, 5, 9, 2]  # a1, a3, a4, a5: the top 4 of s0
    assert torch.equal(batch["targets"], torch.tensor([[2.5], [1.5]]))
    assert batch["covariates"].dtype == torch.int64 and batch["covariates"].tolist() == [[1, 0], [0, 2]]


def test_classification_targets_stay_int64_and_loader_works():
    tokens = tokenize(["ACGT"] * 6, 4)
    data = SampleDataset(sample_rows(TABLE, 8), tokens, targets=np.array([1, 0], dtype=np.int64))
    batch = next(iter(torch.utils.data.DataLoader(data, batch_size=2, collate_fn=collate)))
    assert batch["targets"].dtype == torch.int64 and batch["targets"].tolist() == [1, 0]
    assert batch["tokens"].shape == (2, 5, 4) and "covariates" not in batch
