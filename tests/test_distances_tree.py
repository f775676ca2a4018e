"""The Newick / Phylogeny[Rooted] parser against hand-checked trees and scikit-bio on real trees."""

from __future__ import annotations

import numpy as np
import pytest
import skbio

from aam_ds.distances.tree import parse_newick, read_tree
from aam_ds.errors import AamInputError


def root_distances(tree) -> dict[str, float]:
    """Tip name -> path length to the root, by walking parents (independent of the parser's maths)."""
    out = {}
    for name, node in zip(tree.tip_names, tree.tip_nodes.tolist()):
        total = 0.0
        while tree.parent[node] >= 0:
            total += tree.length[node]
            node = tree.parent[node]
        out[name] = total
    return out


def test_quoted_names_comments_labels_and_missing_lengths():
    text = "(('a b':1,B[&&NHX:x=1]:2)lab:3,(C:4e-1, 'D''x')'q r':5,:2, E)root:7;\n"
    tree = parse_newick(text)
    assert tree.tip_names == ["a b", "B", "C", "D'x", "", "E"]
    assert root_distances(tree) == pytest.approx({"a b": 4.0, "B": 5.0, "C": 5.4, "D'x": 5.0, "": 2.0, "E": 0.0})
    # postorder: every child before its parent, the root last and alone without a parent
    nodes = np.arange(tree.n_nodes)
    assert (tree.parent[:-1] > nodes[:-1]).all() and tree.parent[-1] == -1
    assert tree.n_nodes == 9


def test_whitespace_and_newlines_are_ignored_and_only_the_first_tree_is_read():
    tree = parse_newick("(\n  A : 1 ,\n  ( B:2 , C:3 ) : 4\n) ;\n(X:1,Y:1);")
    assert tree.tip_names == ["A", "B", "C"]
    assert root_distances(tree) == {"A": 1.0, "B": 6.0, "C": 7.0}


@pytest.mark.parametrize(
    "text, problem",
    [
        ("((A:1,B:2):3", "unbalanced"),
        ("(A:1,B:2));", "unbalanced"),
        ("A;", "must start with"),
        ("(A:1,B:x2);", "not a number"),
    ],
)
def test_malformed_newick_is_refused(text, problem):
    with pytest.raises(AamInputError, match=problem):
        parse_newick(text, "bad.nwk")


@pytest.mark.parametrize("name", ["small/crawford.tre", "small/test-small-tree.nwk", "cfs/tree.nwk"])
def test_real_trees_match_scikit_bio(shared_data, name):
    ours = read_tree(shared_data / name)
    reference = skbio.TreeNode.read(str(shared_data / name), convert_underscores=False)
    expected = {tip.name: tip.accumulate_to_ancestor(reference) for tip in reference.tips()}
    assert sorted(ours.tip_names) == sorted(expected)
    got = root_distances(ours)
    assert max(abs(got[n] - expected[n]) for n in expected) < 1e-12
    assert ours.n_nodes == reference.count()


def test_ecam_insertion_tree_parses(shared_data):
    tree = read_tree(shared_data / "ecam" / "insertion-tree.nwk")
    assert len(tree.tip_names) == 207_287
    assert len(set(tree.tip_names)) == len(tree.tip_names)
    assert (tree.parent[:-1] > np.arange(tree.n_nodes - 1)).all()
    # internal labels such as 'o__[Micrarchaeles]' (quoted, with brackets) are not tips
    assert not any(n.startswith("o__") for n in tree.tip_names)


def test_phylogeny_qza_is_read(tmp_path, make_qza):
    newick = b"((A:1,B:2):0.5,C:3);"
    path = make_qza(tmp_path / "rooted-tree.qza", "Phylogeny[Rooted]", "tree.nwk", newick)
    assert root_distances(read_tree(path)) == {"A": 1.5, "B": 2.5, "C": 3.0}
    wrong = make_qza(tmp_path / "unrooted.qza", "Phylogeny[Unrooted]", "tree.nwk", newick)
    with pytest.raises(AamInputError, match="Phylogeny\\[Rooted\\] is needed"):
        read_tree(wrong)
