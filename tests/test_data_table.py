"""Feature-table loading: real BIOM files, TSV / JSON / .qza equivalence."""

from __future__ import annotations

import h5py
import numpy as np
import pytest

from aam_ds.data.table import load_table

# samples x ASVs as stated in ../shared/data/README.md
REAL_TABLES = {
    "huang_oral_2550/oral_2550.rarefied1000.biom": (2537, 5574),
    "cfs/table.biom": (87, 2129),
    "ecam/table.biom": (743, 3382),
    "small/test-small.biom": (23, 1040),
    "small/crawford.biom": (9, 365),
    "small/moving_pictures.table.biom": (34, 759),
}


@pytest.mark.parametrize("rel, shape", REAL_TABLES.items(), ids=list(REAL_TABLES))
def test_real_tables_match_readme(shared_data, rel, shape):
    table = load_table(shared_data / rel)
    assert table.shape == shape
    assert len(table.sample_ids) == shape[0] and len(table.asv_ids) == shape[1]
    assert table.counts.dtype == np.float64
    # independent oracle: the raw HDF5 arrays (BIOM v2.1 stores observations x samples)
    with h5py.File(shared_data / rel, "r") as raw:
        assert [s.decode() for s in raw["sample/ids"][:]] == table.sample_ids
        assert [o.decode() for o in raw["observation/ids"][:]] == table.asv_ids
        assert table.counts.sum() == pytest.approx(raw["observation/matrix/data"][:].sum())
        obs_indptr = raw["observation/matrix/indptr"][:]
        first_obs = raw["observation/matrix/data"][obs_indptr[0] : obs_indptr[1]].sum()
    assert table.counts[:, 0].sum() == pytest.approx(first_obs)


def test_huang_is_rarefied_to_1000(shared_data):
    table = load_table(shared_data / "huang_oral_2550/oral_2550.rarefied1000.biom")
    np.testing.assert_array_equal(np.asarray(table.counts.sum(axis=1)).ravel(), 1000.0)


def test_tsv_json_and_qza_equal_hdf5(shared_data, tmp_path, make_qza):
    import biom

    source = shared_data / "small/test-small.biom"
    reference = load_table(source)
    raw = biom.load_table(str(source))
    tsv = tmp_path / "table.tsv"
    tsv.write_text(raw.to_tsv())
    js = tmp_path / "table.json"
    js.write_text(raw.to_json("test"))
    qza = make_qza(tmp_path / "table.qza", "FeatureTable[Frequency]", "feature-table.biom", source.read_bytes())
    for path in (tsv, js, qza):
        other = load_table(path)
        assert other.sample_ids == reference.sample_ids
        assert other.asv_ids == reference.asv_ids
        assert (other.counts != reference.counts).nnz == 0


def test_tsv_taxonomy_column_ignored(tmp_path):
    path = tmp_path / "t.tsv"
    path.write_text("# Constructed from biom file\n#OTU ID\tS1\tS2\ttaxonomy\nA1\t1\t0\tk__B\nA2\t3\t5\tk__A\n")
    table = load_table(path)
    assert table.sample_ids == ["S1", "S2"] and table.asv_ids == ["A1", "A2"]
    np.testing.assert_array_equal(table.counts.toarray(), [[1, 3], [0, 5]])


def test_generated_demo_table(demo_paths):
    table = load_table(demo_paths.table)
    assert table.shape[0] >= 200 and table.shape[1] >= 100
    assert all(set(a) <= set("ACGT") for a in table.asv_ids)
