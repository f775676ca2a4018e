"""Train / val / test splits and k-fold partitions."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from aam_ds.data.metadata import align_metadata, load_metadata
from aam_ds.data.splits import kfold_splits, save_splits, split_labels, split_samples
from aam_ds.data.table import load_table
from aam_ds.spec import SplitSpec


@pytest.fixture(scope="module")
def demo_metadata(demo_paths):
    table = load_table(demo_paths.table)
    return align_metadata(load_metadata(demo_paths.metadata), table.sample_ids, table.source)


def _partition(splits, n):
    every = np.concatenate(list(splits.values()))
    assert sorted(every.tolist()) == list(range(n))  # each sample in exactly one split


def test_random_split_sizes_and_seed(demo_metadata):
    n = len(demo_metadata)
    spec = SplitSpec(kind="random", val_fraction=0.1, test_fraction=0.2, seed=1)
    splits = split_samples(n, spec)
    _partition(splits, n)
    assert (len(splits["val"]), len(splits["test"])) == (round(0.1 * n), round(0.2 * n))
    same = split_samples(n, spec)
    assert all(np.array_equal(splits[k], same[k]) for k in splits)
    other = split_samples(n, SplitSpec(kind="random", val_fraction=0.1, test_fraction=0.2, seed=2))
    assert not np.array_equal(splits["test"], other["test"])


def test_grouped_split_never_leaks_a_group(demo_metadata):
    spec = SplitSpec(kind="grouped", group_column="subject", val_fraction=0.15, test_fraction=0.2, seed=0)
    splits = split_samples(len(demo_metadata), spec, demo_metadata)
    _partition(splits, len(demo_metadata))
    subjects = {k: set(demo_metadata["subject"].iloc[v]) for k, v in splits.items()}
    assert not (subjects["train"] & subjects["val"] or subjects["train"] & subjects["test"] or subjects["val"] & subjects["test"])
    assert all(subjects.values())
    assert abs(len(splits["test"]) / len(demo_metadata) - 0.2) < 0.05


def test_grouped_split_on_real_study(shared_data):
    table = load_table(shared_data / "ecam/table.biom")
    with pytest.warns(UserWarning):
        meta = align_metadata(load_metadata(shared_data / "ecam/metadata.tsv"), table.sample_ids, table.source, True)
    spec = SplitSpec(kind="grouped", group_column="host_subject_id", val_fraction=0.1, test_fraction=0.2, seed=5)
    splits = split_samples(len(meta), spec, meta)
    groups = {k: set(meta["host_subject_id"].iloc[v]) for k, v in splits.items()}
    assert not (groups["train"] & groups["test"] or groups["train"] & groups["val"] or groups["val"] & groups["test"])


def test_stratified_split_keeps_class_proportions(shared_data):
    meta = load_metadata(shared_data / "cfs/metadata.tsv")
    spec = SplitSpec(kind="stratified", column="Subject", val_fraction=0.2, test_fraction=0.2, seed=0)
    splits = split_samples(len(meta), spec, meta)
    overall = (meta["Subject"] == "Patient").mean()
    for name in ("train", "val", "test"):
        share = (meta["Subject"].iloc[splits[name]] == "Patient").mean()
        assert abs(share - overall) < 1.0 / len(splits[name]) + 0.02, (name, share, overall)


def test_stratified_numeric_column_uses_quantile_bins(demo_metadata):
    labels = split_labels(demo_metadata, "stratified", "age", "data.split.column")
    assert sorted(set(labels.tolist())) == [0, 1, 2, 3, 4]
    ages = demo_metadata["age"].to_numpy()
    assert ages[labels == 0].max() <= ages[labels == 4].min()


def saved_splits(run_dir: Path) -> dict[str, list[str]]:
    """The sample-ID lists :func:`save_splits` wrote under ``run_dir``, by split name."""
    return {p.stem: p.read_text().splitlines() for p in sorted((Path(run_dir) / "splits").glob("*.txt"))}


def test_saved_id_lists_round_trip(tmp_path, demo_metadata):
    ids = list(demo_metadata.index)
    splits = split_samples(len(ids), SplitSpec(val_fraction=0.2, test_fraction=0.1))
    paths = save_splits(tmp_path, splits, ids)
    assert paths["train"] == tmp_path / "splits" / "train.txt"
    loaded = saved_splits(tmp_path)
    assert loaded == {k: [ids[i] for i in v] for k, v in splits.items()}
    assert not list(tmp_path.rglob("*.tmp"))


@pytest.mark.parametrize("kind", ["random", "stratified", "grouped"])
def test_kfold_partitions(demo_metadata, kind):
    column = {"random": None, "stratified": "body_site", "grouped": "subject"}[kind]
    labels = split_labels(demo_metadata, kind, column, "cv")
    folds = kfold_splits(len(demo_metadata), 5, kind, seed=0, labels=labels)
    assert len(folds) == 5
    assert sorted(np.concatenate(folds).tolist()) == list(range(len(demo_metadata)))
    if kind == "grouped":
        owners = [set(demo_metadata["subject"].iloc[f]) for f in folds]
        assert sum(len(o) for o in owners) == len(set().union(*owners))  # no subject in two folds
    if kind == "stratified":
        overall = np.bincount(labels) / len(labels)
        for fold in folds:
            np.testing.assert_allclose(np.bincount(labels[fold], minlength=len(overall)) / len(fold), overall, atol=0.05)
    again = kfold_splits(len(demo_metadata), 5, kind, seed=0, labels=labels)
    assert all(np.array_equal(a, b) for a, b in zip(folds, again))
