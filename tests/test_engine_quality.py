"""Short CPU pretraining runs learn: both losses fall, and held-out predicted distances correlate
with the true UniFrac distances (demo data: Pearson r >= 0.8; the model sees each sample's 128
most abundant ASVs, the target uses all). The r is printed (pytest -s)."""

from __future__ import annotations

from pathlib import Path

import pytest
from test_engine_train import BIN, PRETRAIN, checked, launch, run_args

from aam_ds.tracking import read_metrics

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def pretrain_and_read(run_dir: Path, cache: Path, **overrides) -> tuple[list[dict], dict]:
    settings = {
        "schedule.steps": 150,
        "schedule.warmup_steps": 5,
        "schedule.log_every": 5,
        "schedule.eval_every": 1000,
        "parallel.micro_batch_size": 16,
        "optim.lr": 2e-3,
        "data.max_asvs": 128,
        "data.max_seq_len": 64,
        **overrides,
    }
    checked(launch([str(BIN / "python"), PRETRAIN, *run_args(run_dir, cache, **settings)], timeout=500))
    records = read_metrics(run_dir / "metrics.jsonl")
    train = [r["metrics"] for r in records if r["kind"] == "train"]
    final_eval = [r for r in records if r["kind"] == "eval"][-1]["metrics"]
    return train, final_eval


def assert_learned(train: list[dict], final_eval: dict, min_r: float, label: str) -> None:
    print(
        f"\n{label}: pairwise {train[0]['pairwise']:.4f} -> {train[-1]['pairwise']:.4f}, "
        f"nucleotide {train[0]['nucleotide']:.3f} -> {train[-1]['nucleotide']:.3f}, "
        f"held-out distance Pearson r = {final_eval['distance_r']:.3f}"
    )
    assert train[-1]["pairwise"] < 0.7 * train[0]["pairwise"]
    assert train[-1]["nucleotide"] < train[0]["nucleotide"]
    assert final_eval["distance_r"] >= min_r


@pytest.mark.slow
def test_pretraining_on_demo_data_learns_the_distances(tmp_path):
    train, final_eval = pretrain_and_read(tmp_path / "run", tmp_path / "cache")
    assert_learned(train, final_eval, 0.8, "demo data")


@pytest.mark.slow
def test_pretraining_on_cfs_lowers_both_losses(tmp_path):
    cfs = SHARED / "cfs"
    if not (cfs / "table.biom").is_file():
        pytest.skip(f"real data folder {cfs} is absent")
    train, final_eval = pretrain_and_read(
        tmp_path / "run",
        tmp_path / "cache",
        **{
            "data.table": cfs / "table.biom",
            "data.tree": cfs / "tree.nwk",
            "data.max_seq_len": 150,
            "data.max_asvs": 32,
            "schedule.steps": 60,
            "parallel.micro_batch_size": 8,
        },
    )
    assert_learned(train, final_eval, 0.0, "CFS")
