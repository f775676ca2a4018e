"""Distance targets for pretraining: ``batch(sample_index [B]) -> [B, B]`` for any batch.

Either computed on the fly from the table (and tree) with a :class:`PairwiseMetric`, or looked up
in a precomputed matrix file (unifrac HDF5, ``.npy`` + IDs, square TSV) that must cover every
sample of the table.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from aam_ds.data.table import FeatureTable
from aam_ds.distances.io import read_distance_matrix
from aam_ds.distances.metric import PairwiseMetric, build_metric
from aam_ds.distances.registry import get_metric
from aam_ds.distances.tree import read_tree
from aam_ds.errors import AamInputError
from aam_ds.spec import DataSpec


class DistanceTarget:
    """Target distances between the samples of a batch (rows of the FeatureTable)."""

    def batch(self, sample_index: torch.Tensor) -> torch.Tensor:
        """``[B, B]`` float32 distances, symmetric with a zero diagonal, on ``sample_index``'s device."""
        raise NotImplementedError


class OnTheFlyTarget(DistanceTarget):
    """Exact distances of each batch, computed by ``metric`` on its device (fp64 by default)."""

    def __init__(self, metric: PairwiseMetric):
        self.metric = metric

    def batch(self, sample_index: torch.Tensor) -> torch.Tensor:
        return self.metric.block(sample_index).to(device=sample_index.device, dtype=torch.float32)


class BatchAloneTarget(DistanceTarget):
    """Distances of each batch from the batch's samples and the tree alone (a sharded dataset: no table in memory).

    ``table.take_samples(rows)`` gives the batch's :class:`FeatureTable` over all ASVs; ``build`` binds the metric to it.
    """

    def __init__(self, table, build: Callable[[FeatureTable], PairwiseMetric]):
        self.table, self.build = table, build

    def batch(self, sample_index: torch.Tensor) -> torch.Tensor:
        rows = sample_index.cpu().numpy()
        metric = self.build(self.table.take_samples(rows))
        return metric.block(torch.arange(len(rows))).to(device=sample_index.device, dtype=torch.float32)


class PrecomputedTarget(DistanceTarget):
    """Look-ups in a precomputed matrix, reordered to the table's rows and held in CPU memory (fp32)."""

    def __init__(self, matrix: np.ndarray, source: str):
        self.matrix = torch.as_tensor(np.ascontiguousarray(matrix, dtype=np.float32))
        self.source = source

    @classmethod
    def from_file(cls, path: str | Path, sample_ids: list[str]) -> "PrecomputedTarget":
        """Read a distance matrix file and keep the rows and columns of ``sample_ids``; AamInputError names samples it lacks."""
        ids, matrix = read_distance_matrix(path)
        position = {s: i for i, s in enumerate(ids)}
        missing = [s for s in sample_ids if s not in position]
        if missing:
            raise AamInputError(
                str(path),
                f"covers {len(sample_ids) - len(missing)} of the table's {len(sample_ids)} samples; "
                f"{len(missing)} are missing, e.g. {missing[:5]}",
                "recompute the matrix for this table (`aam-ds distances --table ... --out ...`) or set data.distances: on-the-fly",
            )
        rows = np.array([position[s] for s in sample_ids], dtype=np.int64)
        return cls(matrix[np.ix_(rows, rows)], str(path))

    def batch(self, sample_index: torch.Tensor) -> torch.Tensor:
        rows = sample_index.cpu()
        return self.matrix[rows[:, None], rows[None, :]].to(sample_index.device)


def build_distance_target(data: DataSpec, table: FeatureTable, device: torch.device | str = "cpu") -> DistanceTarget:
    """The target ``data`` asks for: ``data.distances`` is ``on-the-fly`` or a matrix file.

    ``table``: a :class:`FeatureTable`, or a table read on access (:class:`aam_ds.data.shards.ShardedTable`),
    whose on-the-fly distances are computed per batch from the batch's samples (:class:`BatchAloneTarget`)."""
    if data.distances != "on-the-fly":
        return PrecomputedTarget.from_file(data.distances, table.sample_ids)
    tree = None
    if get_metric(data.metric).needs_tree:
        if data.tree is None:
            raise AamInputError(
                "data.tree",
                f"data.metric={data.metric} (UniFrac) needs a phylogeny",
                "set data.tree to a rooted Newick or Phylogeny[Rooted] .qza, or choose braycurtis / jaccard / aitchison",
            )
        tree = read_tree(data.tree, data.cache_dir)
    build = functools.partial(
        build_metric,
        data.metric,
        tree=tree,
        alpha=data.alpha,
        pseudocount=data.pseudocount,
        drop_missing_tips=data.drop_missing_tips,
        device=device,
        dtype=torch.float64,
    )
    return OnTheFlyTarget(build(table)) if isinstance(table, FeatureTable) else BatchAloneTarget(table, build)
