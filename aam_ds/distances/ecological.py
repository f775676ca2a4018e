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


def braycurtis(a: torch.Tensor, b: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """``sum |a - b| / sum (a + b)`` for counts ``a [m, K]``, ``b [n, K]`` -> ``[m, n]``; ``weight [K]``
    is the metric's column weight (ones, as the registry's kernels share one signature)."""
    return weighted_normalized(a, b, weight)


def jaccard(a: torch.Tensor, b: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """``1 - |A and B| / |A or B|`` over the ASVs present (count > 0) -> ``[m, n]``; ``weight [K]``: ones."""
    return unweighted(a, b, weight)


def shifted_log(counts: sp.csr_matrix, pseudocount: float) -> sp.csr_matrix:
    """``log(1 + counts / pseudocount)``: ``log(counts + pseudocount)`` shifted so zeros stay zero."""
    out = sp.csr_matrix(counts, dtype=np.float64, copy=True)
    out.data = np.log1p(out.data / pseudocount)
    return out


def aitchison(ya: torch.Tensor, yb: torch.Tensor, weight: torch.Tensor, n_asvs: int) -> torch.Tensor:
    """Aitchison distance ``[m, n]`` from :func:`shifted_log` rows ``ya [m, K]``, ``yb [n, K]``
    (``K`` of the table's ``n_asvs`` columns; the rest are zero for every row given). ``weight [K]``
    (ones) is unused: the registry's kernels share one signature.

    ``|clr_a - clr_b|^2 = |y_a - y_b|^2 - n_asvs g^2`` with ``g = mean(y_a) - mean(y_b)``: one exact
    pairwise-difference pass. For pairs of (nearly) the same composition the two terms cancel
    (a root of rounding, ~1e-8 in fp64), so those pairs are summed again term by term
    (:func:`_close_pairs_exactly`), and samples of one composition are at distance 0 to rounding.
    """
    mean_a, mean_b = ya.sum(1) / n_asvs, yb.sum(1) / n_asvs
    gap = mean_a[:, None] - mean_b[None, :]
    squared = torch.cdist(ya, yb, p=2, compute_mode="donot_use_mm_for_euclid_dist").square() - n_asvs * gap.square()
    scale = ya.square().sum(1)[:, None] + yb.square().sum(1)[None, :]
    close = (squared <= _CANCELLATION * scale).nonzero(as_tuple=True)
    if len(close[0]):
        squared[close] = _close_pairs_exactly(ya, yb, mean_a, mean_b, close, n_asvs)
    return squared.clamp_min(0).sqrt()


# relative size of |clr_a - clr_b|^2 below which the expanded form is summed again term by term
_CANCELLATION = 1e-4


def _close_pairs_exactly(
    ya: torch.Tensor, yb: torch.Tensor, mean_a: torch.Tensor, mean_b: torch.Tensor, pairs: tuple[torch.Tensor, torch.Tensor], n_asvs: int
) -> torch.Tensor:
    """``|clr_a - clr_b|^2`` of the row pairs ``pairs = (i [P], j [P])`` as sums of non-negative terms:
    each of the ``K`` columns adds ``((y_a - mean_a) - (y_b - mean_b))^2``, each other column ``g^2``."""
    i, j = pairs
    out = torch.empty(len(i), dtype=ya.dtype, device=ya.device)
    step = max(1, (1 << 20) // max(1, ya.shape[1]))
    for start in range(0, len(i), step):
        a, b = i[start : start + step], j[start : start + step]
        diff = (ya[a] - mean_a[a, None]) - (yb[b] - mean_b[b, None])
        out[start : start + step] = diff.square().sum(1) + (n_asvs - ya.shape[1]) * (mean_a[a] - mean_b[b]).square()
    return out
