"""A distance metric bound to one table (and tree): per-sample sparse vectors plus the kernel
that compares two sets of them. Shared by the batch targets and the block-wise full matrix."""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch

from aam_ds.data.table import FeatureTable
from aam_ds.distances import ecological, unifrac
from aam_ds.distances.branches import build_branch_abundances
from aam_ds.distances.sparse import SparseRows
from aam_ds.distances.tree import Tree
from aam_ds.errors import AamInputError

UNIFRAC_METRICS = ("unweighted", "weighted_normalized", "weighted_unnormalized", "generalized")
ECOLOGICAL_METRICS = ("braycurtis", "jaccard", "aitchison")
METRICS = UNIFRAC_METRICS + ECOLOGICAL_METRICS
DTYPES = {"fp32": torch.float32, "fp64": torch.float64}

# (a [m, K], b [n, K], per-column weight [K]) -> [m, n]
Kernel = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


@dataclass
class PairwiseMetric:
    """``vectors``: per-sample sparse rows ``[N, K]`` on the compute device; ``weight``: ``[K]``
    (branch lengths, or ones); ``kernel``: compares two dense row sets over the same columns."""

    name: str
    sample_ids: list[str]
    vectors: SparseRows
    weight: torch.Tensor
    kernel: Kernel

    @property
    def device(self) -> torch.device:
        return self.weight.device

    def block(self, rows_a: torch.Tensor, rows_b: torch.Tensor | None = None) -> torch.Tensor:
        """Distances ``[m, n]`` between sample rows ``rows_a`` and ``rows_b`` (default: ``rows_a``,
        then the result is exactly symmetric with a zero diagonal), on the metric's device."""
        rows_a = rows_a.to(self.device)
        if rows_b is None:
            dense, columns = self.vectors.dense(rows_a)
            d = self.kernel(dense, dense, self.weight[columns])
            d = (d + d.T) / 2
            return d.fill_diagonal_(0)
        rows_b = rows_b.to(self.device)
        dense, columns = self.vectors.dense(torch.cat([rows_a, rows_b]))
        return self.kernel(dense[: len(rows_a)], dense[len(rows_a) :], self.weight[columns])


def build_metric(
    name: str,
    table: FeatureTable,
    tree: Tree | None = None,
    *,
    alpha: float = 0.5,
    pseudocount: float = 1.0,
    drop_missing_tips: bool = False,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float64,
) -> PairwiseMetric:
    """Bind metric ``name`` (one of :data:`METRICS`) to ``table`` (and ``tree`` for UniFrac)."""
    if name not in METRICS:
        raise AamInputError("data.metric", f"unknown metric {name!r}", f"choose one of {', '.join(METRICS)}")
    if name in UNIFRAC_METRICS:
        if tree is None:
            raise AamInputError("data.tree", f"metric {name} (UniFrac) needs a phylogeny", "set data.tree / --tree")
        branches = build_branch_abundances(table, tree, drop_missing_tips)
        matrix, weight = branches.proportions, branches.lengths
        kernel = getattr(unifrac, name)
        if name == "generalized":
            kernel = functools.partial(unifrac.generalized, alpha=alpha)
    else:
        matrix, weight = table.counts, np.ones(table.counts.shape[1])
        if name == "aitchison":
            matrix = ecological.shifted_log(table.counts, pseudocount)
            kernel = _ignoring_weight(functools.partial(ecological.aitchison, n_asvs=table.counts.shape[1]))
        else:
            kernel = _ignoring_weight(getattr(ecological, name))
    vectors = SparseRows(matrix, device, dtype)
    return PairwiseMetric(name, list(table.sample_ids), vectors, torch.as_tensor(weight, device=device).to(dtype), kernel)


def _ignoring_weight(fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]) -> Kernel:
    return lambda a, b, _weight: fn(a, b)
