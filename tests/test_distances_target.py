"""Distance-matrix files and the trainer-facing DistanceTarget (on the fly and precomputed)."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp
import torch
from scipy.spatial.distance import cdist

from aam_ds.data.table import FeatureTable, load_table
from aam_ds.distances import cli
from aam_ds.distances.io import ids_path, read_distance_matrix, write_distance_matrix
from aam_ds.distances.target import build_distance_target
from aam_ds.errors import AamInputError
from aam_ds.spec import DataSpec


@pytest.fixture(scope="module")
def table() -> FeatureTable:
    rng = np.random.default_rng(3)
    counts = rng.poisson(2.0, size=(12, 30)) * (rng.random((12, 30)) < 0.4)
    counts[:, 0] += 1
    return FeatureTable(
        [f"sample.{i}" for i in range(12)], [f"asv{j}" for j in range(30)], sp.csr_matrix(counts.astype(np.float64)), "toy.biom"
    )


@pytest.mark.parametrize("suffix", [".h5", ".npy", ".tsv"])
def test_matrix_files_round_trip(tmp_path, suffix):
    rng = np.random.default_rng(0)
    points = rng.random((6, 3))
    matrix = cdist(points, points)
    ids = ["a", "b c", "1.0", "d", "e", "f"]
    path = tmp_path / f"dm{suffix}"
    write_distance_matrix(path, ids, matrix)
    got_ids, got = read_distance_matrix(path)
    assert got_ids == ids
    assert np.array_equal(got, matrix)
    if suffix == ".npy":
        assert ids_path(path).read_text() == "a\nb c\n1.0\nd\ne\nf\n"


def test_bad_matrix_files_are_refused(tmp_path):
    asymmetric = tmp_path / "bad.tsv"
    write_distance_matrix(asymmetric, ["a", "b"], np.array([[0.0, 1.0], [2.0, 0.0]]))
    with pytest.raises(AamInputError, match="not symmetric"):
        read_distance_matrix(asymmetric)
    lonely = tmp_path / "lonely.npy"
    np.save(lonely, np.zeros((2, 2)))
    with pytest.raises(AamInputError, match="lonely.ids.txt"):
        read_distance_matrix(lonely)
    with pytest.raises(AamInputError, match="not found"):
        read_distance_matrix(tmp_path / "absent.h5")


def test_on_the_fly_target_is_float32_symmetric_and_matches_scipy(table):
    target = build_distance_target(DataSpec(metric="braycurtis"), table, "cpu")
    rows = torch.tensor([4, 0, 11, 7])
    got = target.batch(rows)
    assert got.dtype == torch.float32 and got.device == rows.device
    assert torch.equal(got, got.T) and (got.diagonal() == 0).all()
    dense = table.counts.toarray()[rows.numpy()]
    assert np.abs(got.numpy() - cdist(dense, dense, "braycurtis")).max() < 1e-6


def test_unifrac_target_reads_the_tree_from_the_spec(shared_data):
    small = shared_data / "small"
    table = load_table(small / "crawford.biom")
    target = build_distance_target(DataSpec(tree=small / "crawford.tre", metric="unweighted"), table, "cpu")
    assert target.batch(torch.arange(9)).shape == (9, 9)
    with pytest.raises(AamInputError, match="data.tree"):
        build_distance_target(DataSpec(metric="unweighted"), table, "cpu")


def test_precomputed_target_reorders_to_table_rows(tmp_path, table):
    on_the_fly = build_distance_target(DataSpec(metric="jaccard"), table, "cpu")
    full = on_the_fly.batch(torch.arange(12)).double().numpy()
    order = np.random.default_rng(1).permutation(12)
    extra = np.zeros((13, 13))  # the file may hold more samples than the table
    extra[:12, :12] = full[np.ix_(order, order)]
    extra[12, :12] = extra[:12, 12] = 0.5
    path = tmp_path / "jaccard.h5"
    write_distance_matrix(path, [table.sample_ids[i] for i in order] + ["other"], extra)
    target = build_distance_target(DataSpec(distances=str(path)), table, "cpu")
    rows = torch.tensor([3, 9, 0])
    assert torch.allclose(target.batch(rows), on_the_fly.batch(rows), atol=1e-7)


def test_precomputed_file_missing_samples_is_an_error_naming_them(tmp_path, table):
    path = tmp_path / "partial.tsv"
    write_distance_matrix(path, table.sample_ids[:10], np.zeros((10, 10)))
    with pytest.raises(AamInputError, match=r"covers 10 of the table's 12 samples; 2 are missing, e.g. \['sample.10', 'sample.11'\]"):
        build_distance_target(DataSpec(distances=str(path)), table, "cpu")


def test_cli_writes_every_format_and_refuses_unifrac_without_tree(shared_data, tmp_path, capsys):
    small = shared_data / "small"
    args = ["--table", str(small / "crawford.biom"), "--metric", "aitchison", "--pseudocount", "0.5", "--no-progress"]
    for suffix in (".h5", ".npy", ".tsv"):
        assert cli.main(args + ["--out", str(tmp_path / f"a{suffix}"), "--dtype", "fp32", "--block-size", "4"]) == 0
    matrices = [read_distance_matrix(tmp_path / f"a{s}")[1] for s in (".h5", ".npy", ".tsv")]
    assert np.array_equal(matrices[0], matrices[1]) and np.array_equal(matrices[0], matrices[2])
    assert "aitchison distances of 9 samples (torch)" in capsys.readouterr().out
    with pytest.raises(AamInputError, match="--tree"):
        cli.main(["--table", str(small / "crawford.biom"), "--metric", "generalized", "--out", str(tmp_path / "x.h5")])
