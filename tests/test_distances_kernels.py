"""UniFrac and ecological kernels against independent textbook implementations and scipy / scikit-bio."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp
import torch
from scipy.spatial.distance import cdist as scipy_cdist
from skbio.stats.composition import clr

from aam_ds.data.table import FeatureTable, load_table
from aam_ds.distances.full import full_matrix
from aam_ds.distances.metric import ECOLOGICAL_METRICS, UNIFRAC_METRICS, build_metric
from aam_ds.distances.tree import parse_newick
from aam_ds.errors import AamInputError

# a unary chain (u), a zero-length branch, a root with a length, and tips absent from the table (X, Y)
NEWICK = "(((A:0.1,B:0.2):0.3,(C:0.4)u:0.25):0.05,((D:0.0,E:0.5):0.2,(X:1,Y:2):0.7):0.15,F:0.9)root:3;"
ASVS = ["A", "B", "C", "D", "E", "F"]


def textbook_unifrac(newick: str, counts: np.ndarray, asvs: list[str], metric: str, alpha: float) -> np.ndarray:
    """Node-by-node UniFrac over the whole unpruned tree, one pair at a time (pure Python)."""
    import skbio

    tree = skbio.TreeNode.read([newick])
    column = {a: j for j, a in enumerate(asvs)}
    props = counts / counts.sum(1, keepdims=True)
    branches = []  # (length, proportions of every sample below this branch)
    for node in tree.postorder():
        if node.is_root():
            continue
        below = [column[t.name] for t in node.tips(include_self=True) if t.name in column]
        branches.append((node.length or 0.0, props[:, below].sum(1)))
    n = len(counts)
    out = np.zeros((n, n))
    for i in range(n):
        for j in range(n):
            num = den = 0.0
            for length, p in branches:
                a, b = p[i], p[j]
                if metric == "unweighted":
                    num += length * ((a > 0) != (b > 0))
                    den += length * ((a > 0) or (b > 0))
                elif metric in ("weighted_normalized", "weighted_unnormalized"):
                    num += length * abs(a - b)
                    den += length * (a + b)
                elif a + b > 0:
                    num += length * (a + b) ** alpha * abs(a - b) / (a + b)
                    den += length * (a + b) ** alpha
            out[i, j] = num if metric == "weighted_unnormalized" else num / den
    return out


@pytest.fixture(scope="module")
def toy_table() -> FeatureTable:
    rng = np.random.default_rng(7)
    counts = rng.integers(0, 6, size=(7, len(ASVS))) * (rng.random((7, len(ASVS))) < 0.6)
    counts[:, 0] += counts.sum(1) == 0  # no empty sample
    return FeatureTable([f"s{i}" for i in range(7)], ASVS, sp.csr_matrix(counts.astype(np.float64)), "toy")


@pytest.mark.parametrize("metric, alpha", [(m, 0.5) for m in UNIFRAC_METRICS] + [("generalized", 0.0), ("generalized", 1.0)])
def test_unifrac_matches_textbook_definition(toy_table, metric, alpha):
    expected = textbook_unifrac(NEWICK, toy_table.counts.toarray(), ASVS, metric, alpha)
    metric_obj = build_metric(metric, toy_table, parse_newick(NEWICK), alpha=alpha)
    got = metric_obj.block(torch.arange(7)).numpy()
    assert np.abs(got - expected).max() < 1e-12
    # a rectangular block between two different sample sets agrees with the square one
    rect = metric_obj.block(torch.tensor([5, 0, 3]), torch.tensor([1, 6])).numpy()
    assert np.abs(rect - expected[np.ix_([5, 0, 3], [1, 6])]).max() < 1e-12


def test_branches_are_pruned_and_chains_merged(toy_table):
    metric = build_metric("unweighted", toy_table, parse_newick(NEWICK))
    # pruned: A, B, (A,B), C+u (a chain: 0.4 + 0.25), (A,B,C), E, (D,E) + its parent once X and Y are
    # gone (0.2 + 0.15), F; D's zero-length branch and the root branch add nothing
    assert metric.vectors.shape == (7, 8)
    assert sorted(metric.weight.tolist()) == pytest.approx(sorted([0.1, 0.2, 0.3, 0.65, 0.05, 0.5, 0.35, 0.9]))


def test_missing_tips_are_an_error_naming_them_or_dropped_with_a_warning(toy_table):
    tree = parse_newick("((A:1,B:1):1,(C:1,D:1):1);", "t.nwk")
    with pytest.raises(AamInputError, match=r"2 of 6 ASVs of toy are not tips of the tree, e.g. \['E', 'F'\]"):
        build_metric("unweighted", toy_table, tree)
    with pytest.warns(UserWarning, match="dropping 2 of 6 ASVs"):
        metric = build_metric("unweighted", toy_table, tree, drop_missing_tips=True)
    assert metric.vectors.shape[0] == 7


def test_unifrac_needs_a_tree(toy_table):
    with pytest.raises(AamInputError, match="data.tree"):
        build_metric("weighted_normalized", toy_table, None)


def reference_ecological(metric: str, counts: np.ndarray, pseudocount: float) -> np.ndarray:
    if metric == "braycurtis":
        return scipy_cdist(counts, counts, "braycurtis")
    if metric == "jaccard":
        return scipy_cdist(counts > 0, counts > 0, "jaccard")
    transformed = clr(counts + pseudocount)
    return scipy_cdist(transformed, transformed, "euclidean")


@pytest.fixture(scope="module")
def ecam_table(shared_data):
    """Every third ECAM sample (248 x 3,382): real sparsity, quick scipy references."""
    return load_table(shared_data / "ecam" / "table.biom").take_samples(np.arange(0, 743, 3))


@pytest.mark.parametrize("metric", ECOLOGICAL_METRICS)
@pytest.mark.parametrize("dtype, bound", [(torch.float64, 1e-6), (torch.float32, 1e-4)])
def test_ecological_metrics_match_scipy_and_scikit_bio_on_ecam(ecam_table, metric, dtype, bound):
    metric_obj = build_metric(metric, ecam_table, pseudocount=0.5, dtype=dtype)
    got = full_matrix(metric_obj, block_size=100, progress=False)  # exercises off-diagonal blocks
    expected = reference_ecological(metric, ecam_table.counts.toarray(), 0.5)
    assert np.abs(got - expected).max() <= bound
    assert (np.diag(got) == 0).all() and (got == got.T).all()


def test_batch_is_symmetric_with_zero_diagonal_in_any_order(ecam_table):
    metric = build_metric("braycurtis", ecam_table)
    rows = torch.tensor([200, 3, 3, 42, 0])  # a repeated sample gives distance 0 to itself
    got = metric.block(rows)
    assert torch.equal(got, got.T) and (got.diagonal() == 0).all()
    assert float(got[1, 2]) == 0.0
    full = metric.block(torch.arange(248))
    assert torch.allclose(got, full[rows][:, rows], atol=1e-12)


def test_duplicate_tip_names_are_refused(toy_table):
    tree = parse_newick("((A:1,B:1):1,(C:1,D:1,E:1,F:1,A:2):1);", "dup.nwk")
    with pytest.raises(AamInputError, match=r"dup.nwk: has 1 duplicated tip names, e.g. \['A'\]"):
        build_metric("unweighted", toy_table, tree)
