"""Fine-tuning from scratch learns the demo data's age signal: a short run of the real trainer
(``launch/finetune.py``, one process, tiny model, task loss only) predicts validation ages clearly
better than the mean of the training ages.

The demo data's composition depends strongly on age (a random forest reaches R² ~0.9), so a model
whose predictions collapse to a constant (R² ~0) fails here.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from aam_ds.data.synthetic import demo_data

ROOT = Path(__file__).resolve().parents[1]
DIST_VARIABLES = {"MASTER_ADDR", "MASTER_PORT", "RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE"}


def r_squared(predicted: np.ndarray, observed: np.ndarray) -> float:
    return 1.0 - float(((predicted - observed) ** 2).sum() / ((observed - observed.mean()) ** 2).sum())


@pytest.mark.slow
def test_short_finetuning_run_beats_the_mean_predictor(tmp_path):
    cache, run_dir = tmp_path / "cache", tmp_path / "run"
    settings = {
        "model.preset": "tiny",
        "data.max_asvs": 32,
        "data.max_seq_len": 64,
        "data.cache_dir": cache,
        "schedule.steps": 60,
        "schedule.warmup_steps": 5,
        "schedule.log_every": 20,
        "schedule.eval_every": 1000,
        "tracking.run_dir": run_dir,
        "tracking.rich": "false",
        "parallel.micro_batch_size": 16,
        "parallel.zero_stage": 0,
        "loss.pairwise_weight": 0,
        "loss.nucleotide_weight": 0,
        "optim.lr": 0.003,
        "loss.task": "regression",
        "data.targets": "[age]",
    }
    args = [a for k, v in settings.items() for a in ("--set", f"{k}={v}")]
    env = {k: v for k, v in os.environ.items() if k not in DIST_VARIABLES} | {"OMP_NUM_THREADS": "1"}
    result = subprocess.run([sys.executable, "launch/finetune.py", *args], cwd=ROOT, capture_output=True, text=True, timeout=300, env=env)
    assert result.returncode == 0, (result.stdout + result.stderr)[-3000:]

    metadata = pd.read_csv(demo_data(cache).metadata, sep="\t", comment="#", index_col=0)
    val = pd.read_csv(run_dir / "predictions_val.tsv", sep="\t", index_col=0)
    observed = metadata.loc[val.index, "age"].to_numpy(float)
    predicted = val["age"].to_numpy(float)
    assert len(val) >= 20
    assert predicted.std() > 0.25 * observed.std()  # not a constant
    assert r_squared(predicted, observed) >= 0.4
