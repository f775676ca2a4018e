"""Training-time data augmentation: each epoch sees a perturbed copy of every sample's reads.

Opt-in from ``data.augment`` (off by default), applied to the training split only:

- ``resample_reads``: the sample's reads are redrawn at the same depth (re-rarefaction by a
  multinomial draw of its reads with its relative abundances as probabilities), keeping every ASV
  present: each present ASV keeps one read and the other ``depth - k`` reads are redrawn. The
  depth and the set of ASVs stay, the abundances get the noise of sequencing another library.
- ``asv_dropout``: each present ASV is removed with this probability (at least one is kept), as
  if it had fallen below the detection limit.

A perturbation depends only on ``(schedule.seed, epoch, sample row)``, never on the rank or on
the order samples are drawn in, so runs are deterministic per seed and a resumed run repeats them.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from torch.utils.data import Dataset

from aam_ds.data.dataset import SampleDataset
from aam_ds.data.select import SampleRow
from aam_ds.spec import AugmentSpec


def augment_row(row: SampleRow, augment: AugmentSpec, rng: np.random.Generator) -> SampleRow:
    """A perturbed copy of ``row`` (same ``sample_index``; ASVs a subset of the row's, in the same order)."""
    counts = row.counts.astype(np.float64)
    index = row.asv_index
    if augment.resample_reads and len(counts):
        depth = int(round(counts.sum()))
        spare = max(depth - len(counts), 0)
        counts = 1.0 + rng.multinomial(spare, counts / counts.sum()) if spare else counts
    if augment.asv_dropout > 0 and len(counts) > 1:
        keep = rng.random(len(counts)) >= augment.asv_dropout
        if not keep.any():
            keep[rng.integers(len(counts))] = True
        index, counts = index[keep], counts[keep]
    return SampleRow(row.sample_index, index, counts.astype(np.float32))


class AugmentedDataset(Dataset):
    """A :class:`SampleDataset` whose items are keyed by ``(position, epoch)`` and perturbed per epoch
    (``GlobalBatchSampler(..., with_epoch=True)`` yields such keys)."""

    def __init__(self, dataset: SampleDataset, augment: AugmentSpec, seed: int):
        self.dataset, self.augment, self.seed = dataset, augment, seed

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: tuple[int, int]) -> dict[str, Any]:
        position, epoch = key
        row = self.dataset.rows[position]
        rng = np.random.default_rng([self.seed, epoch, row.sample_index])
        return self.dataset.item(augment_row(row, self.augment, rng))
