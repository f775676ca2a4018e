"""Per-sample branch abundances: each sample's share of reads below every branch of the tree.

The tree is pruned to the ancestors of the table's ASVs, the root branch is left out (as in
unifrac), and every unary chain of the pruned tree is merged into one branch whose length is the
chain's total: the branches of a chain sit above exactly the same tips, so their abundance
columns are identical and every UniFrac variant is linear in the length of such columns. The
pruned, merged tree has at most ``2 M - 2`` branches for ``M`` ASVs, whatever the size of the
input tree (207k tips for an insertion tree).

Built in memory once per run (0.1 s for ECAM once the tree is parsed; parsing is 0.5 s), so an
on-disk cache would save nothing worth its invalidation rules.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp

from aam_ds.data.table import FeatureTable
from aam_ds.distances.tree import Tree
from aam_ds.errors import AamInputError, notice


@dataclass(frozen=True)
class BranchAbundances:
    """proportions: CSR ``[N, E]`` float64, fraction of each sample's reads below each branch;
    lengths: float64 ``[E]`` branch lengths (tree units); sample_ids: the ``N`` table samples."""

    proportions: sp.csr_matrix
    lengths: np.ndarray
    sample_ids: list[str]


def tip_nodes_of(table: FeatureTable, tree: Tree, drop_missing_tips: bool) -> tuple[np.ndarray, np.ndarray]:
    """Match table ASVs to tree tips: ``(asv_columns [M'], tip_node [M'])`` (see :func:`tip_nodes_for`)."""
    return tip_nodes_for(table.asv_ids, table.source, tree, drop_missing_tips)


def tip_nodes_for(asv_ids: list[str], source: str, tree: Tree, drop_missing_tips: bool) -> tuple[np.ndarray, np.ndarray]:
    """Match the ASV IDs of the table ``source`` to tree tips: ``(asv_columns [M'], tip_node [M'])``.

    ASVs absent from the tree raise :class:`AamInputError` naming them, unless
    ``drop_missing_tips`` (then they are dropped with a warning giving the count).
    """
    node_of_name = dict(zip(tree.tip_names, tree.tip_nodes.tolist()))
    if len(node_of_name) != len(tree.tip_names):
        dups = sorted(name for name, n in Counter(tree.tip_names).items() if n > 1)
        raise AamInputError(tree.source, f"has {len(dups)} duplicated tip names, e.g. {dups[:5]}", "make tip names unique")
    nodes = np.array([node_of_name.get(a, -1) for a in asv_ids], dtype=np.int64)
    missing = np.flatnonzero(nodes < 0)
    if len(missing) and not drop_missing_tips:
        names = [asv_ids[j] for j in missing[:5]]
        raise AamInputError(
            tree.source,
            f"{len(missing)} of {len(nodes)} ASVs of {source} are not tips of the tree, e.g. {names}",
            "give the tree built from (or with the insertion of) these ASVs, or set data.drop_missing_tips=true "
            "(--drop-missing-tips) to drop them",
        )
    if len(missing):
        notice(f"dropping {len(missing)} of {len(nodes)} ASVs absent from the tree {tree.source}")
    kept = np.flatnonzero(nodes >= 0)
    return kept, nodes[kept]


def build_branch_abundances(table: FeatureTable, tree: Tree, drop_missing_tips: bool = False) -> BranchAbundances:
    """Sparse ``[N samples, E branches]`` read proportions of the pruned, chain-merged tree."""
    asv_columns, tips = tip_nodes_of(table, tree, drop_missing_tips)
    tip_rows, nodes = _ancestry(tree, tips)
    n_tips = len(tips)

    # a node's tip set is fixed by (its smallest tip row, its tip count) when nodes are nested
    count = np.bincount(nodes, minlength=tree.n_nodes)
    first = np.full(tree.n_nodes, n_tips, dtype=np.int64)
    np.minimum.at(first, nodes, tip_rows)
    used = np.flatnonzero(count)
    chain_key = first[used] * (n_tips + 1) + count[used]
    keys, chain_of_used = np.unique(chain_key, return_inverse=True)
    chain_of_node = np.full(tree.n_nodes, -1, dtype=np.int64)
    chain_of_node[used] = chain_of_used
    lengths = np.bincount(chain_of_used, weights=tree.length[used], minlength=len(keys))
    if (lengths < 0).any():
        raise AamInputError(tree.source, "has negative branch lengths", "give a tree with non-negative branch lengths")

    representative = np.zeros(len(keys), dtype=np.int64)
    representative[chain_of_used] = used
    first_member = representative[chain_of_node[nodes]] == nodes
    below = sp.csr_matrix(
        (np.ones(first_member.sum()), (tip_rows[first_member], chain_of_node[nodes[first_member]])),
        shape=(n_tips, len(keys)),
    )
    counts = table.counts[:, asv_columns].tocsr()
    totals = np.asarray(counts.sum(axis=1)).ravel()
    scale = np.divide(1.0, totals, out=np.zeros_like(totals), where=totals > 0)
    proportions = (sp.diags(scale) @ counts @ below).tocsr()

    informative = (lengths > 0) & (proportions.getnnz(axis=0) > 0)
    proportions = proportions[:, informative].tocsr()
    proportions.sort_indices()
    return BranchAbundances(proportions, lengths[informative], list(table.sample_ids))


def _ancestry(tree: Tree, tips: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Every (tip row, non-root ancestor-or-self node) pair, walking all tips up one level at a time."""
    rows, nodes = [], []
    row = np.arange(len(tips))
    node = tips
    while len(node):
        up = tree.parent[node]
        has_branch = up >= 0  # the root's branch is not part of any UniFrac sum
        rows.append(row[has_branch])
        nodes.append(node[has_branch])
        row, node = row[has_branch], up[has_branch]
    return np.concatenate(rows), np.concatenate(nodes)
