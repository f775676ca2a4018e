"""Parsed trees cached by content hash: a hit equals a fresh parse, a broken entry is parsed again."""

from __future__ import annotations

import numpy as np

from aam_ds.distances.tree import read_tree


def _same(a, b) -> bool:
    return (
        np.array_equal(a.parent, b.parent)
        and np.array_equal(a.length, b.length)
        and np.array_equal(a.tip_nodes, b.tip_nodes)
        and a.tip_names == b.tip_names
        and a.source == b.source
    )


def test_cached_tree_equals_a_fresh_parse_and_broken_entries_are_replaced(demo_paths, tmp_path):
    fresh = read_tree(demo_paths.tree)
    first = read_tree(demo_paths.tree, tmp_path)
    (entry,) = (tmp_path / "trees").glob("*.npz")
    written = entry.stat().st_mtime_ns
    hit = read_tree(demo_paths.tree, tmp_path)
    assert _same(fresh, first) and _same(fresh, hit)
    assert entry.stat().st_mtime_ns == written  # read, not rewritten

    entry.write_bytes(b"not an npz")
    assert _same(fresh, read_tree(demo_paths.tree, tmp_path))
    assert np.load(entry)["parent"].shape == fresh.parent.shape  # replaced by a good entry


def test_another_text_is_another_entry(tmp_path):
    one, two = tmp_path / "one.nwk", tmp_path / "two.nwk"
    one.write_text("((a:1,b:2):0.5,c:3);")
    two.write_text("((a:1,b:2):0.5,c:4);")
    assert read_tree(one, tmp_path / "cache").length.tolist() == [1, 2, 0.5, 3, 0]
    assert read_tree(two, tmp_path / "cache").length.tolist() == [1, 2, 0.5, 4, 0]
    assert len(list((tmp_path / "cache" / "trees").glob("*.npz"))) == 2
