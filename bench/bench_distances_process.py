"""Whole-process cost of ``aam-ds distances`` against biocore's ``ssu``: what a user waits for.

Each command runs as a fresh child process (imports, reading the table and tree, pruning, compute,
writing the .h5), one thread (``--threads 1``, ``OMP_NUM_THREADS=1``); the figure is the child's
CPU seconds (user + system, from ``wait4``), median of ``--repeats``, and its peak RSS. Variants:

- ``aam-ds``: this checkout, torch engine (the parsed tree cached in ``--cache-dir``, warmed first);
- ``aam-ds --engine ssu``: this checkout driving ``ssu``;
- ``ssu``: the ``ssu`` binary alone;
- ``baseline``: ``aam-ds`` of another checkout (``--baseline /path/to/checkout``), for before / after.

After each metric the matrices of ``aam-ds`` and ``ssu`` are compared: "max diff vs ssu" is the largest
``|ours - ssu|`` over the whole matrix (both fp64), computed in a spawned process: a child's peak RSS starts
from its parent's at the fork, so this process stays small.

    python bench/bench_distances_process.py --baseline ../main --repeats 3
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import statistics
import subprocess
import sys
import tempfile
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"
DATASETS = {
    "Huang oral": ("huang_oral_2550/oral_2550.rarefied1000.biom", "huang_oral_2550/tree.nwk"),
    "ECAM": ("ecam/table.biom", "ecam/insertion-tree.nwk"),
}


def child_cost(command: list[str], checkout: Path | None) -> tuple[float, float]:
    """CPU seconds (user + system) and peak RSS (MiB) of ``command`` run as a child; ``checkout`` on PYTHONPATH."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    if checkout is not None:
        env["PYTHONPATH"] = str(checkout)
    child = subprocess.Popen(command, env=env, cwd=tempfile.gettempdir(), stdout=subprocess.DEVNULL)
    _, status, usage = os.wait4(child.pid, 0)
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"failed: {' '.join(command)}")
    return usage.ru_utime + usage.ru_stime, usage.ru_maxrss / 1024


def max_difference(ours: Path, theirs: Path) -> float:
    """Largest ``|ours - theirs|`` between two distance matrix files, matched by sample ID."""
    from aam_ds.distances.io import read_distance_matrix

    ids, matrix = read_distance_matrix(ours)
    their_ids, their_matrix = read_distance_matrix(theirs)
    position = {s: i for i, s in enumerate(ids)}
    rows = [position[s] for s in their_ids]
    return float(abs(matrix[rows][:, rows] - their_matrix).max())


def variants(table: Path, tree: Path, metric: str, folder: Path, baseline: Path | None) -> dict[str, tuple[list[str], Path | None]]:
    """Name -> (command, checkout) of every variant measured."""
    aam = [
        sys.executable,
        "-m",
        "aam_ds.cli",
        "distances",
        "--table",
        str(table),
        "--tree",
        str(tree),
        "--metric",
        metric,
        "--threads",
        "1",
        "--no-progress",
    ]
    torch_engine = ["--device", "cpu"]
    out = {
        "aam-ds": ([*aam, *torch_engine, "--cache-dir", str(folder / "cache"), "--out", str(folder / "ours.h5"), "--overwrite"], ROOT),
        "aam-ds --engine ssu": ([*aam, "--engine", "ssu", "--out", str(folder / "via-ssu.h5"), "--overwrite"], ROOT),
        "ssu": (
            [
                "ssu",
                "-i",
                str(table),
                "-t",
                str(tree),
                "-m",
                f"{metric}_fp64",
                "-o",
                str(folder / "s.h5"),
                "-r",
                "hdf5_fp64",
                "--pcoa",
                "0",
            ],
            None,
        ),
    }
    if baseline is not None:
        out["baseline"] = ([*aam, *torch_engine, "--out", str(folder / "baseline.h5")], baseline)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--metrics", nargs="+", default=["unweighted", "weighted_normalized"])
    parser.add_argument("--datasets", nargs="+", default=list(DATASETS), choices=list(DATASETS))
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--baseline", type=Path, default=None, help="another checkout of aam-ds to compare with")
    args = parser.parse_args()
    print(f"{'dataset':<12}{'metric':<22}{'variant':<22}{'CPU s (median)':>15}  runs{'':<20}{'peak MiB':>9}")
    with tempfile.TemporaryDirectory(prefix="aam-bench-process-") as tmp:
        folder = Path(tmp)
        for name in args.datasets:
            table, tree = (SHARED / part for part in DATASETS[name])
            for metric in args.metrics:
                commands = variants(table, tree, metric, folder, args.baseline)
                child_cost(*commands["aam-ds"])  # warms the parsed-tree cache
                for variant, (command, checkout) in commands.items():
                    runs = [child_cost(command, checkout) for _ in range(args.repeats)]
                    cpu = [round(c, 2) for c, _ in runs]
                    print(
                        f"{name:<12}{metric:<22}{variant:<22}{statistics.median(cpu):>15.2f}  {str(cpu):<24}"
                        f"{max(r for _, r in runs):>9.0f}",
                        flush=True,
                    )
                with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
                    diff = pool.submit(max_difference, folder / "ours.h5", folder / "s.h5").result()
                print(f"{name:<12}{metric:<22}max diff vs ssu: {diff:.1e}", flush=True)


if __name__ == "__main__":
    main()
