"""Bray-Curtis, Jaccard and Aitchison between two sets of samples, in torch.

Bray-Curtis and Jaccard are the normalised weighted and the unweighted UniFrac kernels with unit
weights (a star tree), applied to raw counts. Aitchison is the Euclidean distance between CLR
transforms of ``counts + pseudocount`` over all ``M`` ASVs of the table, computed from the
sparse ``y = log(1 + counts / pseudocount)`` (zero where the count is zero):
``clr = y - mean(y)``, so ``|clr_a - clr_b|^2 = |y_a - y_b|^2 - M (mean(y_a) - mean(y_b))^2``,
and only the columns non-zero in the batch are ever touched.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp
import torch

from aam_ds.distances.unifrac import unweighted, weighted_normalized


def braycurtis(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``sum |a - b| / sum (a + b)`` for counts ``a [m, K]``, ``b [n, K]`` -> ``[m, n]``."""
    return weighted_normalized(a, b, torch.ones(a.shape[1], dtype=a.dtype, device=a.device))


def jaccard(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``1 - |A and B| / |A or B|`` over the ASVs present (count > 0) -> ``[m, n]``."""
    return unweighted(a, b, torch.ones(a.shape[1], dtype=a.dtype, device=a.device))


def shifted_log(counts: sp.csr_matrix, pseudocount: float) -> sp.csr_matrix:
    """``log(1 + counts / pseudocount)``: ``log(counts + pseudocount)`` shifted so zeros stay zero."""
    out = sp.csr_matrix(counts, dtype=np.float64, copy=True)
    out.data = np.log1p(out.data / pseudocount)
    return out


def aitchison(ya: torch.Tensor, yb: torch.Tensor, n_asvs: int) -> torch.Tensor:
    """Aitchison distance ``[m, n]`` from :func:`shifted_log` rows ``ya [m, K]``, ``yb [n, K]``
    (``K`` of the table's ``n_asvs`` columns; the rest are zero for every row given)."""
    squared = torch.cdist(ya, yb, p=2, compute_mode="donot_use_mm_for_euclid_dist").square()
    mean_gap = ya.sum(1)[:, None] / n_asvs - yb.sum(1)[None, :] / n_asvs
    return (squared - n_asvs * mean_gap.square()).clamp_min(0).sqrt()
