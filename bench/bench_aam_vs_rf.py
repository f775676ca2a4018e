"""AAM (pretrain + 5-fold cross-validated fine-tuning) vs the random forest, on the RF's own folds.

    OMP_NUM_THREADS=1 python bench/bench_aam_vs_rf.py --out-dir runs/bench_aam [--rf-dir runs/bench_real]

Experiments (the same as bench/bench_real_data.py):
- huang-grouped: Huang et al. oral age, 5 folds grouped by proxy subject (Qiita study prefix of
  the sample ID + integer age); validation inside each training part is grouped by the same proxy
  (a derived metadata file with a ``proxy_subject`` column is written to the output folder);
- cfs-stratified: Giloteaux et al. ME/CFS Subject (Patient / Control), 5 folds stratified on Subject.

The folds are ``<rf-dir>/<experiment>/folds.tsv`` when bench_real_data.py has written them, else
they are drawn here by the same function, arguments and seed as `aam-ds rf-baseline`
(:func:`aam_ds.evaluation.folds.draw_folds`, seed 0), i.e. the same folds.

Per experiment: one pretraining run (UniFrac pairwise + masked nucleotides) on all samples of the
table; it is label-free, so no target leaks, but the held-out samples' sequences and UniFrac
distances are seen (transductive pretraining); then `aam-ds cv` fine-tunes the export once per
fold (validation carved from the training part, best validation metric exported, early stopping).
The RF figures are read from ``<rf-dir>/<experiment>/metrics.json`` when present, else the
recorded ones of docs/benchmarks.md are shown. Everything runs on CPU, one process.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from aam_ds.data.metadata import align_metadata, load_metadata
from aam_ds.data.table import load_table
from aam_ds.engine import crossval, trainer
from aam_ds.evaluation.folds import draw_folds, huang_proxy_groups, write_folds
from aam_ds.evaluation.rf_baseline import fold_spread
from aam_ds.io_utils import atomic_path, atomic_write_json, atomic_write_text
from aam_ds.spec import load_spec

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"

# RF pooled out-of-fold figures recorded in docs/benchmarks.md (bench/bench_real_data.py, 500 trees, seed 0)
RF_RECORDED = {"huang-grouped": {"mae": 6.496}, "cfs-stratified": {"accuracy": 0.701, "auc": 0.787}}

EXPERIMENTS = {
    "huang-grouped": dict(
        table="huang_oral_2550/oral_2550.rarefied1000.biom", tree="huang_oral_2550/tree.nwk",
        metadata="huang_oral_2550/oral_2550_map.txt", target="age", task="regression", max_seq_len=100,
        best_metric="mae", headline=("mae",), pretrain_steps=60, finetune_steps=60, eval_every=15,
    ),
    "cfs-stratified": dict(
        table="cfs/table.biom", tree="cfs/tree.nwk", metadata="cfs/metadata.tsv", target="Subject",
        task="classification", max_seq_len=150, best_metric="auc", headline=("accuracy", "auc"), pretrain_steps=40,
        finetune_steps=30, eval_every=5,
    ),
}  # fmt: skip


def prepare_folds(name: str, exp: dict, data: Path, out: Path, rf_dir: Path | None) -> tuple[Path, Path, str | None]:
    """(folds file, metadata file, group column for validation): the RF's folds, or the same ones drawn here."""
    table = load_table(data / exp["table"])
    metadata = align_metadata(load_metadata(data / exp["metadata"]), table.sample_ids, str(data / exp["table"]))
    metadata_path, group_column = data / exp["metadata"], None
    if name == "huang-grouped":
        metadata = metadata.assign(proxy_subject=huang_proxy_groups(metadata.index, metadata["age"].astype(float)))
        metadata_path, group_column = out / "metadata_with_proxy_subject.tsv", "proxy_subject"
        with atomic_path(metadata_path) as tmp:
            metadata.rename_axis("sample-id").to_csv(tmp, sep="\t")
    rf_folds = rf_dir / name / "folds.tsv" if rf_dir else None
    if rf_folds and rf_folds.is_file():
        return rf_folds, metadata_path, group_column
    if name == "huang-grouped":
        held_out = draw_folds(metadata, 5, "grouped", 0, None, huang_proxy_ages=metadata["age"].to_numpy(dtype=float))
    else:
        held_out = draw_folds(metadata, 5, "stratified", 0, exp["target"])
    return write_folds(out / "folds.tsv", table.sample_ids, held_out), metadata_path, group_column


def common_settings(exp: dict, data: Path, args: argparse.Namespace) -> dict:
    return {
        "model.preset": args.preset, "data.table": data / exp["table"], "data.tree": data / exp["tree"],
        "data.max_seq_len": exp["max_seq_len"], "data.max_asvs": args.max_asvs, "data.cache_dir": args.out_dir / "cache",
        "parallel.micro_batch_size": args.batch, "parallel.zero_stage": 0, "tracking.rich": "false", "schedule.log_every": 25,
        "tracking.overwrite": "true",  # a re-run of the benchmark replaces its previous runs
    }  # fmt: skip


def spec_of(settings: dict):
    return load_spec(None, [f"{k}={v}" for k, v in settings.items()])


def run_experiment(name: str, data: Path, args: argparse.Namespace) -> dict:
    exp = EXPERIMENTS[name]
    out = args.out_dir / name
    folds, metadata, group_column = prepare_folds(name, exp, data, out, args.rf_dir)
    base = common_settings(exp, data, args)
    pretrain_steps, finetune_steps = (max(1, round(exp[k] * args.steps_scale)) for k in ("pretrain_steps", "finetune_steps"))
    start = time.perf_counter()
    trainer.pretrain(spec_of({**base, "tracking.run_dir": out / "pretrain", "schedule.steps": pretrain_steps,
                              "schedule.warmup_steps": pretrain_steps // 10, "schedule.eval_every": pretrain_steps,
                              "optim.lr": 2e-3, "data.split.val_fraction": 0.05}))
    pretrain_s = time.perf_counter() - start
    split = ({"data.split.kind": "grouped", "data.split.group_column": group_column} if group_column
             else {"data.split.kind": "stratified", "data.split.column": exp["target"]})
    cv = crossval.cross_validate(spec_of({
        **base, **split, "tracking.run_dir": out / "cv", "data.metadata": metadata, "data.targets": f"[{exp['target']}]",
        "data.split.folds_file": folds, "data.split.val_fraction": 0.1, "model.pretrained": out / "pretrain" / "model.pt",
        "loss.task": exp["task"], "loss.pairwise_weight": 0, "loss.nucleotide_weight": 0, "loss.class_weights": "true",
        "optim.lr": args.lr, "schedule.steps": finetune_steps, "schedule.warmup_steps": finetune_steps // 20,
        "schedule.eval_every": max(1, round(exp["eval_every"] * args.steps_scale)), "schedule.best_metric": exp["best_metric"],
        "schedule.early_stopping_patience": args.patience}))  # fmt: skip
    seconds = time.perf_counter() - start
    rf = rf_figures(name, args.rf_dir)
    spread = fold_spread(cv.fold_metrics)
    rows = {m: {"aam_pooled": cv.pooled[m], "aam_fold_mean": spread[m][0], "aam_fold_std": spread[m][1], "rf_pooled": rf[m]}
            for m in exp["headline"]}  # fmt: skip
    return {"metrics": rows, "n": cv.pooled["n"], "folds": str(folds), "pretrain_s": round(pretrain_s), "total_s": round(seconds),
            "oof_predictions": str(out / "cv" / crossval.OOF_NAME)}  # fmt: skip


def rf_figures(name: str, rf_dir: Path | None) -> dict[str, float]:
    report = rf_dir / name / "metrics.json" if rf_dir else None
    if report and report.is_file():
        return json.loads(report.read_text())["metrics"]
    return RF_RECORDED[name]


def markdown(results: dict) -> str:
    lines = ["| experiment | metric | AAM pooled | AAM fold mean ± std | RF pooled | wall time |", "|---|---|---|---|---|---|"]
    for name, result in results.items():
        for metric, row in result["metrics"].items():
            lines.append(f"| {name} (n={result['n']}) | {metric} | {row['aam_pooled']:.3f} | {row['aam_fold_mean']:.3f} ± "
                         f"{row['aam_fold_std']:.3f} | {row['rf_pooled']:.3f} | {result['total_s']} s |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out-dir", type=Path, default=Path("runs/bench_aam"))
    parser.add_argument("--data-dir", type=Path, default=DATA, help="the shared real-data folder")
    parser.add_argument("--rf-dir", type=Path, default=Path("runs/bench_real"), help="bench_real_data.py's --out-dir (folds, RF metrics)")
    parser.add_argument("--experiments", nargs="+", choices=list(EXPERIMENTS), default=list(EXPERIMENTS))
    parser.add_argument("--preset", default="tiny")
    parser.add_argument("--max-asvs", type=int, default=32, help="most abundant ASVs kept per sample")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--steps-scale", type=float, default=1.0,
                        help="multiplies each experiment's pretraining / fine-tuning steps and evaluation interval (the CPU time budget)")
    parser.add_argument("--patience", type=int, default=3, help="evaluations without a better validation metric before stopping")
    parser.add_argument("--lr", type=float, default=1e-3)
    args = parser.parse_args(argv)
    if not args.data_dir.is_dir():
        print(f"real data folder {args.data_dir} is absent; nothing to benchmark", file=sys.stderr)
        return 1
    results = {name: run_experiment(name, args.data_dir, args) for name in args.experiments}
    atomic_write_json(args.out_dir / "summary.json", {"settings": {k: str(v) for k, v in vars(args).items()}, "results": results})
    table = markdown(results)
    atomic_write_text(args.out_dir / "summary.md", table)
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
