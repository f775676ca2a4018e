"""Deterministic, resumable assignment of training samples to ranks and micro-steps.

Each epoch is one seeded permutation of the training samples, cut into global micro-batches
of ``W * micro`` samples (the remainder is dropped, so every rank always sees the same shape).
Rank ``r`` takes the ``r``-th slice of each global micro-batch, so the concatenation of the ranks'
micro-batches (rank-major) is exactly what one process with micro batch ``W * micro`` would see.
A run resumed at micro-step ``k`` continues with the same batches as an uninterrupted one.
"""

from __future__ import annotations

from typing import Iterator

import torch
from torch.utils.data import Sampler

from aam_ds.errors import AamInputError


class GlobalBatchSampler(Sampler[list[int]]):
    """Yields this rank's micro-batches (lists of dataset positions, or of ``(position, epoch)`` with
    ``with_epoch``) forever, from ``start_micro_step``."""

    def __init__(self, n_samples: int, micro_batch: int, world_size: int, rank: int, seed: int, start_micro_step: int = 0,
                 with_epoch: bool = False):
        self.global_micro = micro_batch * world_size
        if n_samples < self.global_micro:
            raise AamInputError(
                "parallel.micro_batch_size",
                f"{n_samples} training samples cannot fill one global micro-batch of {micro_batch} x {world_size} ranks",
                "lower parallel.micro_batch_size or use fewer ranks",
            )
        self.n_samples, self.micro_batch, self.rank, self.seed = n_samples, micro_batch, rank, seed
        self.start_micro_step = start_micro_step
        self.with_epoch = with_epoch  # yield (position, epoch) keys, for AugmentedDataset

    @property
    def micro_steps_per_epoch(self) -> int:
        return self.n_samples // self.global_micro

    def epoch_order(self, epoch: int) -> torch.Tensor:
        """The permutation ``int64 [n_samples]`` of epoch ``epoch``, from the seed and the epoch alone."""
        gen = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
        return torch.randperm(self.n_samples, generator=gen)

    def __iter__(self) -> Iterator[list[int]]:
        epoch, offset = divmod(self.start_micro_step, self.micro_steps_per_epoch)
        while True:
            order = self.epoch_order(epoch)
            for step in range(offset, self.micro_steps_per_epoch):
                start = step * self.global_micro + self.rank * self.micro_batch
                positions = order[start : start + self.micro_batch].tolist()
                yield [(p, epoch) for p in positions] if self.with_epoch else positions
            epoch, offset = epoch + 1, 0
