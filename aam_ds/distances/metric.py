"""A distance metric bound to one table (and tree): per-sample sparse vectors plus the kernel
that compares two sets of them. Shared by the batch targets and the block-wise full matrix."""

from __future__ import annotations

import functools
import importlib
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch

from aam_ds.data.table import FeatureTable
from aam_ds.distances import ecological
from aam_ds.distances.branches import build_branch_abundances
from aam_ds.distances.registry import METRIC_NAMES, PARAMETERS, TREE_METRICS, Metric, get_metric
from aam_ds.distances.sparse import SparseRows
from aam_ds.distances.tree import Tree
from aam_ds.distances.unifrac_cpu import CpuMetric, cpu_metric
from aam_ds.errors import AamInputError

METRICS = METRIC_NAMES
UNIFRAC_METRICS = TREE_METRICS
ECOLOGICAL_METRICS = tuple(name for name in METRIC_NAMES if name not in TREE_METRICS)
DTYPES = {"fp32": torch.float32, "fp64": torch.float64}
NUMPY_DTYPES = {torch.float32: np.float32, torch.float64: np.float64}

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
    cpu: CpuMetric | None = None  # the registry's ``cpu_kernel`` on the same rows, used when the device is the CPU

    @property
    def device(self) -> torch.device:
        return self.weight.device

    def block(self, rows_a: torch.Tensor, rows_b: torch.Tensor | None = None) -> torch.Tensor:
        """Distances ``[m, n]`` between sample rows ``rows_a`` and ``rows_b`` (default: ``rows_a``,
        then the result is exactly symmetric with a zero diagonal), on the metric's device."""
        if self.cpu is not None:
            return torch.from_numpy(self.cpu.block(_indices(rows_a), None if rows_b is None else _indices(rows_b)))
        rows_a = torch.as_tensor(rows_a, device=self.device)
        if rows_b is None:
            dense, columns = self.vectors.dense(rows_a)
            d = self.kernel(dense, dense, self.weight[columns])
            d = (d + d.T) / 2
            return d.fill_diagonal_(0)
        rows_b = torch.as_tensor(rows_b, device=self.device)
        dense, columns = self.vectors.dense(torch.cat([rows_a, rows_b]))
        return self.kernel(dense[: len(rows_a)], dense[len(rows_a) :], self.weight[columns])


def _indices(rows: torch.Tensor | np.ndarray) -> np.ndarray:
    """Row indices as numpy (from a tensor on any device)."""
    return rows.cpu().numpy() if isinstance(rows, torch.Tensor) else np.asarray(rows)


def build_metric(
    name: str,
    table: FeatureTable,
    tree: Tree | None = None,
    *,
    alpha: float = PARAMETERS["alpha"].default,
    pseudocount: float = PARAMETERS["pseudocount"].default,
    drop_missing_tips: bool = False,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float64,
) -> PairwiseMetric:
    """Bind metric ``name`` (an entry of :data:`aam_ds.distances.registry.REGISTRY`) to ``table``
    (and ``tree`` for UniFrac).

    Raises
    ------
    AamInputError
        an unknown metric, or a UniFrac metric without a tree.
    """
    entry = get_metric(name)
    if entry.needs_tree and tree is None:
        raise AamInputError("data.tree", f"metric {name} (UniFrac) needs a phylogeny", "set data.tree / --tree")
    values = {"alpha": alpha, "pseudocount": pseudocount}
    parameters = {p: values[p] for p in entry.parameters}
    matrix, weight, bound = _rows(entry, table, tree, drop_missing_tips, parameters)
    module, function = entry.kernel.split(".")
    kernel = functools.partial(getattr(importlib.import_module(f"aam_ds.distances.{module}"), function), **bound)
    cpu = cpu_metric(name, table.sample_ids, matrix, weight, NUMPY_DTYPES[dtype]) if torch.device(device).type == "cpu" else None
    vectors = SparseRows(matrix, device, dtype)
    weight_tensor = torch.as_tensor(weight, device=device).to(dtype)
    return PairwiseMetric(name, list(table.sample_ids), vectors, weight_tensor, kernel, cpu)


def _rows(entry: Metric, table: FeatureTable, tree: Tree | None, drop_missing_tips: bool, parameters: dict[str, float]) -> tuple:
    """Per-sample rows ``[N, K]`` (sparse), the column weight ``[K]`` and the kernel's keyword arguments."""
    if entry.rows == "branches":
        branches = build_branch_abundances(table, tree, drop_missing_tips)
        return branches.proportions, branches.lengths, parameters
    ones = np.ones(table.counts.shape[1])
    if entry.rows == "log_counts":  # the CLR's mean runs over all of the table's ASVs, not a batch's
        return ecological.shifted_log(table.counts, parameters["pseudocount"]), ones, {"n_asvs": table.counts.shape[1]}
    return table.counts, ones, parameters
