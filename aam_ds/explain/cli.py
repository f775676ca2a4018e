"""Argument parser and runner of ``aam-ds explain`` (wired in aam_ds/cli.py)."""

from __future__ import annotations

import argparse
from pathlib import Path

from aam_ds.errors import AamInputError

METHOD_NAMES = ("integrated_gradients", "attention", "permutation", "removal")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the options of ``aam-ds explain`` to ``parser``."""
    parser.add_argument(
        "--model", type=Path, required=True, help="consolidated export (<run_dir>/model.pt); importance needs a fine-tuned one"
    )
    parser.add_argument(
        "--table", type=Path, required=True, help="BIOM table or FeatureTable[Frequency] .qza, preprocessed as `aam-ds predict` does"
    )
    parser.add_argument(
        "--sequences",
        type=Path,
        default=None,
        help="FASTA or FeatureData[Sequence] .qza keyed by the table's IDs (needed when the IDs are not DNA)",
    )
    parser.add_argument(
        "--metadata",
        type=Path,
        default=None,
        help="QIIME 2 metadata TSV: true values for permutation / removal (and the model's covariates)",
    )
    parser.add_argument("--target", default=None, help="the model's target to explain (default: its first)")
    parser.add_argument(
        "--taxonomy", type=Path, default=None, help="QIIME 2 taxonomy TSV or FeatureData[Taxonomy] .qza: adds taxa and per-taxon sums"
    )
    parser.add_argument("--taxon-level", type=int, default=6, help="ranks kept when summing per taxon (6 = genus)")
    parser.add_argument(
        "--method",
        nargs="+",
        choices=METHOD_NAMES,
        default=None,
        metavar="METHOD",
        help=f"importance methods among {', '.join(METHOD_NAMES)} (default: all; without --metadata: integrated_gradients attention; for a pretraining export: attention)",
    )
    parser.add_argument(
        "--samples",
        type=Path,
        default=None,
        help="file of sample IDs to explain, one per line (e.g. a run's splits/val.txt: held-out samples)",
    )
    parser.add_argument("--show", type=int, default=3, help="samples whose attention maps are plotted and saved")
    parser.add_argument("--repeats", type=int, default=5, help="permutations per ASV (the interval is over these)")
    parser.add_argument("--steps", type=int, default=32, help="integration steps of integrated gradients")
    parser.add_argument(
        "--baseline-asvs",
        type=int,
        default=None,
        help="ASVs of integrated gradients' expected sample, the most prevalent; an absent one of them is credited "
        "(default 512; time and memory grow with the number squared)",
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the permutations")
    parser.add_argument("--batch-size", type=int, default=32, help="samples per forward pass")
    parser.add_argument("--device", choices=("cpu", "cuda"), default=None, help="default: cuda when available")
    parser.add_argument("--out-dir", type=Path, required=True, help="folder for the TSV, NPZ and PNG files")


def run(args: argparse.Namespace) -> int:
    """Run ``aam-ds explain``: attention maps and feature importance of a model on a table; returns 0."""
    import torch

    from aam_ds.explain.importance import BASELINE_ASVS
    from aam_ds.explain.run import ExplainOptions, explain_table
    from aam_ds.tracking.console import count_progress

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise AamInputError("--device cuda", "no CUDA device is visible to this process", "use --device cpu or run on a GPU node")
    options = ExplainOptions(
        tuple(args.method) if args.method else None,
        args.metadata,
        args.target,
        args.taxonomy,
        args.taxon_level,
        args.samples,
        args.show,
        args.repeats,
        args.steps,
        BASELINE_ASVS if args.baseline_asvs is None else args.baseline_asvs,
        args.seed,
        args.batch_size,
        device,
    )
    with count_progress("explaining", unit="steps") as progress:
        table = explain_table(args.model, args.table, args.out_dir, options, args.sequences, progress)
    methods = [m for m in METHOD_NAMES if m in table.columns]
    maps = " and the attention maps" if args.show > 0 else ""
    print(
        f"explained {table.attrs['n_samples']} samples: wrote the importance of {len(table)} ASVs by {', '.join(methods)}{maps} to {args.out_dir}"
    )
    return 0
