"""``aam-ds distances --out F.h5``: the matrix is written block by block and a killed run continues."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import h5py
import numpy as np
import pytest

from aam_ds.data.table import load_table
from aam_ds.distances.blockfile import KILL_AFTER_BLOCKS_ENV, partial_path
from aam_ds.distances.full import full_matrix
from aam_ds.distances.io import read_distance_matrix
from aam_ds.distances.metric import build_metric
from aam_ds.distances.tree import read_tree


def _distances(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "aam_ds.cli", "distances", *args]
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)


def test_killed_run_continues_and_equals_the_in_memory_matrix(demo_paths, tmp_path):
    out = tmp_path / "unweighted.h5"
    args = [
        "--table",
        str(demo_paths.table),
        "--tree",
        str(demo_paths.tree),
        "--metric",
        "unweighted",
        "--out",
        str(out),
        "--block-size",
        "64",
        "--no-progress",
        "--threads",
        "1",
        "--device",
        "cpu",
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1", KILL_AFTER_BLOCKS_ENV: "6"}
    killed = _distances(args, env)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    assert not out.exists()
    with h5py.File(partial_path(out), "r") as f:  # 300 samples in blocks of 64: 5 x 6 / 2 = 15 upper-triangle blocks
        assert f["blocks_done"][:].tolist() == [1] * 6 + [0] * 9

    env[KILL_AFTER_BLOCKS_ENV] = "0"
    resumed = _distances(args, env)
    assert resumed.returncode == 0, resumed.stderr
    assert "6 of 15 blocks were already written" in resumed.stdout
    assert not partial_path(out).exists()

    table, tree = load_table(demo_paths.table), read_tree(demo_paths.tree)
    expected = full_matrix(build_metric("unweighted", table, tree), block_size=64, progress=False)
    ids, got = read_distance_matrix(out)
    assert ids == list(table.sample_ids)
    assert np.abs(got - expected).max() <= 1e-12  # unwritten or misplaced blocks would be off by far more


@pytest.mark.slow  # two fresh interpreters, one importing torch: over 20 s on a loaded 2-core machine
def test_partial_file_of_other_inputs_is_started_over(demo_paths, tmp_path):
    out = tmp_path / "d.h5"
    base = [
        "--table",
        str(demo_paths.table),
        "--tree",
        str(demo_paths.tree),
        "--out",
        str(out),
        "--block-size",
        "128",
        "--no-progress",
        "--threads",
        "1",
        "--device",
        "cpu",
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1", KILL_AFTER_BLOCKS_ENV: "2"}
    assert _distances([*base, "--metric", "weighted_normalized"], env).returncode == -signal.SIGKILL
    env[KILL_AFTER_BLOCKS_ENV] = "0"
    rerun = _distances([*base, "--metric", "unweighted"], env)
    assert rerun.returncode == 0, rerun.stderr
    assert "started with other inputs" in rerun.stderr and "already written" not in rerun.stdout
    table, tree = load_table(demo_paths.table), read_tree(demo_paths.tree)
    expected = full_matrix(build_metric("unweighted", table, tree), block_size=128, progress=False)
    assert np.abs(read_distance_matrix(out)[1] - expected).max() <= 1e-12
