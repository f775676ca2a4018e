"""Unweighted UniFrac has two kernels: on the CPU from the sparse rows (aam_ds.distances.unifrac_cpu), on
GPUs densified (aam_ds.distances.unifrac.unweighted). They agree, square and rectangular, fp64 and fp32."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from aam_ds.data.table import load_table
from aam_ds.distances.metric import DTYPES, build_metric
from aam_ds.distances.tree import read_tree


@pytest.mark.parametrize("dtype, bound", [("fp64", 1e-12), ("fp32", 1e-5)])
def test_sparse_cpu_kernel_equals_the_dense_kernel(demo_paths, dtype, bound):
    metric = build_metric("unweighted", load_table(demo_paths.table), read_tree(demo_paths.tree), dtype=DTYPES[dtype])
    assert metric.cpu is not None
    rows = torch.arange(300)
    dense, columns = metric.vectors.dense(rows)
    expected = metric.kernel(dense, dense, metric.weight[columns])
    got = metric.block(rows)  # the CPU kernel: 300 rows, so both its dense and its sparse branches run
    assert got.dtype == DTYPES[dtype] and torch.equal(got, got.T) and (got.diagonal() == 0).all()
    off = ~torch.eye(300, dtype=torch.bool)
    assert (got - expected).abs()[off].max() <= bound
    a, b = torch.tensor([5, 0, 3, 3, 299]), torch.arange(40, 200)
    rect = metric.block(a, b)
    assert np.abs(rect.numpy() - got[a][:, b].numpy()).max() <= bound


def test_stored_zeros_are_not_presence():
    from scipy import sparse as sp

    from aam_ds.distances.unifrac_cpu import cpu_metric

    rows = sp.csr_matrix((np.array([0.5, 0.5, 0.0, 1.0]), np.array([0, 1, 2, 2]), np.array([0, 3, 4])), shape=(2, 3))
    metric = cpu_metric("unweighted", ["a", "b"], rows, np.array([1.0, 1.0, 2.0]))
    assert metric.block(np.arange(2))[0, 1] == 1.0  # a holds branches 0 and 1, b only 2: nothing shared
