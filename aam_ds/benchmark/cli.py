"""Arguments and runner of ``aam-ds benchmark`` (wired in aam_ds/cli.py)."""

from __future__ import annotations

import argparse
from pathlib import Path

from aam_ds.benchmark.recipe import BUDGETS
from aam_ds.cli_args import add_set_argument
from aam_ds.distances.registry import ALIAS_TEXT, METRIC_NAMES, metric_flag
from aam_ds.spec.flags import SPLIT_KINDS, TASKS

EXAMPLE = """example (QIIME 2 artifacts, folds grouped by subject):
  aam-ds benchmark --table table.qza --tree rooted-tree.qza --sequences rep-seqs.qza \\
      --metadata sample-metadata.tsv --target body_site --split grouped --group-column host_subject_id \\
      --budget standard --out-dir bench-body-site
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the options of ``aam-ds benchmark`` to ``parser`` (its epilog is the worked example)."""
    parser.epilog = EXAMPLE  # aam-ds keeps its line breaks
    parser.add_argument("--table", type=Path, required=True, help="BIOM table or FeatureTable[Frequency] .qza")
    parser.add_argument("--metadata", type=Path, required=True, help="QIIME 2 metadata TSV")
    parser.add_argument("--target", required=True, help="metadata column to predict")
    parser.add_argument(
        "--tree",
        type=Path,
        default=None,
        help="rooted Newick or Phylogeny[Rooted] .qza (UniFrac pretraining); without it AAM pretrains on Bray-Curtis",
    )
    parser.add_argument(
        "--sequences",
        type=Path,
        default=None,
        help="FASTA or FeatureData[Sequence] .qza: needed when the table's feature IDs are hashes (QIIME 2)",
    )
    parser.add_argument("--task", choices=TASKS, default=None, help="default: regression for a numeric column")
    parser.add_argument(
        "--split",
        choices=SPLIT_KINDS,
        default=None,
        help="default: grouped with --group-column, else stratified (classification) or random",
    )
    parser.add_argument("--group-column", default=None, help="grouped folds: metadata column whose groups never straddle folds")
    parser.add_argument("--stratify-column", default=None, help="stratified folds: column to balance (default: the target)")
    parser.add_argument("--folds-file", type=Path, default=None, help="use these folds (sample_id, fold TSV) instead of drawing them")
    parser.add_argument("--folds", type=int, default=5, help="number of folds drawn (default: 5)")
    parser.add_argument("--seed", type=int, default=0, help="seeds the folds, the forest and AAM (default: 0)")
    parser.add_argument("--positive-class", default=None, help="binary AUC class (default: the second class name)")
    parser.add_argument(
        "--metric",
        type=metric_flag,
        metavar="NAME",
        default=None,
        help=f"AAM pretraining distance: {', '.join(METRIC_NAMES)} (also accepted: {ALIAS_TEXT}); "
        "default: unweighted UniFrac with a tree, else braycurtis",
    )
    parser.add_argument("--max-seq-len", type=int, default=150, help="nucleotides kept per ASV (default: 150)")
    parser.add_argument(
        "--budget",
        default="standard",
        help=f"training budget: {', '.join(BUDGETS)} (configs/benchmark/<budget>.yaml) or a recipe YAML path "
        "(default: standard, about an hour on a 2-core CPU)",
    )
    parser.add_argument(
        "--pretrained",
        type=Path,
        default=None,
        help="a pretrained export (model.pt of a pretraining run on this table) to fine-tune instead of "
        "pretraining anew; the recipe's pretrain stage is skipped",
    )
    add_set_argument(parser, "run-spec override for both AAM stages, e.g. --set data.cache_dir=/scratch/cache (repeatable)")
    parser.add_argument("--out-dir", type=Path, default=Path("benchmark"), help="report folder (default: ./benchmark)")


def run(args: argparse.Namespace) -> int:
    """Run ``aam-ds benchmark``: the budget's recipe on the given table and metadata; returns the exit status (0)."""
    from aam_ds.benchmark.recipe import load_recipe
    from aam_ds.benchmark.report import StageProgress, summary_markdown
    from aam_ds.benchmark.runner import BenchmarkInputs, run_benchmark, stages_of
    from aam_ds.evaluation.report import wide_console

    recipe = load_recipe(args.budget)
    inputs = BenchmarkInputs(
        table=args.table,
        metadata=args.metadata,
        target=args.target,
        out_dir=args.out_dir,
        recipe=recipe,
        tree=args.tree,
        sequences=args.sequences,
        task=args.task,
        split=args.split,
        group_column=args.group_column,
        stratify_column=args.stratify_column,
        folds_file=args.folds_file,
        folds=args.folds,
        seed=args.seed,
        positive_class=args.positive_class,
        metric=args.metric,
        max_seq_len=args.max_seq_len,
        extra=list(args.overrides),
        pretrained=args.pretrained,
    )
    console = wide_console()
    with StageProgress(console, args.folds, stages_of(inputs)) as progress:
        report = run_benchmark(inputs, progress)
    console.print(summary_markdown(report))
    console.print(f"wrote {args.out_dir}/: " + ", ".join(report["files"]) + " (report.md also holds the recipe)")
    return 0
