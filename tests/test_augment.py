"""Data augmentation: deterministic per seed and epoch, depth and ASV set kept as configured."""

from __future__ import annotations

import numpy as np
import pytest

from aam_ds.data.augment import AugmentedDataset, augment_row
from aam_ds.data.dataset import SampleDataset
from aam_ds.data.select import SampleRow
from aam_ds.engine.batches import GlobalBatchSampler
from aam_ds.spec import AugmentSpec

ROW = SampleRow(7, np.array([2, 5, 9, 11, 20, 31]), np.array([500, 250, 120, 80, 40, 10], dtype=np.float32))


def draw(augment: AugmentSpec, seed: int = 0, epoch: int = 0) -> SampleRow:
    return augment_row(ROW, augment, np.random.default_rng([seed, epoch, ROW.sample_index]))


def test_resampling_changes_counts_but_keeps_depth_and_asvs():
    spec = AugmentSpec(resample_reads=True)
    rows = [draw(spec, epoch=e) for e in range(5)]
    for row in rows:
        assert row.counts.sum() == ROW.counts.sum()
        np.testing.assert_array_equal(row.asv_index, ROW.asv_index)
        assert (row.counts >= 1).all()
    assert any(not np.array_equal(row.counts, ROW.counts) for row in rows)
    assert len({row.counts.tobytes() for row in rows}) > 1  # each epoch draws anew


def test_asv_dropout_removes_about_the_configured_share_and_nothing_else():
    spec = AugmentSpec(asv_dropout=0.3)
    kept = []
    for epoch in range(400):
        row = draw(spec, epoch=epoch)
        assert set(row.asv_index) <= set(ROW.asv_index) and len(row.asv_index) >= 1
        at = np.searchsorted(ROW.asv_index, row.asv_index)
        np.testing.assert_array_equal(row.counts, ROW.counts[at])  # dropout alone leaves the other counts as they were
        kept.append(len(row.asv_index))
    assert np.mean(kept) / len(ROW.asv_index) == pytest.approx(0.7, abs=0.05)


def test_augmentation_is_deterministic_per_seed_epoch_and_sample():
    spec = AugmentSpec(resample_reads=True, asv_dropout=0.2)
    a, b = draw(spec, seed=3, epoch=2), draw(spec, seed=3, epoch=2)
    np.testing.assert_array_equal(a.asv_index, b.asv_index)
    np.testing.assert_array_equal(a.counts, b.counts)
    other = draw(spec, seed=4, epoch=2)
    assert not (np.array_equal(a.asv_index, other.asv_index) and np.array_equal(a.counts, other.counts))


def test_augmented_batches_do_not_depend_on_the_rank_layout():
    """One process with micro batch 4 sees the same perturbed samples as two ranks with 2 each."""
    rows = [SampleRow(i, np.arange(i % 3, i % 3 + 5), np.arange(1, 6, dtype=np.float32) * (i + 1)) for i in range(12)]
    dataset = AugmentedDataset(
        SampleDataset(rows, np.ones((10, 4), dtype=np.uint8)), AugmentSpec(resample_reads=True, asv_dropout=0.2), seed=1
    )

    def items(micro, world, rank):
        sampler = iter(GlobalBatchSampler(len(rows), micro, world, rank, seed=1, with_epoch=True))
        return [[dataset[key] for key in next(sampler)] for _ in range(6)]

    single = items(4, 1, 0)
    ranks = [items(2, 2, r) for r in range(2)]
    for step in range(6):
        merged = ranks[0][step] + ranks[1][step]
        for x, y in zip(single[step], merged):
            assert x["sample_index"] == y["sample_index"]
            assert np.array_equal(x["counts"].numpy(), y["counts"].numpy())
