"""Unweighted and weighted UniFrac have two kernels each: on the CPU from the sparse rows
(aam_ds.distances.unifrac_cpu), on GPUs densified (aam_ds.distances.unifrac). They agree, square and
rectangular, fp64 and fp32, also on empty samples and branches of length 0."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import sparse as sp

from aam_ds.data.table import load_table
from aam_ds.distances import unifrac
from aam_ds.distances.metric import DTYPES, build_metric
from aam_ds.distances.tree import read_tree
from aam_ds.distances.unifrac_cpu import cpu_metric

CPU_METRICS = ("unweighted", "weighted_normalized", "weighted_unnormalized")


@pytest.mark.parametrize("name", CPU_METRICS)
@pytest.mark.parametrize("dtype, bound", [("fp64", 1e-12), ("fp32", 1e-5)])
def test_sparse_cpu_kernel_equals_the_dense_kernel(demo_paths, name, dtype, bound):
    metric = build_metric(name, load_table(demo_paths.table), read_tree(demo_paths.tree), dtype=DTYPES[dtype])
    assert metric.cpu is not None
    rows = torch.arange(300)
    dense, columns = metric.vectors.dense(rows)
    expected = metric.kernel(dense, dense, metric.weight[columns])
    got = metric.block(rows)  # the CPU kernel; for unweighted 300 rows run both its dense and its sparse branches
    assert got.dtype == DTYPES[dtype] and torch.equal(got, got.T) and (got.diagonal() == 0).all()
    off = ~torch.eye(300, dtype=torch.bool)
    assert expected[off].abs().max() > 0.1  # real distances, not all zeros
    assert (got - expected).abs()[off].max() <= bound
    a, b = torch.tensor([5, 0, 3, 3, 299]), torch.arange(40, 200)
    rect = metric.block(a, b)
    assert np.abs(rect.numpy() - got[a][:, b].numpy()).max() <= bound


@pytest.mark.parametrize("name", CPU_METRICS)
def test_empty_samples_and_zero_lengths_as_the_dense_kernel(name):
    # samples: two identical, one empty (no reads), one only below a branch of length 0, one disjoint from the first
    dense = np.array(
        [
            [0.6, 0.4, 0.0, 1.0, 0.0],
            [0.6, 0.4, 0.0, 1.0, 0.0],
            [0.0, 0.0, 0.0, 0.0, 0.0],
            [0.0, 0.0, 0.0, 0.0, 1.0],
            [0.0, 0.2, 0.8, 1.0, 0.0],
            [0.0, 0.0, 1.0, 0.0, 0.0],
        ]
    )
    length = np.array([1.0, 0.5, 2.0, 0.25, 0.0])
    metric = cpu_metric(name, [f"s{i}" for i in range(6)], sp.csr_matrix(dense), length)
    got = metric.block(np.arange(6))
    expected = getattr(unifrac, name)(torch.from_numpy(dense), torch.from_numpy(dense), torch.from_numpy(length)).numpy()
    expected = (expected + expected.T) / 2
    np.fill_diagonal(expected, 0)
    assert np.abs(got - expected).max() <= 1e-15
    assert got[0, 1] == 0 and got[2, 3] == 0  # identical samples; two without reads on branches of positive length
    rect = metric.block(np.array([2, 0]), np.arange(6))
    assert np.abs(rect - expected[[2, 0]]).max() <= 1e-15


def test_stored_zeros_are_not_presence():
    rows = sp.csr_matrix((np.array([0.5, 0.5, 0.0, 1.0]), np.array([0, 1, 2, 2]), np.array([0, 3, 4])), shape=(2, 3))
    metric = cpu_metric("unweighted", ["a", "b"], rows, np.array([1.0, 1.0, 2.0]))
    assert metric.block(np.arange(2))[0, 1] == 1.0  # a holds branches 0 and 1, b only 2: nothing shared
