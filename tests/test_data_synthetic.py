"""The embedded demo dataset: deterministic, fast, consistent files, real signal."""

from __future__ import annotations

import time

import numpy as np
import pytest

from aam_ds.data.metadata import align_metadata, load_metadata
from aam_ds.data.sequences import read_fasta
from aam_ds.data.synthetic import demo_data, generate_demo
from aam_ds.data.table import load_table


def test_generation_is_fast_and_deterministic(tmp_path):
    start = time.perf_counter()
    a = generate_demo(tmp_path / "a", seed=7)
    assert time.perf_counter() - start < 5.0
    b = generate_demo(tmp_path / "b", seed=7)
    c = generate_demo(tmp_path / "c", seed=8)
    for name in ("tree", "metadata", "sequences"):
        assert getattr(a, name).read_bytes() == getattr(b, name).read_bytes()
        assert getattr(a, name).read_bytes() != getattr(c, name).read_bytes()
    ta, tb = load_table(a.table), load_table(b.table)
    assert ta.asv_ids == tb.asv_ids and (ta.counts != tb.counts).nnz == 0


def test_files_agree(demo_paths):
    skbio = pytest.importorskip("skbio")
    table = load_table(demo_paths.table)
    assert 200 <= table.shape[0] <= 400
    assert all(100 <= len(a) <= 150 for a in table.asv_ids)
    tree = skbio.TreeNode.read(str(demo_paths.tree))
    assert set(table.asv_ids) <= {t.name for t in tree.tips()}
    assert len(list(tree.tips())) == 300 and len(tree.children) == 2  # rooted, binary at the root
    assert all(len(n.children) == 2 for n in tree.non_tips(include_self=True))
    assert set(read_fasta(demo_paths.sequences)) >= set(table.asv_ids)
    meta = align_metadata(load_metadata(demo_paths.metadata), table.sample_ids, table.source)
    assert meta["age"].dtype == np.float64
    assert meta.groupby("subject").size().min() >= 2


def test_sequence_similarity_tracks_phylogeny(demo_paths):
    skbio = pytest.importorskip("skbio")
    tree = skbio.TreeNode.read(str(demo_paths.tree))
    names = [t.name for t in tree.tips()][::5]
    patristic = tree.tip_tip_distances(names).data
    width = min(len(n) for n in names)
    codes = np.array([list(n[:width]) for n in names])
    mismatch = (codes[:, None, :] != codes[None, :, :]).mean(axis=2)
    upper = np.triu_indices(len(names), 1)
    assert np.corrcoef(patristic[upper], mismatch[upper])[0, 1] > 0.8


def test_composition_carries_body_site_and_age(demo_paths):
    table = load_table(demo_paths.table)
    meta = align_metadata(load_metadata(demo_paths.metadata), table.sample_ids, table.source)
    dense = table.counts.toarray()
    rel = dense / dense.sum(axis=1, keepdims=True)
    bray = np.abs(rel[:, None, :] - rel[None, :, :]).sum(axis=2) / 2
    site = meta["body_site"].to_numpy()
    same = site[:, None] == site[None, :]
    off_diagonal = ~np.eye(len(site), dtype=bool)
    assert bray[same & off_diagonal].mean() < bray[~same].mean() - 0.05
    # age: a ridge read-out of log abundances beats the mean on held-out subjects (no subject leak)
    x = np.log1p(rel * 1000)
    y = meta["age"].to_numpy()
    odd_subject = meta["subject"].str[-2:].astype(int).to_numpy() % 2 == 1
    train, test = np.flatnonzero(~odd_subject), np.flatnonzero(odd_subject)
    xt = np.c_[x, np.ones(len(y))]
    coef = np.linalg.solve(xt[train].T @ xt[train] + 30 * np.eye(xt.shape[1]), xt[train].T @ y[train])
    mae = np.abs(xt[test] @ coef - y[test]).mean()
    assert mae < 0.6 * np.abs(y[test] - y[train].mean()).mean()


def test_default_location_generates_once(tmp_path):
    first = demo_data(tmp_path, seed=0)
    assert first.table == tmp_path / "demo" / "0" / "table.biom"
    stamp = first.table.stat().st_mtime_ns
    again = demo_data(tmp_path, seed=0)
    assert again == first and first.table.stat().st_mtime_ns == stamp
