"""Large trees: parse a generated ``--tips``-tip Newick tree and prune it to a table's ASVs, as ``aam-ds distances`` does.

Writes a random rooted binary tree (tips ``asv0 .. asvN-1``, branch lengths 0.001-0.1, about 30
bytes per tip: 2,000,000 tips is ~60 MB, the size class of Greengenes2 backbones), then times in
this process, median of ``--repeats``: ``read_tree`` (file -> arrays) and the branch abundances of a
table of ``--samples`` samples over ``--asvs`` of its tips (pruning, chain merging). Prints the peak
RSS of the process.

    python bench/bench_tree.py --tips 2000000
"""

from __future__ import annotations

import argparse
import resource
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import scipy.sparse as sp

from aam_ds.data.table import FeatureTable
from aam_ds.distances.branches import build_branch_abundances
from aam_ds.distances.tree import read_tree


def write_random_tree(path: Path, n_tips: int, seed: int = 0) -> None:
    """A random rooted binary Newick tree: each round joins random adjacent pairs of the current clades."""
    rng = np.random.default_rng(seed)
    clades = [f"asv{i}" for i in rng.permutation(n_tips)]
    while len(clades) > 1:
        lengths = rng.uniform(0.001, 0.1, size=len(clades))
        join = rng.random(len(clades) // 2) < 0.7  # pair (2k, 2k+1) joins this round
        joined = []
        for k, do in enumerate(join):
            a, b = 2 * k, 2 * k + 1
            if do:
                joined.append(f"({clades[a]}:{lengths[a]:.4f},{clades[b]}:{lengths[b]:.4f})")
            else:
                joined += [clades[a], clades[b]]
        if len(clades) % 2:
            joined.append(clades[-1])
        if len(joined) == len(clades):  # nothing joined by chance: join the first pair
            joined = [f"({joined[0]}:0.01,{joined[1]}:0.01)", *joined[2:]]
        clades = joined
    path.write_text(clades[0] + ";\n")


def table_over(n_tips: int, n_samples: int, n_asvs: int, seed: int = 0) -> FeatureTable:
    """``n_samples`` samples of 100 reads spread over 50 of ``n_asvs`` random tips each."""
    rng = np.random.default_rng(seed)
    asvs = rng.choice(n_tips, size=n_asvs, replace=False)
    rows = np.repeat(np.arange(n_samples), 50)
    cols = np.concatenate([rng.choice(n_asvs, size=50, replace=False) for _ in range(n_samples)])
    counts = sp.csr_matrix((np.full(len(rows), 2.0), (rows, cols)), shape=(n_samples, n_asvs))
    return FeatureTable([f"s{i}" for i in range(n_samples)], [f"asv{i}" for i in asvs], counts, "<generated>")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tips", type=int, default=2_000_000)
    parser.add_argument("--samples", type=int, default=1_000)
    parser.add_argument("--asvs", type=int, default=20_000)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="aam-bench-tree-") as tmp:
        path = Path(tmp) / "tree.nwk"
        start = time.perf_counter()
        write_random_tree(path, args.tips)
        print(f"generated {args.tips:,} tips ({path.stat().st_size / 2**20:.0f} MiB) in {time.perf_counter() - start:.1f} s")
        table = table_over(args.tips, args.samples, args.asvs)
        parse, prune = [], []
        for _ in range(args.repeats):
            start = time.process_time()
            tree = read_tree(path)
            parse.append(time.process_time() - start)
            start = time.process_time()
            build_branch_abundances(table, tree)
            prune.append(time.process_time() - start)
            del tree
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    print(
        f"read_tree: median {statistics.median(parse):.2f} CPU s {[round(t, 2) for t in parse]}; "
        f"prune to {args.asvs:,} ASVs x {args.samples:,} samples: median {statistics.median(prune):.2f} CPU s; "
        f"peak RSS {peak:.2f} GiB"
    )


if __name__ == "__main__":
    main()
