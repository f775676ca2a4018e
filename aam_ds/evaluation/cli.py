"""Argument parsers and runners of ``aam-ds evaluate`` and ``aam-ds rf-baseline`` (wired in aam_ds/cli.py)."""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pandas as pd

from aam_ds.errors import AamInputError
from aam_ds.spec.flags import SPLIT_KINDS, TASKS, add_spec_arguments, fill_from_spec, spec_flag_help

# rf-baseline flag dest -> (run-spec field, default without a spec); --target is data.targets' only column
RF_SPEC_FIELDS = {
    "table": ("data.table", None),
    "metadata": ("data.metadata", None),
    "task": ("loss.task", None),
    "folds": ("data.split.folds", 5),
    "split": ("data.split.kind", None),
    "group_column": ("data.split.group_column", None),
    "stratify_column": ("data.split.column", None),
    "folds_file": ("data.split.folds_file", None),
    "seed": ("data.split.seed", 0),
}


# --------------------------------------------------------------------------------------------
# evaluate


def add_evaluate_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the options of ``aam-ds evaluate`` to ``parser``."""
    parser.add_argument(
        "--predictions", type=Path, required=True, help="predictions TSV (sample_id, <target>[, <target>_std | prob_<class>...])"
    )
    parser.add_argument("--metadata", type=Path, required=True, help="QIIME 2 metadata TSV holding the true values")
    parser.add_argument("--target", required=True, help="metadata column that was predicted")
    parser.add_argument("--task", choices=TASKS, default=None, help="default: classification when the file has prob_<class> columns")
    parser.add_argument("--group-column", default=None, help="metadata column for the per-group error table")
    parser.add_argument("--positive-class", default=None, help="binary AUC / F1 class (default: the second class name)")
    parser.add_argument("--worst", type=int, default=20, help="rows of worst_samples.tsv")
    parser.add_argument("--out-dir", type=Path, default=None, help="default: <predictions>.eval/ beside the predictions file")


def run_evaluate(args: argparse.Namespace) -> int:
    """Run ``aam-ds evaluate``: metrics, per-group tables and plots of a predictions TSV; returns 0."""
    from aam_ds.data.metadata import load_metadata
    from aam_ds.evaluation.predictions import read_predictions
    from aam_ds.evaluation.report import metrics_table, wide_console, write_evaluation
    from aam_ds.evaluation.scoring import join_truth

    predictions = read_predictions(args.predictions, args.target, args.task)
    metadata = load_metadata(args.metadata)
    kept, truth, rows = join_truth(predictions, metadata)
    groups = _group_series(rows, args.group_column)
    out_dir = args.out_dir or args.predictions.with_name(args.predictions.name + ".eval")
    report = write_evaluation(
        out_dir,
        kept,
        truth,
        groups,
        args.worst,
        args.positive_class,
        extra={"metadata": str(args.metadata), "samples_without_metadata": len(predictions.sample_ids) - len(kept.sample_ids)},
    )
    console = wide_console()
    console.print(metrics_table({args.predictions.name: report["metrics"]}, kept.task, f"{args.target} ({kept.task})"))
    dropped = report["samples_without_metadata"]
    if dropped:
        console.print(f"[yellow]{dropped} predicted samples have no metadata row and were not scored[/yellow]")
    console.print(f"wrote {out_dir}/: " + ", ".join(Path(p).name for p in report["files"].values()) + ", metrics.json")
    return 0


def _group_series(rows: pd.DataFrame, column: str | None) -> pd.Series | None:
    if column is None:
        return None
    if column not in rows.columns:
        raise AamInputError(
            f"--group-column {column}",
            f"no such column in {rows.attrs.get('source', 'the metadata')}",
            f"name an existing metadata column (e.g. {list(rows.columns)[:8]})",
        )
    return rows[column].fillna("<missing>").astype(str).rename(column)


# --------------------------------------------------------------------------------------------
# rf-baseline


def add_rf_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the options of ``aam-ds rf-baseline`` to ``parser``."""
    parser.add_argument("--table", type=Path, help=spec_flag_help("BIOM table or FeatureTable[Frequency] .qza", "data.table"))
    parser.add_argument("--metadata", type=Path, help=spec_flag_help("QIIME 2 metadata TSV", "data.metadata"))
    parser.add_argument("--target", help=spec_flag_help("metadata column to predict", "data.targets (one column)"))
    parser.add_argument("--task", choices=TASKS, help=spec_flag_help("default: regression for a numeric column", "loss.task"))
    parser.add_argument("--folds", type=int, help=spec_flag_help("number of cross-validation folds", "data.split.folds", 5))
    parser.add_argument(
        "--split",
        choices=SPLIT_KINDS,
        help=spec_flag_help("default: grouped with a group option, else stratified (classification) or random", "data.split.kind"),
    )
    parser.add_argument(
        "--group-column", help=spec_flag_help("metadata column whose groups never straddle folds", "data.split.group_column")
    )
    parser.add_argument(
        "--stratify-column", help=spec_flag_help("stratified folds: column to balance (default: the target)", "data.split.column")
    )
    parser.add_argument(
        "--folds-file", type=Path, help=spec_flag_help("reuse the folds of an earlier run (folds.tsv)", "data.split.folds_file")
    )
    parser.add_argument("--seed", type=int, help=spec_flag_help("seeds the folds and the forest", "data.split.seed", 0))
    parser.add_argument("--trees", type=int, default=500, help="trees of the forest")
    parser.add_argument("--n-jobs", type=int, default=1, help="cores for the forest (-1 = all)")
    parser.add_argument("--max-features", default=None, help="features per split: sqrt, log2 or a fraction (default: scikit-learn's)")
    parser.add_argument("--positive-class", default=None, help="binary AUC / F1 class (default: the second class name)")
    parser.add_argument(
        "--compare",
        type=Path,
        action="append",
        default=[],
        metavar="P.tsv",
        help="another model's out-of-fold predictions of the same samples (repeatable)",
    )
    parser.add_argument("--out-dir", type=Path, default=Path("rf_baseline"), help="report folder (predictions, folds.tsv, metrics)")
    add_spec_arguments(parser)


def _rf_flags_from_spec(args: argparse.Namespace) -> None:
    """The flags left out, from ``--spec`` / ``--set`` (:data:`RF_SPEC_FIELDS`); table, metadata and target are required."""
    spec = fill_from_spec(args, RF_SPEC_FIELDS)
    args.task = None if args.task == "none" else args.task
    if args.target is None and len(spec.data.targets) == 1:
        args.target = spec.data.targets[0]
    for flag, value, field in (
        ("--table", args.table, "data.table"),
        ("--metadata", args.metadata, "data.metadata"),
        ("--target", args.target, "data.targets (one column)"),
    ):
        if value is None:
            raise AamInputError(flag, "not given", f"pass {flag}, or --spec with {field} set")


def run_rf_baseline(args: argparse.Namespace) -> int:
    """Run ``aam-ds rf-baseline``: the cross-validated random forest (and a comparison with ``--compare``); returns 0."""
    from aam_ds.data.metadata import align_metadata, load_metadata
    from aam_ds.data.table import load_table, without_empty_samples
    from aam_ds.evaluation.folds import read_folds, train_test_pairs, write_folds
    from aam_ds.evaluation.predictions import read_predictions, write_predictions
    from aam_ds.evaluation.report import metrics_table, wide_console, write_evaluation, write_tsv
    from aam_ds.evaluation.rf_baseline import comparison_rows, cross_validate_rf

    _rf_flags_from_spec(args)
    table = without_empty_samples(load_table(args.table))
    metadata = align_metadata(load_metadata(args.metadata), table.sample_ids, str(args.table))
    task = args.task or infer_task(metadata, args.target)
    truth, class_names = truth_of(metadata, args.target, task)
    if args.folds_file:
        held_out = read_folds(args.folds_file, table.sample_ids)
        split = f"from {args.folds_file}"
    else:
        split = args.split or ("grouped" if args.group_column else "stratified" if task == "classification" else "random")
        held_out = _draw_folds(metadata, split, args)
    cv = cross_validate_rf(
        table,
        args.target,
        truth,
        train_test_pairs(held_out, len(truth)),
        class_names,
        args.trees,
        args.seed,
        args.n_jobs,
        _max_features(args.max_features),
        args.positive_class,
    )
    out = args.out_dir
    write_predictions(out / "rf_predictions.tsv", cv.predictions)
    write_folds(out / "folds.tsv", table.sample_ids, held_out)
    settings = {k: str(v) for k, v in vars(args).items() if k not in ("func", "compare")}
    write_evaluation(
        out,
        cv.predictions,
        truth,
        extra={"fold_metrics": cv.fold_metrics, "split": split, "settings": settings},
        positive_class=args.positive_class,
    )
    console = wide_console()
    title = f"random forest, {args.target} ({task}), {len(held_out)} folds {split}, {args.trees} trees"
    console.print(metrics_table(cv.table_rows(), task, title, first_column="fold"))
    if args.compare:
        others = {p.stem: read_predictions(p, args.target, task) for p in args.compare}
        rows = comparison_rows(cv, others, positive_class=args.positive_class)
        console.print(metrics_table(rows, task, f"{args.target}: random forest vs {', '.join(others)} (same samples, same folds)"))
        write_tsv(out / "comparison.tsv", _rows_frame(rows))
    console.print(f"wrote {out}/rf_predictions.tsv, folds.tsv, metrics.json, plots")
    return 0


def infer_task(metadata: pd.DataFrame, target: str) -> str:
    """Regression for a numeric metadata column, classification otherwise."""
    if target not in metadata.columns:
        raise AamInputError(
            f"--target {target}",
            f"no such column in {metadata.attrs.get('source', 'the metadata')}",
            f"name an existing metadata column (e.g. {list(metadata.columns)[:8]})",
        )
    from aam_ds.data.metadata import is_numeric_column

    return "regression" if is_numeric_column(metadata[target]) else "classification"


def truth_of(metadata: pd.DataFrame, target: str, task: str) -> tuple[np.ndarray, list[str]]:
    """Truth per row (float64, or class names) and the class names (empty for regression)."""
    from aam_ds.data.metadata import categorical_codes, numeric_targets

    if task == "regression":
        return numeric_targets(metadata, [target], field="--target")[:, 0].astype(np.float64), []
    codes, classes = categorical_codes(metadata, target, field="--target")
    return np.asarray(classes, dtype=object)[codes], classes


def _draw_folds(metadata: pd.DataFrame, split: str, args: argparse.Namespace) -> list[np.ndarray]:
    from aam_ds.evaluation.folds import draw_folds

    column = {"grouped": args.group_column, "stratified": args.stratify_column or args.target}.get(split)
    return draw_folds(metadata, args.folds, split, args.seed, column)


def _max_features(value: str | None) -> str | float | None:
    if value is None or value in ("sqrt", "log2"):
        return value
    try:
        return float(value)
    except ValueError:
        raise AamInputError(f"--max-features {value}", "not sqrt, log2 or a number", "e.g. --max-features 0.3") from None


def _rows_frame(rows: dict[str, dict]) -> pd.DataFrame:
    """Comparison rows as a frame; ``(mean, std)`` pairs become ``<metric>`` and ``<metric>_std`` columns."""
    flat = {}
    for name, metrics in rows.items():
        flat[name] = {}
        for k, v in metrics.items():
            if isinstance(v, tuple):
                flat[name][k], flat[name][f"{k}_std"] = v
            else:
                flat[name][k] = v
    return pd.DataFrame.from_dict(flat, orient="index").rename_axis("model")
