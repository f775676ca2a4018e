"""Our UniFrac against biocore's unifrac (Debian python3-unifrac via /usr/bin/python3) and `ssu`.

Bounds: max |ours - unifrac| <= 1e-6 in fp64 and <= 1e-4 in fp32 (ours in fp32 vs unifrac fp64).
Oracle matrices are computed once per session. Huang oral is compared on 500 of its 2,537 samples
(UniFrac between two samples does not depend on the others; the full matrix is compared in
bench/bench_distances.py).
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch

from aam_ds.data.table import load_table
from aam_ds.distances import cli
from aam_ds.distances.full import full_matrix
from aam_ds.distances.io import read_distance_matrix
from aam_ds.distances.metric import UNIFRAC_METRICS, build_metric
from aam_ds.distances.tree import read_tree

ORACLE = Path(__file__).with_name("unifrac_oracle.py")
SYSTEM_PYTHON = "/usr/bin/python3"
ALPHA = 0.5
BOUNDS = {torch.float64: 1e-6, torch.float32: 1e-4}


def _unifrac_importable() -> bool:
    try:
        return subprocess.run([SYSTEM_PYTHON, "-c", "import unifrac, biom"], capture_output=True).returncode == 0
    except OSError:
        return False


pytestmark = pytest.mark.skipif(
    not _unifrac_importable(),
    reason=f"{SYSTEM_PYTHON} cannot import unifrac (install Debian's python3-unifrac to run the reference tests)",
)

DATASETS = {  # name -> (table, tree, sample stride or None for all samples)
    "crawford": ("small/crawford.biom", "small/crawford.tre", None),
    "test-small": ("small/test-small.biom", "small/test-small-tree.nwk", None),
    "ecam": ("ecam/table.biom", "ecam/insertion-tree.nwk", None),
    "huang": ("huang_oral_2550/oral_2550.rarefied1000.biom", "huang_oral_2550/tree.nwk", 5),
}


@pytest.fixture(scope="session")
def oracle(tmp_path_factory):
    """``oracle(table, tree, metric, ids=None) -> (ids, matrix)`` from unifrac, cached per session."""
    folder = tmp_path_factory.mktemp("unifrac-oracle")
    cache: dict[tuple, tuple[list[str], np.ndarray]] = {}

    def compute(table: Path, tree: Path, metric: str, ids: list[str] | None = None):
        key = (str(table), str(tree), metric, None if ids is None else tuple(ids))
        if key not in cache:
            out = folder / f"{len(cache)}.npz"
            command = [SYSTEM_PYTHON, str(ORACLE), "compute", str(table), str(tree), metric, str(ALPHA), str(out)]
            if ids is not None:
                (folder / "ids.txt").write_text("\n".join(ids) + "\n")
                command.append(str(folder / "ids.txt"))
            subprocess.run(command, check=True, capture_output=True, timeout=900)
            data = np.load(out)
            cache[key] = ([str(i) for i in data["ids"]], data["matrix"])
        return cache[key]

    return compute


@pytest.fixture(scope="module")
def loaded(shared_data):
    """name -> (table restricted as in DATASETS, tree, table path, tree path), loaded once."""
    out = {}

    def get(name):
        if name not in out:
            table_name, tree_name, stride = DATASETS[name]
            table = load_table(shared_data / table_name)
            if stride:
                table = table.take_samples(np.arange(0, table.shape[0], stride))
            out[name] = (table, read_tree(shared_data / tree_name), shared_data / table_name, shared_data / tree_name)
        return out[name]

    return get


def compare(loaded, oracle, name: str, metric: str, dtype: torch.dtype) -> float:
    table, tree, table_path, tree_path = loaded(name)
    subset = None if DATASETS[name][2] is None else table.sample_ids
    ids, expected = oracle(table_path, tree_path, metric, subset)
    ours = full_matrix(build_metric(metric, table, tree, alpha=ALPHA, dtype=dtype), block_size=256, progress=False)
    position = {s: i for i, s in enumerate(table.sample_ids)}
    rows = [position[s] for s in ids]
    return float(np.abs(ours[np.ix_(rows, rows)] - expected).max())


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["fp64", "fp32"])
@pytest.mark.parametrize("metric", UNIFRAC_METRICS)
@pytest.mark.parametrize("name", ["crawford", "test-small"])
def test_small_datasets_match_unifrac(loaded, oracle, name, metric, dtype):
    assert compare(loaded, oracle, name, metric, dtype) <= BOUNDS[dtype]


@pytest.mark.slow
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["fp64", "fp32"])
@pytest.mark.parametrize("metric", UNIFRAC_METRICS)
@pytest.mark.parametrize("name", ["ecam", "huang"])
def test_large_datasets_match_unifrac(loaded, oracle, name, metric, dtype):
    assert compare(loaded, oracle, name, metric, dtype) <= BOUNDS[dtype]


def test_our_hdf5_reads_in_unifrac_and_matches(shared_data, tmp_path):
    out = tmp_path / "ours.h5"
    small = shared_data / "small"
    assert (
        cli.main(
            [
                "--table",
                str(small / "crawford.biom"),
                "--tree",
                str(small / "crawford.tre"),
                "--metric",
                "weighted_normalized",
                "--out",
                str(out),
                "--device",
                "cpu",
                "--no-progress",
            ]
        )
        == 0
    )
    read_back = tmp_path / "read.npz"
    subprocess.run([SYSTEM_PYTHON, str(ORACLE), "read-h5", str(out), str(read_back)], check=True, capture_output=True)
    theirs = np.load(read_back)
    ids, ours = read_distance_matrix(out)
    assert [str(i) for i in theirs["ids"]] == ids
    assert np.array_equal(theirs["matrix"], ours)


@pytest.mark.skipif(shutil.which("ssu") is None, reason="biocore's ssu binary is not on PATH (Debian unifrac-tools)")
@pytest.mark.parametrize("metric", ["unweighted", "generalized"])
def test_ssu_engine_agrees_with_torch_engine_from_qza_inputs(shared_data, tmp_path, make_qza, metric):
    small = shared_data / "small"
    table_qza = make_qza(tmp_path / "table.qza", "FeatureTable[Frequency]", "feature-table.biom", (small / "test-small.biom").read_bytes())
    tree_qza = make_qza(tmp_path / "tree.qza", "Phylogeny[Rooted]", "tree.nwk", (small / "test-small-tree.nwk").read_bytes())
    common = ["--table", str(table_qza), "--tree", str(tree_qza), "--metric", metric, "--alpha", str(ALPHA), "--no-progress"]
    assert cli.main(common + ["--engine", "ssu", "--out", str(tmp_path / "ssu.tsv"), "--threads", "1"]) == 0
    assert cli.main(common + ["--engine", "torch", "--out", str(tmp_path / "torch.npy"), "--device", "cpu"]) == 0
    ssu_ids, ssu = read_distance_matrix(tmp_path / "ssu.tsv")
    torch_ids, ours = read_distance_matrix(tmp_path / "torch.npy")
    position = {s: i for i, s in enumerate(torch_ids)}
    rows = [position[s] for s in ssu_ids]
    assert sorted(ssu_ids) == sorted(torch_ids)
    assert np.abs(ours[np.ix_(rows, rows)] - ssu).max() <= 1e-6
