"""A batch's distances need only the batch's samples and the tree: the metric built from a table of just
those samples (the shape of a sharded dataset's batch) gives the full matrix's values, for every metric."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from aam_ds.data.table import load_table
from aam_ds.distances.full import full_matrix
from aam_ds.distances.metric import build_metric
from aam_ds.distances.registry import METRIC_NAMES
from aam_ds.distances.tree import read_tree


@pytest.fixture(scope="module")
def demo(demo_paths):
    return load_table(demo_paths.table), read_tree(demo_paths.tree)


@pytest.mark.parametrize("name", METRIC_NAMES)
def test_batch_from_its_samples_and_the_tree_alone_equals_the_full_matrix(demo, name):
    table, tree = demo
    expected = full_matrix(build_metric(name, table, tree), block_size=128, progress=False)
    rows = np.random.default_rng(3).choice(table.shape[0], size=48, replace=False)
    alone = build_metric(name, table.take_samples(rows), tree).block(torch.arange(len(rows))).numpy()
    assert np.abs(alone - expected[np.ix_(rows, rows)]).max() <= 1e-12
