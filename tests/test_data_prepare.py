"""prepare_data end to end: demo default, real data, targets, covariates, saved splits."""

from __future__ import annotations

import numpy as np
import pytest
from test_data_splits import saved_splits

from aam_ds.data.dataset import collate
from aam_ds.data.prepare import prepare_data
from aam_ds.data.table import load_table
from aam_ds.spec import build_spec


def test_demo_default_end_to_end(tmp_path):
    spec = build_spec(
        {
            "data": {
                "cache_dir": str(tmp_path / "cache"),
                "targets": ["age"],
                "covariates": ["body_site"],
                "max_asvs": 64,
                "split": {"kind": "grouped", "group_column": "subject", "val_fraction": 0.1, "test_fraction": 0.2},
            },
            "loss": {"task": "regression"},
        }
    )
    data = prepare_data(spec, tmp_path / "run")
    n, m = data.table.shape
    assert data.tokens.shape == (m, 150) and data.tree is not None and data.tree.is_file()
    assert data.targets.shape == (n, 1) and data.targets.dtype == np.float32
    np.testing.assert_allclose(data.targets[:, 0], data.metadata["age"].to_numpy(), rtol=1e-6)
    assert data.covariate_classes == [["gut", "oral", "skin"]] and data.covariates.shape == (n, 1)
    assert max(len(r.asv_index) for r in data.rows) == 64
    saved = saved_splits(tmp_path / "run")
    assert saved == {k: [data.table.sample_ids[i] for i in v] for k, v in data.splits.items()}
    batch = collate([data.dataset("train")[i] for i in range(3)])
    assert batch["tokens"].shape[0] == 3 and batch["targets"].shape == (3, 1)
    assert not data.token_cache_hit and prepare_data(spec).token_cache_hit


def test_real_classification_with_rarefaction(shared_data, tmp_path):
    spec = build_spec(
        {
            "data": {
                "table": str(shared_data / "cfs/table.biom"),
                "metadata": str(shared_data / "cfs/metadata.tsv"),
                "targets": ["Subject"],
                "rarefy_depth": 30000,
                "cache_dir": str(tmp_path),
                "split": {"kind": "stratified", "column": "Subject", "val_fraction": 0.2},
            },
            "loss": {"task": "classification"},
        }
    )
    totals = np.asarray(load_table(shared_data / "cfs/table.biom").counts.sum(axis=1)).ravel()
    with pytest.warns(UserWarning, match=f"drops {(totals < 30000).sum()} of 87"):
        data = prepare_data(spec)
    assert len(data.table.sample_ids) == (totals >= 30000).sum()
    assert data.class_names == ["Control", "Patient"] and data.targets.dtype == np.int64
    np.testing.assert_array_equal(np.asarray(data.table.counts.sum(axis=1)).ravel(), 30000)
    assert list(data.metadata.index) == data.table.sample_ids
    assert [data.class_names[c] for c in data.targets] == data.metadata["Subject"].tolist()


def test_md5_table_with_fasta_and_drop_asv(tmp_path):
    table = tmp_path / "t.tsv"
    table.write_text("#OTU ID\tS1\tS2\tS3\nh1\t4\t0\t1\nh2\t0\t3\t2\nh3\t1\t1\t0\n")
    fasta = tmp_path / "rep.fasta"
    fasta.write_text(">h1\nACGTACGT\n>h2\nACGTRCGT\n>h3\nTTTTGGGG\n")
    spec = build_spec(
        {
            "data": {
                "table": str(table),
                "sequences": str(fasta),
                "ambiguous_bases": "drop_asv",
                "max_seq_len": 10,
                "cache_dir": str(tmp_path / "c"),
            }
        }
    )
    with pytest.warns(UserWarning, match="dropping 1 ASVs"):
        data = prepare_data(spec)
    assert data.table.asv_ids == ["h1", "h3"] and data.tokens.shape == (2, 10)
    assert data.table.sample_ids == ["S1", "S2", "S3"]


def test_demo_classification_defaults_to_body_site(tmp_path):
    spec = build_spec({"data": {"cache_dir": str(tmp_path)}, "loss": {"task": "classification"}})
    data = prepare_data(spec)
    assert data.target_names == ["body_site"] and data.class_names == ["gut", "oral", "skin"]
    assert [data.class_names[c] for c in data.targets] == data.metadata["body_site"].tolist()
