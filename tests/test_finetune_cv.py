"""k-fold cross-validated fine-tuning on the demo data (tiny model, few steps): every sample is
predicted once, grouped folds leak no group (not even into validation), folds read from
`aam-ds rf-baseline` are used as given, and rf-baseline accepts the out-of-fold predictions."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
from test_data_splits import saved_splits
from test_finetune import in_process_world, spec_for  # noqa: F401 (the fixture tears the world down)

from aam_ds.cli import main as cli_main
from aam_ds.engine.crossval import OOF_NAME, cross_validate

ROOT = Path(__file__).resolve().parents[1]
DIST_VARIABLES = {"MASTER_ADDR", "MASTER_PORT", "RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE"}


@pytest.mark.slow
def test_grouped_cv_predicts_every_sample_once_without_leaking_groups(cache, demo, tmp_path):
    run_dir = tmp_path / "cv"
    cv = cross_validate(
        spec_for(
            cache,
            run_dir,
            **{
                "schedule.steps": 4,
                "data.split.kind": "grouped",
                "data.split.group_column": "subject",
                "data.split.folds": 3,
                "data.split.val_fraction": 0.2,
            },
        )
    )
    metadata = pd.read_csv(demo.metadata, sep="\t", comment="#", index_col=0)
    oof = pd.read_csv(run_dir / OOF_NAME, sep="\t", index_col=0)
    assert sorted(oof.index) == sorted(metadata.index)  # each sample exactly once
    assert oof["age"].notna().all()

    folds = pd.read_csv(run_dir / "folds.tsv", sep="\t", index_col=0)["fold"]
    assert sorted(folds.unique()) == [0, 1, 2]
    assert (metadata.loc[folds.index].groupby("subject").size() > 0).all()
    assert (pd.Series(folds.values, index=metadata.loc[folds.index, "subject"]).groupby(level=0).nunique() == 1).all()
    for fold in range(3):
        splits = saved_splits(run_dir / f"fold{fold}")
        assert sorted(splits["test"]) == sorted(folds.index[folds == fold])
        subjects = {name: set(metadata.loc[ids, "subject"]) for name, ids in splits.items()}
        assert splits["val"] and not subjects["train"] & subjects["val"]
        assert not (subjects["train"] | subjects["val"]) & subjects["test"]
    assert len(cv.fold_metrics) == 3 and cv.pooled["n"] == len(metadata)

    out = tmp_path / "rf"
    code = cli_main(
        [
            "rf-baseline",
            "--table",
            str(demo.table),
            "--metadata",
            str(demo.metadata),
            "--target",
            "age",
            "--folds-file",
            str(run_dir / "folds.tsv"),
            "--trees",
            "20",
            "--compare",
            str(run_dir / OOF_NAME),
            "--out-dir",
            str(out),
        ]
    )
    assert code == 0
    comparison = pd.read_csv(out / "comparison.tsv", sep="\t", index_col=0)
    assert "oof_predictions (pooled)" in comparison.index
    assert comparison.loc["oof_predictions (pooled)", "mae"] == pytest.approx(cv.pooled["mae"], abs=1e-3)  # the file rounds


@pytest.mark.slow
def test_cv_command_uses_the_folds_of_the_random_forest(cache, demo, tmp_path):
    """`aam-ds cv` with data.split.folds_file: the folds are the forest's, fold for fold."""
    rf = tmp_path / "rf"
    assert (
        cli_main(
            [
                "rf-baseline",
                "--table",
                str(demo.table),
                "--metadata",
                str(demo.metadata),
                "--target",
                "body_site",
                "--folds",
                "3",
                "--trees",
                "20",
                "--out-dir",
                str(rf),
            ]
        )
        == 0
    )
    run_dir = tmp_path / "cv"
    settings = {
        "model.preset": "tiny",
        "data.max_asvs": 16,
        "data.max_seq_len": 48,
        "data.cache_dir": cache,
        "schedule.steps": 3,
        "schedule.warmup_steps": 0,
        "tracking.run_dir": run_dir,
        "tracking.rich": "false",
        "parallel.micro_batch_size": 8,
        "loss.pairwise_weight": 0,
        "loss.nucleotide_weight": 0,
        "loss.task": "classification",
        "data.targets": "[body_site]",
        "data.split.kind": "stratified",
        "data.split.column": "body_site",
        "data.split.folds_file": rf / "folds.tsv",
    }
    args = [a for k, v in settings.items() for a in ("--set", f"{k}={v}")]
    # a fresh single-process world: not the rendezvous variables an in-process run of this session set
    env = {k: v for k, v in os.environ.items() if k not in DIST_VARIABLES} | {"OMP_NUM_THREADS": "1"}
    result = subprocess.run(
        [sys.executable, "-m", "aam_ds.cli", "cv", *args], cwd=ROOT, capture_output=True, text=True, timeout=300, env=env
    )
    assert result.returncode == 0, (result.stdout + result.stderr)[-3000:]
    ours = pd.read_csv(run_dir / "folds.tsv", sep="\t", index_col=0)["fold"]
    theirs = pd.read_csv(rf / "folds.tsv", sep="\t", index_col=0)["fold"]
    assert ours.sort_index().equals(theirs.sort_index())
    oof = pd.read_csv(run_dir / OOF_NAME, sep="\t", index_col=0)
    assert sorted(oof.index) == sorted(theirs.index)
    assert {f"prob_{c}" for c in oof["body_site"].unique()} <= set(oof.columns)
