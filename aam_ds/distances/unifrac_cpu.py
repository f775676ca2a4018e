"""Unweighted UniFrac on the CPU straight from the per-sample sparse rows, never densifying a block.

Per-sample presence is the sparsity pattern of the branch proportions. The shared length of two
samples, ``sum l [a > 0][b > 0]``, splits by branch: branches held by more than 5 % of the block's
rows (near the root) go through one dense matrix product in torch (on torch's threads) over just
those columns; the others (tips and twigs: most branches, few non-zeros each) through a scipy
sparse product that touches only the pairs of samples sharing them. On Huang oral (2,537 samples)
the full matrix takes 0.7 CPU s this way against 2.7 s for the densified kernel
(:func:`aam_ds.distances.unifrac.unweighted`, used on GPUs), equal to 2e-14.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp
import torch

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
    dense_a = torch.from_numpy(pa[:, common].toarray() * length[common])
    shared = (dense_a @ torch.from_numpy(pb[:, common].toarray()).T).numpy()
    shared += ((pa[:, rare] @ sp.diags(length[rare])) @ pb[:, rare].T).toarray()
    if b is None:
        np.fill_diagonal(shared, total_a)
    union = total_a[:, None] + total_b[None, :] - shared
    return np.where(union > 0, (union - shared) / np.where(union > 0, union, 1), 0).astype(length.dtype, copy=False)


def _presence(rows: sp.csr_matrix, dtype: np.dtype) -> sp.csr_matrix:
    """Ones where ``rows`` has a stored non-zero (its stored entries are all positive proportions)."""
    return sp.csr_matrix((np.ones(rows.nnz, dtype=dtype), rows.indices, rows.indptr), shape=rows.shape)
