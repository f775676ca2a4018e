"""A full unweighted UniFrac matrix of many samples written to HDF5 block by block: peak RSS, time, exactness.

Generates a table of ``--samples`` samples over a ``--tips``-tip random coalescent tree (each sample
draws 60-200 ASVs from one of 50 communities plus a few from anywhere), runs
``aam-ds distances --metric unweighted --out F.h5`` as a child process (the whole command: imports,
reading, pruning, compute, writing) and reports its peak RSS and wall / CPU time. Then it spot-checks
``--checks`` random blocks of the file against the in-memory path (``PairwiseMetric.block``).

With ``--kill-after-blocks K`` the child stops itself after ``K`` blocks (the resumability test hook),
which measures the peak RSS of a matrix too large to finish on a small machine: memory is flat
after the first block. ``--resume`` then finishes the same file.

    python bench/bench_blockfile.py --samples 50000 --threads 2
    python bench/bench_blockfile.py --samples 10000 --threads 2
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import biom
import h5py
import numpy as np
import scipy.sparse as sp
import torch

from aam_ds.data.synthetic import _newick, _random_tree
from aam_ds.data.table import load_table
from aam_ds.distances.blockfile import KILL_AFTER_BLOCKS_ENV, partial_path
from aam_ds.distances.metric import build_metric
from aam_ds.distances.tree import read_tree
from aam_ds.io_utils import atomic_write_text


def generate(folder: Path, n_samples: int, n_tips: int, seed: int = 0) -> tuple[Path, Path]:
    """Write ``table.biom`` (``n_samples`` x observed ASVs) and ``tree.nwk`` into ``folder``."""
    rng = np.random.default_rng(seed)
    parent, length = _random_tree(n_tips, rng)
    names = [f"asv{i}" for i in range(n_tips)]
    tree_path, table_path = folder / "tree.nwk", folder / "table.biom"
    atomic_write_text(tree_path, _newick(parent, length, names))
    communities = [rng.choice(n_tips, size=400, replace=False) for _ in range(50)]
    rows, cols, vals = [], [], []
    for s in range(n_samples):
        pool = communities[rng.integers(len(communities))]
        kept = np.unique(np.concatenate([rng.choice(pool, size=rng.integers(60, 201), replace=False), rng.integers(0, n_tips, size=5)]))
        counts = rng.multinomial(1000, rng.dirichlet(np.full(len(kept), 0.3)))
        rows.append(np.full(len(kept), s)), cols.append(kept), vals.append(counts)
    matrix = sp.csr_matrix((np.concatenate(vals), (np.concatenate(rows), np.concatenate(cols))), shape=(n_samples, n_tips))
    matrix.eliminate_zeros()
    observed = np.flatnonzero(matrix.getnnz(axis=0))
    table = biom.Table(matrix[:, observed].T.tocsr(), [names[i] for i in observed], [f"s{s}" for s in range(n_samples)])
    with h5py.File(table_path, "w") as f:
        table.to_hdf5(f, "bench_blockfile")
    return table_path, tree_path


def run_distances(table: Path, tree: Path, out: Path, threads: int, block_size: int, kill_after: int) -> dict:
    """Run ``aam-ds distances`` as a child; its wall seconds, CPU seconds, peak RSS (GiB) and exit status."""
    command = [
        sys.executable,
        "-m",
        "aam_ds.cli",
        "distances",
        "--table",
        str(table),
        "--tree",
        str(tree),
        "--metric",
        "unweighted",
        "--out",
        str(out),
        "--overwrite",
        "--threads",
        str(threads),
        "--device",
        "cpu",
        "--block-size",
        str(block_size),
        "--no-progress",
    ]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), KILL_AFTER_BLOCKS_ENV: str(kill_after)}
    start = time.perf_counter()
    child = subprocess.Popen(command, env=env)
    _, status, usage = os.wait4(child.pid, 0)
    child.returncode = os.waitstatus_to_exitcode(status)
    return {
        "wall_s": time.perf_counter() - start,
        "cpu_s": usage.ru_utime + usage.ru_stime,
        "peak_rss_gib": usage.ru_maxrss / 2**20,
        "status": child.returncode,
    }


def spot_check(table: Path, tree: Path, out: Path, block_size: int, checks: int) -> float:
    """Max |file - in-memory| over ``checks`` random finished blocks (rows of the file that are written)."""
    metric = build_metric("unweighted", load_table(table), read_tree(tree))
    n = len(metric.sample_ids)
    path = out if out.exists() else partial_path(out)
    rng = np.random.default_rng(1)
    worst = 0.0
    with h5py.File(path, "r") as f:
        starts = list(range(0, n, block_size))
        pairs = [(i, j) for a, i in enumerate(starts) for j in starts[a:]]
        done = np.flatnonzero(f["blocks_done"][:])
        for k in rng.choice(done, size=min(checks, len(done)), replace=False):
            i, j = pairs[k]
            rows_i, rows_j = torch.arange(i, min(i + block_size, n)), torch.arange(j, min(j + block_size, n))
            expected = (metric.block(rows_i) if i == j else metric.block(rows_i, rows_j)).double().numpy()
            worst = max(worst, float(np.abs(f["matrix"][i : i + len(rows_i), j : j + len(rows_j)] - expected).max()))
    return worst


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--samples", type=int, default=50_000)
    parser.add_argument("--tips", type=int, default=5_000)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--block-size", type=int, default=1024)
    parser.add_argument("--kill-after-blocks", type=int, default=0, help="stop the child after this many blocks (0: finish)")
    parser.add_argument("--checks", type=int, default=4, help="blocks spot-checked against the in-memory path")
    parser.add_argument("--folder", type=Path, default=None, help="keep the data and matrix here (default: a temp folder)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="aam-bench-blockfile-") as tmp:
        folder = args.folder or Path(tmp)
        folder.mkdir(parents=True, exist_ok=True)
        start = time.perf_counter()
        table, tree = generate(folder, args.samples, args.tips)
        print(f"generated {args.samples} samples x {args.tips}-tip tree in {time.perf_counter() - start:.1f} s")
        out = folder / "unweighted.h5"
        result = run_distances(table, tree, out, args.threads, args.block_size, args.kill_after_blocks)
        n_blocks = len(range(0, args.samples, args.block_size))
        print(
            f"aam-ds distances, {args.samples} samples, {n_blocks * (n_blocks + 1) // 2} blocks of {args.block_size}, "
            f"{args.threads} threads: {result}"
        )
        print(
            f"spot-check: max |file - in-memory| over {args.checks} blocks = {spot_check(table, tree, out, args.block_size, args.checks):.3g}"
        )


if __name__ == "__main__":
    main()
