"""The shared real-data experiments, each one `aam-ds benchmark` call (baselines and AAM on the same folds).

    OMP_NUM_THREADS=2 python bench/bench_real_data.py --out-dir runs/bench_real [--budget standard] \
        [--experiments huang-grouped cfs-stratified]

Experiments (data in ../shared/data, never in the repository):
- huang-grouped: Huang et al. 2020 oral age, 5 folds grouped by a proxy subject (the Qiita study
  prefix of the sample ID plus the integer age: the table has no subject IDs and a few people gave
  hundreds of samples), written as a ``proxy_subject`` column of a derived metadata file;
- huang-random: the same table, random 5-fold (leaks subjects; comparable to the paper's figure);
- cfs-stratified: Giloteaux et al. 2016 ME/CFS, Subject (Patient / Control), stratified 5-fold.
Each report lands in ``<out-dir>/<experiment>/`` (report.md, report.json, predictions, plots);
the summary table of every experiment is printed and written to ``<out-dir>/summary.md``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from aam_ds.cli import main as aam_ds
from aam_ds.data.metadata import load_metadata
from aam_ds.errors import AamInputError
from aam_ds.io_utils import atomic_path, atomic_write_text

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
HUANG = "huang_oral_2550"
EXPERIMENTS = {
    "huang-grouped": [
        "--table",
        f"{HUANG}/oral_2550.rarefied1000.biom",
        "--tree",
        f"{HUANG}/tree.nwk",
        "--target",
        "age",
        "--split",
        "grouped",
        "--group-column",
        "proxy_subject",
        "--max-seq-len",
        "100",
    ],
    "huang-random": [
        "--table",
        f"{HUANG}/oral_2550.rarefied1000.biom",
        "--tree",
        f"{HUANG}/tree.nwk",
        "--target",
        "age",
        "--split",
        "random",
        "--max-seq-len",
        "100",
    ],
    "cfs-stratified": [
        "--table",
        "cfs/table.biom",
        "--tree",
        "cfs/tree.nwk",
        "--metadata",
        "cfs/metadata.tsv",
        "--target",
        "Subject",
        "--split",
        "stratified",
        "--positive-class",
        "Patient",
        "--max-seq-len",
        "150",
    ],
}


def huang_proxy_groups(sample_ids: Sequence[str], ages: Sequence[float]) -> np.ndarray:
    """Proxy subject of each Huang et al. oral sample, ``object [N]`` of ``"<study>_<age>"``.

    The Huang tables carry no subject IDs, and a few people gave hundreds of samples each; the
    Qiita study prefix of the sample ID (the part before the first '.') together with the integer
    (truncated) age stands in for the subject, so that grouped folds do not leak a person.
    """
    ages = np.asarray(ages, dtype=np.float64)
    if not np.isfinite(ages).all():
        raise AamInputError("age", "some ages are missing", "the proxy subject needs every sample's age")
    return np.array([f"{sid.split('.')[0]}_{int(age)}" for sid, age in zip(sample_ids, ages)], dtype=object)


def huang_metadata(data: Path, out: Path) -> Path:
    """Huang's metadata with a ``proxy_subject`` column (Qiita study prefix of the sample ID + integer age,
    :func:`huang_proxy_groups`), for ``--split grouped --group-column proxy_subject``."""
    metadata = load_metadata(data / HUANG / "oral_2550_map.txt")
    ages = pd.to_numeric(metadata["age"])
    metadata = metadata.assign(proxy_subject=huang_proxy_groups(metadata.index, ages))
    path = out / "huang_metadata_with_proxy_subject.tsv"
    out.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        metadata.rename_axis("sample-id").to_csv(tmp, sep="\t")
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out-dir", type=Path, default=Path("runs/bench_real"))
    parser.add_argument("--data-dir", type=Path, default=DATA, help="the shared real-data folder")
    parser.add_argument("--experiments", nargs="+", choices=list(EXPERIMENTS), default=["huang-grouped", "cfs-stratified"])
    parser.add_argument("--budget", default="standard", help="quick, standard, full or a recipe YAML")
    parser.add_argument("--seed", type=int, default=0)
    args, passed_on = parser.parse_known_args(argv)  # other options go to every aam-ds benchmark call (e.g. --pretrained)
    if not args.data_dir.is_dir():
        print(f"real data folder {args.data_dir} is absent; nothing to benchmark", file=sys.stderr)
        return 1
    lines = []
    for name in args.experiments:
        argv_ = [
            str(args.data_dir / a) if i and EXPERIMENTS[name][i - 1] in ("--table", "--tree", "--metadata") else a
            for i, a in enumerate(EXPERIMENTS[name])
        ]
        if name.startswith("huang"):
            argv_ += ["--metadata", str(huang_metadata(args.data_dir, args.out_dir))]
        out = args.out_dir / name
        code = aam_ds(
            [
                "benchmark",
                *argv_,
                "--budget",
                args.budget,
                "--seed",
                str(args.seed),
                "--out-dir",
                str(out),
                "--set",
                f"data.cache_dir={args.out_dir / 'cache'}",
                *passed_on,
            ]
        )
        if code:
            return code
        report = json.loads((out / "report.json").read_text())
        v = report["verdict"]
        lines.append(
            f"| {name} | {v['metric']} | {v['aam_value']:.3f} | {report['models']['random forest']['pooled'][v['metric']]:.3f} | "
            f"{report['models']['linear (CLR)']['pooled'][v['metric']]:.3f} | "
            f"{report['models']['AAM linear probe']['pooled'][v['metric']]:.3f} | {report['wall_time_s']:.0f} s |"
        )
    table = (
        "\n".join(
            [
                "| experiment | metric | AAM | random forest | linear (CLR) | AAM linear probe | wall time |",
                "|---|---|---:|---:|---:|---:|---:|",
                *lines,
            ]
        )
        + "\n"
    )
    atomic_write_text(args.out_dir / "summary.md", table)
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
