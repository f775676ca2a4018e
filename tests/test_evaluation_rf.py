"""Random-forest baseline, shared folds and `aam-ds rf-baseline` on real tables."""

from __future__ import annotations

import argparse
import importlib.util
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from aam_ds.data.metadata import load_metadata
from aam_ds.data.table import FeatureTable
from aam_ds.errors import AamInputError
from aam_ds.evaluation.cli import add_rf_arguments, run_rf_baseline
from aam_ds.evaluation.folds import fold_of_samples, read_folds, train_test_pairs, write_folds
from aam_ds.evaluation.predictions import read_predictions, write_predictions
from aam_ds.evaluation.rf_baseline import cross_validate_rf, relative_abundance


def _bench_real_data():
    """bench/bench_real_data.py, the home of the study-specific Huang proxy subject."""
    path = Path(__file__).resolve().parents[1] / "bench" / "bench_real_data.py"
    spec = importlib.util.spec_from_file_location("bench_real_data", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _rf_baseline(argv):
    parser = argparse.ArgumentParser()
    add_rf_arguments(parser)
    return run_rf_baseline(parser.parse_args(argv))


def test_huang_proxy_subject_is_study_prefix_and_truncated_age():
    huang_proxy_groups = _bench_real_data().huang_proxy_groups
    groups = huang_proxy_groups(["11052.3.20.13.rk.t", "10317.000003639", "550.L1S1"], [36.0, 58.9, 32.54])
    assert groups.tolist() == ["11052_36", "10317_58", "550_32"]
    with pytest.raises(AamInputError, match="ages are missing"):
        huang_proxy_groups(["1.a"], [np.nan])


def test_relative_abundance_rows_sum_to_one():
    counts = sp.csr_matrix(np.array([[1.0, 3.0, 0.0], [0.0, 0.0, 5.0]]))
    rel = relative_abundance(FeatureTable(["a", "b"], ["x", "y", "z"], counts, "mem")).toarray()
    np.testing.assert_allclose(rel, [[0.25, 0.75, 0.0], [0.0, 0.0, 1.0]])


def test_folds_file_round_trip_and_missing_samples(tmp_path):
    ids = ["a", "b", "c", "d", "e"]
    held_out = [np.array([0, 3]), np.array([1, 2, 4])]
    write_folds(tmp_path / "folds.tsv", ids, held_out)
    back = read_folds(tmp_path / "folds.tsv", ["e", "a", "d"])  # a subset, another order
    assert [f.tolist() for f in back] == [[1, 2], [0]]
    with pytest.raises(AamInputError, match="have no fold"):
        read_folds(tmp_path / "folds.tsv", ["a", "zz"])


def test_folds_must_hold_out_every_row_exactly_once():
    assert fold_of_samples([np.array([2, 0]), np.array([1])], 3).tolist() == [0, 1, 0]
    with pytest.raises(ValueError, match="already held out"):
        fold_of_samples([np.array([0, 1]), np.array([1, 2])], 3)
    with pytest.raises(ValueError, match="in no fold"):
        fold_of_samples([np.array([0])], 2)


def test_regression_forest_learns_a_planted_signal():
    """Target = share of ASV 0 (x 100 years); out-of-fold predictions must beat predicting the mean."""
    rng = np.random.default_rng(0)
    counts = rng.integers(0, 50, size=(60, 8)).astype(float)
    table = FeatureTable([f"s{i}" for i in range(60)], [f"asv{j}" for j in range(8)], sp.csr_matrix(counts), "mem")
    truth = 100 * counts[:, 0] / counts.sum(1)
    held_out = [np.arange(f, 60, 3) for f in range(3)]
    cv = cross_validate_rf(table, "age", truth, train_test_pairs(held_out, 60), trees=30, seed=0)
    assert cv.fold_of.tolist() == [i % 3 for i in range(60)]
    assert np.isfinite(cv.predictions.values).all()
    baseline_mae = np.mean(np.abs(truth - truth.mean()))
    assert cv.pooled["mae"] < 0.5 * baseline_mae
    assert len(cv.fold_metrics) == 3 and sum(m["n"] for m in cv.fold_metrics) == 60


def test_class_absent_from_training_rows_gets_probability_zero():
    rng = np.random.default_rng(1)
    counts = sp.csr_matrix(rng.integers(1, 20, size=(9, 5)).astype(float))
    table = FeatureTable([f"s{i}" for i in range(9)], [f"a{j}" for j in range(5)], counts, "mem")
    truth = np.array(["x", "x", "x", "x", "y", "y", "y", "y", "rare"], dtype=object)
    held_out = [np.array([0, 4, 8]), np.array([1, 2, 3, 5, 6, 7])]  # fold 0 trains without "rare"
    cv = cross_validate_rf(table, "kind", truth, train_test_pairs(held_out, 9), class_names=["rare", "x", "y"], trees=10)
    probs = cv.predictions.probabilities
    np.testing.assert_allclose(probs.sum(1), 1.0)
    assert (probs[[0, 4, 8], 0] == 0).all()


def test_rf_baseline_moving_pictures_grouped_by_subject(shared_data, tmp_path):
    small = shared_data / "small"
    out = tmp_path / "rf"
    assert (
        _rf_baseline(
            [
                "--table",
                str(small / "moving_pictures.table.biom"),
                "--metadata",
                str(small / "moving_pictures.sample-metadata.tsv"),
                "--target",
                "BodySite",
                "--folds",
                "2",
                "--group-column",
                "Subject",
                "--trees",
                "25",
                "--out-dir",
                str(out),
            ]
        )
        == 0
    )
    metadata = load_metadata(small / "moving_pictures.sample-metadata.tsv")
    folds = pd.read_csv(out / "folds.tsv", sep="\t", index_col="sample_id")["fold"]
    assert len(folds) == 34 and set(folds) == {0, 1}
    subjects_per_fold = metadata.loc[folds.index, "Subject"].groupby(folds.to_numpy()).agg(set)
    assert subjects_per_fold[0].isdisjoint(subjects_per_fold[1])  # no subject straddles folds
    predictions = read_predictions(out / "rf_predictions.tsv", "BodySite")
    assert predictions.class_names == ("gut", "left palm", "right palm", "tongue")
    report = json.loads((out / "metrics.json").read_text())
    assert len(report["fold_metrics"]) == 2
    assert report["metrics"]["accuracy"] > 0.5  # gut and tongue are unmistakable even across subjects
    assert (out / "confusion_matrix.png").stat().st_size > 1000


def test_rf_baseline_reuses_folds_and_compares(shared_data, tmp_path):
    cfs = shared_data / "cfs"
    common = ["--table", str(cfs / "table.biom"), "--metadata", str(cfs / "metadata.tsv"), "--target", "Subject", "--trees", "25"]
    assert _rf_baseline([*common, "--folds", "3", "--out-dir", str(tmp_path / "first")]) == 0
    folds = pd.read_csv(tmp_path / "first" / "folds.tsv", sep="\t", index_col="sample_id")["fold"]
    subject = load_metadata(cfs / "metadata.tsv").loc[folds.index, "Subject"]
    patient_share = (subject == "Patient").groupby(folds.to_numpy()).mean()
    assert patient_share.max() - patient_share.min() < 0.1  # stratified by the target

    other = read_predictions(tmp_path / "first" / "rf_predictions.tsv", "Subject")
    write_predictions(tmp_path / "other.tsv", other.take(np.arange(40)))  # another model, on part of the samples
    assert (
        _rf_baseline(
            [
                *common,
                "--folds-file",
                str(tmp_path / "first" / "folds.tsv"),
                "--seed",
                "1",
                "--compare",
                str(tmp_path / "other.tsv"),
                "--out-dir",
                str(tmp_path / "second"),
            ]
        )
        == 0
    )
    second = pd.read_csv(tmp_path / "second" / "folds.tsv", sep="\t", index_col="sample_id")["fold"]
    pd.testing.assert_series_equal(second, folds)
    comparison = pd.read_csv(tmp_path / "second" / "comparison.tsv", sep="\t", index_col="model")
    assert comparison.loc["other (pooled)", "n"] == 40 and comparison.loc["random forest (pooled)", "n"] == 40


def test_rf_baseline_huang_proxy_groups_never_leak(shared_data, tmp_path):
    bench = _bench_real_data()
    huang_proxy_groups, huang = bench.huang_proxy_groups, shared_data / "huang_oral_2550"
    out = tmp_path / "rf"
    metadata = bench.huang_metadata(shared_data, tmp_path / "metadata")  # with the proxy_subject column
    assert (
        _rf_baseline(
            [
                "--table",
                str(huang / "oral_2550.rarefied1000.biom"),
                "--metadata",
                str(metadata),
                "--target",
                "age",
                "--group-column",
                "proxy_subject",
                "--trees",
                "5",
                "--max-features",
                "sqrt",
                "--out-dir",
                str(out),
            ]
        )
        == 0
    )
    folds = pd.read_csv(out / "folds.tsv", sep="\t", index_col="sample_id")["fold"]
    age = pd.to_numeric(load_metadata(huang / "oral_2550_map.txt").loc[folds.index, "age"])  # undeclared: kept as text
    proxy = pd.Series(huang_proxy_groups(folds.index, age), index=folds.index)
    assert folds.groupby(proxy.to_numpy()).nunique().max() == 1  # every proxy subject sits in one fold
    assert sorted(folds.unique()) == [0, 1, 2, 3, 4]
    mae = json.loads((out / "metrics.json").read_text())["metrics"]["mae"]
    assert 0 < mae < np.mean(np.abs(age - age.mean()))  # better than the mean, even across subjects


@pytest.mark.parametrize(
    "extra, problem",
    [
        (["--target", "nope"], "no such column"),
        (["--target", "BodySite", "--split", "grouped"], "no grouping given"),
    ],
)
def test_rf_baseline_bad_arguments(shared_data, tmp_path, extra, problem):
    small = shared_data / "small"
    with pytest.raises(AamInputError, match=problem):
        _rf_baseline(
            [
                "--table",
                str(small / "moving_pictures.table.biom"),
                "--metadata",
                str(small / "moving_pictures.sample-metadata.tsv"),
                "--trees",
                "5",
                "--out-dir",
                str(tmp_path),
                *extra,
            ]
        )
