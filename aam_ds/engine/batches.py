"""Deterministic, resumable assignment of training samples to ranks and micro-steps.

Each epoch is one seeded permutation of the training samples, cut into global micro-batches
of ``W * micro`` samples (the remainder is dropped, so every rank always sees the same shape).
Rank ``r`` takes the ``r``-th slice of each global micro-batch, so the concatenation of the ranks'
micro-batches (rank-major) is exactly what one process with micro batch ``W * micro`` would see.

The place in this stream is a :class:`DataPosition` counted in samples (an epoch and the samples
of its permutation already used), not in micro-steps, so a run resumed with another number of ranks
or another micro batch continues the permutation where the checkpoint left it: no sample of that
epoch is repeated or skipped (only the epoch's last samples that cannot fill a global micro-batch
of the new size are dropped, as in any epoch).
"""

from __future__ import annotations

from typing import Iterator, NamedTuple

import torch
from torch.utils.data import Sampler

from aam_ds.errors import AamInputError


class DataPosition(NamedTuple):
    """A place in the training stream: ``epoch`` and ``sample``, the samples of that epoch's
    permutation used before it (0 <= sample <= n_samples)."""

    epoch: int = 0
    sample: int = 0


def advance(position: DataPosition, micro_steps: int, n_samples: int, global_micro: int) -> DataPosition:
    """Where the stream of ``n_samples`` per epoch, cut into global micro-batches of ``global_micro``
    samples (each epoch's remainder dropped), stands ``micro_steps`` micro-steps after ``position``."""
    epoch, sample = position
    first = (n_samples - sample) // global_micro  # micro-steps left in the start epoch
    if micro_steps < first:
        return DataPosition(epoch, sample + micro_steps * global_micro)
    epochs, steps = divmod(micro_steps - first, max(1, n_samples // global_micro))
    return DataPosition(epoch + 1 + epochs, steps * global_micro)


class GlobalBatchSampler(Sampler[list[int]]):
    """Yields this rank's micro-batches (lists of dataset positions, or of ``(position, epoch)`` with
    ``with_epoch``) forever, from ``start``."""

    def __init__(
        self,
        n_samples: int,
        micro_batch: int,
        world_size: int,
        rank: int,
        seed: int,
        start: DataPosition = DataPosition(),
        with_epoch: bool = False,
    ):
        self.global_micro = micro_batch * world_size
        if n_samples < self.global_micro:
            raise AamInputError(
                "parallel.micro_batch_size",
                f"{n_samples} training samples cannot fill one global micro-batch of {micro_batch} x {world_size} ranks",
                "lower parallel.micro_batch_size or use fewer ranks",
            )
        self.n_samples, self.micro_batch, self.rank, self.seed = n_samples, micro_batch, rank, seed
        self.start = DataPosition(*start)
        self.with_epoch = with_epoch  # yield (position, epoch) keys, for AugmentedDataset

    @property
    def micro_steps_per_epoch(self) -> int:
        return self.n_samples // self.global_micro

    def epoch_order(self, epoch: int) -> torch.Tensor:
        """The permutation ``int64 [n_samples]`` of epoch ``epoch``, from the seed and the epoch alone."""
        gen = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
        return torch.randperm(self.n_samples, generator=gen)

    def position_after(self, micro_steps: int) -> DataPosition:
        """Where the stream stands after ``micro_steps`` micro-steps from :attr:`start`."""
        return advance(self.start, micro_steps, self.n_samples, self.global_micro)

    def __iter__(self) -> Iterator[list[int]]:
        epoch, sample = self.start
        while True:
            order = self.epoch_order(epoch)
            for start in range(
                sample + self.rank * self.micro_batch,
                self.n_samples - self.global_micro + 1 + self.rank * self.micro_batch,
                self.global_micro,
            ):
                positions = order[start : start + self.micro_batch].tolist()
                yield [(p, epoch) for p in positions] if self.with_epoch else positions
            epoch, sample = epoch + 1, 0
