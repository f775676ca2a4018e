"""Full ``N x N`` distance matrices, block-wise with our kernels (``--engine ssu`` is :mod:`aam_ds.distances.ssu`).

The upper-triangle blocks ``(I, J)`` of ``block_size`` samples are computed and mirrored: by a
:class:`~aam_ds.distances.metric.PairwiseMetric` (torch kernels, each block densified over only the
branches present in ``I`` or ``J``) or a torch-free :class:`~aam_ds.distances.unifrac_cpu.CpuMetric`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Union

import numpy as np
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

if TYPE_CHECKING:
    from aam_ds.distances.metric import PairwiseMetric
    from aam_ds.distances.unifrac_cpu import CpuMetric

AnyMetric = Union["PairwiseMetric", "CpuMetric"]  # torch on any device, or the torch-free CPU kernel


def block_pairs(n: int, block_size: int) -> list[tuple[int, int]]:
    """Row starts ``(i, j)`` of the upper-triangle blocks (``i <= j``) of an ``N x N`` matrix, in compute order."""
    starts = list(range(0, n, block_size))
    return [(i, j) for a, i in enumerate(starts) for j in starts[a:]]


def pair_block(metric: AnyMetric, i: int, j: int, block_size: int) -> np.ndarray:
    """Distances (float64 numpy ``[m, n]``) between the samples of rows ``i:i+block_size`` and ``j:j+block_size``."""
    n = len(metric.sample_ids)
    rows_i = np.arange(i, min(i + block_size, n))
    block = metric.block(rows_i) if i == j else metric.block(rows_i, np.arange(j, min(j + block_size, n)))
    return block.astype(np.float64) if isinstance(block, np.ndarray) else block.double().cpu().numpy()


def block_progress(name: str, enabled: bool) -> Progress:
    """A Rich progress bar over blocks: ``<metric> distances [bar] done/total blocks, elapsed, ETA``."""
    return Progress(
        TextColumn(f"{name} distances"),
        BarColumn(),
        TextColumn("{task.completed}/{task.total} blocks"),
        TimeElapsedColumn(),
        TextColumn("ETA"),
        TimeRemainingColumn(),
        disable=not enabled,
    )


def full_matrix(metric: AnyMetric, block_size: int = 1024, progress: bool = True) -> np.ndarray:
    """All pairwise distances ``[N, N]`` (float64 numpy, rows in table order), held in memory
    (:func:`aam_ds.distances.blockfile.write_blockwise_h5` writes them to disk block by block instead)."""
    n = len(metric.sample_ids)
    pairs = block_pairs(n, block_size)
    out = np.zeros((n, n), dtype=np.float64)
    with block_progress(metric.name, progress) as bar:
        task = bar.add_task("blocks", total=len(pairs))
        for i, j in pairs:
            block = pair_block(metric, i, j, block_size)
            out[i : i + len(block), j : j + block.shape[1]] = block
            out[j : j + block.shape[1], i : i + len(block)] = block.T
            bar.advance(task)
    return out
