"""Samples as a torch Dataset, ``collate`` building the batch dict of docs/architecture.md, and ``to_device``."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from aam_ds.data.select import SampleRow
from aam_ds.data.sequences import PAD


class RowsOf(Sequence):
    """``rows[positions[i]]`` for each ``i``: a split's rows without copying them (``rows`` may be read lazily)."""

    def __init__(self, rows: Sequence[SampleRow], positions: np.ndarray):
        self.rows, self.positions = rows, positions

    def __len__(self) -> int:
        return len(self.positions)

    def __getitem__(self, i: int) -> SampleRow:
        return self.rows[int(self.positions[i])]


class SampleDataset(Dataset):
    """One item per sample row.

    ``tokens`` is ``uint8 [M, L]`` over all ASVs of the table; ``targets`` (``float32 [N, T]`` or
    ``int64 [N]``) and ``covariates`` (``int64 [N, C]``) are indexed by the table row
    (``SampleRow.sample_index``), so the same arrays serve every split.
    """

    def __init__(
        self,
        rows: Sequence[SampleRow],
        tokens: np.ndarray,
        targets: np.ndarray | None = None,
        covariates: np.ndarray | None = None,
    ):
        self.rows = rows if isinstance(rows, Sequence) else list(rows)
        self.tokens = torch.from_numpy(np.ascontiguousarray(tokens))
        self.targets = None if targets is None else torch.tensor(targets)  # a copy: pandas may hand out read-only arrays
        self.covariates = None if covariates is None else torch.tensor(covariates)

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> dict[str, Any]:
        return self.item(self.rows[i])

    def item(self, row: SampleRow) -> dict[str, Any]:
        """The item of one sample row (this dataset's or a perturbed copy of one)."""
        item = {
            "tokens": self.tokens[torch.from_numpy(row.asv_index)],  # uint8 [k, L]
            "counts": torch.from_numpy(row.counts),  # float32 [k]
            "sample_index": row.sample_index,
        }
        if self.targets is not None:
            item["targets"] = self.targets[row.sample_index]
        if self.covariates is not None:
            item["covariates"] = self.covariates[row.sample_index]
        return item


def collate(samples: Sequence[dict[str, Any]]) -> dict[str, torch.Tensor]:
    """Stack items into a batch, padding every sample to ``A`` = the most ASVs in the batch.

    Returns ``tokens`` int64 ``[B, A, L]`` (PAD rows for padding), ``counts`` float32 ``[B, A]``
    (0 on padding), ``sample_index`` int64 ``[B]``, and when present ``targets`` (float32 ``[B, T]``
    or int64 ``[B]``) and ``covariates`` int64 ``[B, C]``.
    """
    n_asvs = max(len(s["counts"]) for s in samples)
    seq_len = samples[0]["tokens"].shape[-1]
    tokens = torch.full((len(samples), n_asvs, seq_len), PAD, dtype=torch.int64)
    counts = torch.zeros(len(samples), n_asvs, dtype=torch.float32)
    for b, s in enumerate(samples):
        k = len(s["counts"])
        tokens[b, :k] = s["tokens"]
        counts[b, :k] = s["counts"]
    batch = {
        "tokens": tokens,
        "counts": counts,
        "sample_index": torch.tensor([s["sample_index"] for s in samples], dtype=torch.int64),
    }
    if "targets" in samples[0]:
        targets = torch.stack([s["targets"] for s in samples])
        batch["targets"] = targets if targets.dtype == torch.int64 else targets.float()
    if "covariates" in samples[0]:
        batch["covariates"] = torch.stack([s["covariates"] for s in samples]).to(torch.int64)
    return batch


def to_device(batch: dict[str, torch.Tensor], device: torch.device) -> dict[str, torch.Tensor]:
    """The batch of :func:`collate` with every tensor on ``device`` (copied without blocking where it can)."""
    return {k: v.to(device, non_blocking=True) for k, v in batch.items()}
