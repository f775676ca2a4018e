"""Random-forest baselines on real data, on folds saved for the AAM runs to reuse.

    python bench/bench_real_data.py --out-dir runs/bench_real [--trees 500] [--n-jobs 1]

Experiments (each one `aam-ds rf-baseline` run; its folds.tsv, rf_predictions.tsv, metrics.json
and plots land in <out-dir>/<experiment>/):
- huang-grouped: Huang et al. oral age, 5-fold CV grouped by proxy subject (Qiita study prefix of
  the sample ID + integer age), the honest split;
- huang-random: the same data, plain random 5-fold CV (leaks subjects; comparable to the paper);
- cfs-stratified: Giloteaux et al. ME/CFS Patient vs Control, 5-fold CV stratified on Subject.
The summary (pooled out-of-fold metrics, mean +- std over folds, the data README's reference
figures) is printed and written to <out-dir>/summary.json and summary.md.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from aam_ds.evaluation.cli import add_rf_arguments, run_rf_baseline
from aam_ds.evaluation.rf_baseline import fold_spread
from aam_ds.io_utils import atomic_write_json, atomic_write_text

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"

# name -> (rf-baseline arguments relative to the data folder, headline metrics, the README's RF reference)
EXPERIMENTS = {
    "huang-grouped": (
        ["--table", "huang_oral_2550/oral_2550.rarefied1000.biom", "--metadata", "huang_oral_2550/oral_2550_map.txt",
         "--target", "age", "--split", "grouped", "--group-by", "huang-proxy"],
        ("mae",), {"mae": 6.49},
    ),
    "huang-random": (
        ["--table", "huang_oral_2550/oral_2550.rarefied1000.biom", "--metadata", "huang_oral_2550/oral_2550_map.txt",
         "--target", "age", "--split", "random"],
        ("mae",), {"mae": 4.84},
    ),
    "cfs-stratified": (
        ["--table", "cfs/table.biom", "--metadata", "cfs/metadata.tsv", "--target", "Subject", "--split", "stratified",
         "--positive-class", "Patient"],
        ("accuracy", "auc"), {"accuracy": 0.70, "auc": 0.79},
    ),
}  # fmt: skip
_PATH_FLAGS = ("--table", "--metadata")


def run_experiment(name: str, data: Path, out_dir: Path, trees: int, n_jobs: int, seed: int) -> dict:
    argv, headline, reference = EXPERIMENTS[name]
    argv = [str(data / a) if i and argv[i - 1] in _PATH_FLAGS else a for i, a in enumerate(argv)]
    argv += ["--folds", "5", "--trees", str(trees), "--n-jobs", str(n_jobs), "--seed", str(seed), "--out-dir", str(out_dir / name)]
    parser = argparse.ArgumentParser()
    add_rf_arguments(parser)
    start = time.perf_counter()
    run_rf_baseline(parser.parse_args(argv))
    seconds = time.perf_counter() - start
    report = json.loads((out_dir / name / "metrics.json").read_text())
    spread = fold_spread(report["fold_metrics"])
    rows = {
        metric: {"pooled": report["metrics"][metric], "fold_mean": spread[metric][0], "fold_std": spread[metric][1], "reference": reference[metric]}
        for metric in headline
    }  # fmt: skip
    return {"metrics": rows, "n": report["metrics"]["n"], "seconds": round(seconds, 1), "folds": str(out_dir / name / "folds.tsv")}


def markdown(results: dict) -> str:
    lines = [
        "| experiment | metric | RF pooled (this run) | RF fold mean ± std | RF reference (data README) | AAM |",
        "|---|---|---|---|---|---|",
    ]
    for name, result in results.items():
        for metric, row in result["metrics"].items():
            lines.append(
                f"| {name} (n={result['n']}) | {metric} | {row['pooled']:.3f} | {row['fold_mean']:.3f} ± {row['fold_std']:.3f} "
                f"| {row['reference']:.2f} | pending |"
            )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out-dir", type=Path, default=Path("runs/bench_real"))
    parser.add_argument("--data-dir", type=Path, default=DATA, help="the shared real-data folder")
    parser.add_argument("--experiments", nargs="+", choices=list(EXPERIMENTS), default=list(EXPERIMENTS))
    parser.add_argument("--trees", type=int, default=500)
    parser.add_argument("--n-jobs", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if not args.data_dir.is_dir():
        print(f"real data folder {args.data_dir} is absent; nothing to benchmark", file=sys.stderr)
        return 1
    results = {name: run_experiment(name, args.data_dir, args.out_dir, args.trees, args.n_jobs, args.seed) for name in args.experiments}
    atomic_write_json(args.out_dir / "summary.json", results)
    table = markdown(results)
    atomic_write_text(args.out_dir / "summary.md", table)
    print(table)
    for name, result in results.items():
        print(f"{name}: {result['seconds']} s, folds for AAM: {result['folds']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
