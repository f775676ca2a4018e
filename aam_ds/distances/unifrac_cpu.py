"""Unweighted UniFrac on the CPU straight from the per-sample sparse rows, never densifying a block.

Per-sample presence is the sparsity pattern of the branch proportions (zeros are not stored). The
shared length of two samples, ``sum l [a > 0][b > 0]``, splits by branch: branches held by more than
5 % of the block's rows (near the root) go through one dense matrix product (numpy's BLAS) over just
those columns; the others (tips and twigs: most branches, few non-zeros each) through a scipy sparse
product that touches only the pairs of samples sharing them. On Huang oral (2,537 samples)
the full matrix takes 0.7 CPU s this way against 2.7 s for the densified kernel
(:func:`aam_ds.distances.unifrac.unweighted`, used on GPUs), equal to 2e-14.

:class:`CpuMetric` binds such a kernel to a table without torch, so ``aam-ds distances`` on a machine
without a GPU does not pay for importing torch (1.2-1.5 CPU s, more than ssu's whole run on ECAM).
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Callable

import numpy as np
import scipy.sparse as sp

from aam_ds.data.table import FeatureTable
from aam_ds.distances.branches import build_branch_abundances
from aam_ds.distances.registry import get_metric
from aam_ds.distances.tree import Tree

# branches held by at most this share of a block's rows take the sparse product
SPARSE_SHARE = 0.05


def unweighted(a: sp.csr_matrix, b: sp.csr_matrix | None, length: np.ndarray) -> np.ndarray:
    """Unweighted UniFrac ``[m, n]`` between the rows of ``a`` ``[m, K]`` and ``b`` ``[n, K]`` (CSR branch
    proportions; ``b=None``: ``a`` against itself), ``length [K]`` the branch lengths; dtype of ``length``.
    A pair with no branch of positive length present has distance 0, as in the dense kernel."""
    pa = _presence(a, length.dtype)
    pb = pa if b is None else _presence(b, length.dtype)
    total_a = pa @ length
    total_b = total_a if b is None else pb @ length
    held_a = np.bincount(pa.indices, minlength=pa.shape[1])
    held_b = held_a if b is None else np.bincount(pb.indices, minlength=pb.shape[1])
    if b is None:
        both, held, rows = held_a > 1, held_a, pa.shape[0]
    else:
        both, held, rows = (held_a > 0) & (held_b > 0), held_a + held_b, pa.shape[0] + pb.shape[0]
    rare = both & (held <= SPARSE_SHARE * rows)
    common, rare = np.flatnonzero(both & ~rare), np.flatnonzero(rare)
    shared = (pa[:, common].toarray() * length[common]) @ pb[:, common].toarray().T
    shared += ((pa[:, rare] @ sp.diags(length[rare])) @ pb[:, rare].T).toarray()
    if b is None:
        np.fill_diagonal(shared, total_a)
    union = total_a[:, None] + total_b[None, :] - shared
    return np.where(union > 0, (union - shared) / np.where(union > 0, union, 1), 0).astype(length.dtype, copy=False)


def _presence(rows: sp.csr_matrix, dtype: np.dtype) -> sp.csr_matrix:
    """Ones where ``rows`` has a stored non-zero (its stored entries are all positive proportions)."""
    return sp.csr_matrix((np.ones(rows.nnz, dtype=dtype), rows.indices, rows.indptr), shape=rows.shape)


@dataclass
class CpuMetric:
    """A metric's CPU kernel bound to a table: ``rows`` CSR ``[N, K]`` (branch proportions), ``weight [K]``
    (branch lengths), both float64 or float32; no torch."""

    name: str
    sample_ids: list[str]
    rows: sp.csr_matrix
    weight: np.ndarray
    kernel: Callable[[sp.csr_matrix, sp.csr_matrix | None, np.ndarray], np.ndarray]

    def block(self, rows_a: np.ndarray, rows_b: np.ndarray | None = None) -> np.ndarray:
        """Distances ``[m, n]`` between sample rows ``rows_a`` and ``rows_b`` (int ``[m]``, ``[n]``); with
        ``rows_b=None`` ``rows_a`` against itself, exactly symmetric with a zero diagonal."""
        rows_a = np.asarray(rows_a)
        if rows_b is not None:
            return self.kernel(self.rows[rows_a], self.rows[np.asarray(rows_b)], self.weight)
        d = self.kernel(self.rows[rows_a], None, self.weight)
        d = (d + d.T) / 2
        np.fill_diagonal(d, 0)
        return d


def cpu_metric(
    name: str, sample_ids: list[str], rows: sp.csr_matrix, weight: np.ndarray, dtype: type | str = np.float64
) -> CpuMetric | None:
    """Metric ``name``'s CPU kernel (registry ``cpu_kernel``) bound to ``rows`` ``[N, K]`` and ``weight [K]``,
    or None when it has none."""
    entry = get_metric(name)
    if entry.cpu_kernel is None:
        return None
    module, function = entry.cpu_kernel.split(".")
    kernel = getattr(importlib.import_module(f"aam_ds.distances.{module}"), function)
    rows = sp.csr_matrix(rows, dtype=dtype, copy=True)
    rows.eliminate_zeros()  # presence is the stored pattern
    rows.sort_indices()
    return CpuMetric(name, list(sample_ids), rows, np.asarray(weight, dtype=dtype), kernel)


def build_cpu_metric(
    name: str, table: FeatureTable, tree: Tree | None, drop_missing_tips: bool = False, dtype: type | str = np.float64
) -> CpuMetric | None:
    """:func:`cpu_metric` on the table's branch proportions (a UniFrac metric with a CPU kernel), or None."""
    entry = get_metric(name)
    if entry.cpu_kernel is None or entry.rows != "branches" or tree is None:
        return None
    branches = build_branch_abundances(table, tree, drop_missing_tips)
    return cpu_metric(name, table.sample_ids, branches.proportions, branches.lengths, dtype)
