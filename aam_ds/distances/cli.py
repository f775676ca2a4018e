"""``aam-ds distances``: a full distance matrix from a table (and tree), written as a file.

    aam-ds distances --table T.biom --tree P.nwk --metric unweighted --out F.h5 [--engine ssu]

The output format follows the suffix of ``--out`` (``.h5`` unifrac layout, ``.npy`` + IDs,
otherwise square TSV).
"""

from __future__ import annotations

import argparse
import time

from aam_ds.errors import AamInputError

# kept in step with aam_ds.distances.metric; spelled out here so that building the parser imports no torch
METRICS = ("unweighted", "weighted_normalized", "weighted_unnormalized", "generalized", "braycurtis", "jaccard", "aitchison")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the options of ``aam-ds distances`` to ``parser``."""
    parser.add_argument("--table", required=True, help="BIOM (HDF5/JSON/TSV) or FeatureTable[Frequency] .qza")
    parser.add_argument("--tree", help="rooted Newick or Phylogeny[Rooted] .qza (UniFrac metrics)")
    parser.add_argument("--metric", choices=METRICS, default="unweighted", help="distance between samples")
    parser.add_argument("--alpha", type=float, default=0.5, help="generalized UniFrac alpha")
    parser.add_argument("--pseudocount", type=float, default=1.0, help="Aitchison: counts + pseudocount before CLR")
    parser.add_argument("--out", required=True, help="output: .h5 (unifrac layout), .npy (+ .ids.txt) or .tsv")
    parser.add_argument("--engine", choices=("torch", "ssu"), default="torch", help="ours, or biocore's ssu binary")
    parser.add_argument("--dtype", choices=("fp64", "fp32"), default="fp64", help="precision of the torch engine")
    parser.add_argument("--device", default="auto", help="torch device; auto = cuda when available, else cpu")
    parser.add_argument("--block-size", type=int, default=1024, help="samples per block of the torch engine")
    parser.add_argument("--threads", type=int, default=None, help="CPU threads (torch and ssu's OMP_NUM_THREADS)")
    parser.add_argument("--drop-missing-tips", action="store_true", help="drop ASVs absent from the tree (warns)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    """Run ``aam-ds distances``: compute the full distance matrix and write it to ``--out``; returns 0."""
    import torch

    from aam_ds.data.table import load_table
    from aam_ds.distances.full import full_matrix, ssu_full_matrix
    from aam_ds.distances.io import write_distance_matrix
    from aam_ds.distances.metric import DTYPES, UNIFRAC_METRICS, build_metric
    from aam_ds.distances.tree import read_tree

    if args.metric in UNIFRAC_METRICS and not args.tree:
        raise AamInputError("--tree", f"metric {args.metric} (UniFrac) needs a tree", "pass --tree P.nwk (or a .qza)")
    if args.block_size <= 0:
        raise AamInputError("--block-size", f"must be positive, got {args.block_size}", "give e.g. 1024")
    start = time.perf_counter()
    if args.engine == "ssu":
        ids, matrix = ssu_full_matrix(
            args.table, args.tree, args.metric, alpha=args.alpha, dtype=args.dtype,
            threads=args.threads, drop_missing_tips=args.drop_missing_tips,
        )
    else:
        if args.threads:
            torch.set_num_threads(args.threads)
        device = ("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device
        table = load_table(args.table)
        tree = read_tree(args.tree) if args.metric in UNIFRAC_METRICS else None
        metric = build_metric(
            args.metric, table, tree, alpha=args.alpha, pseudocount=args.pseudocount,
            drop_missing_tips=args.drop_missing_tips, device=device, dtype=DTYPES[args.dtype],
        )
        ids, matrix = metric.sample_ids, full_matrix(metric, args.block_size, progress=not args.no_progress)
    write_distance_matrix(args.out, ids, matrix)
    print(f"{args.metric} distances of {len(ids)} samples ({args.engine}) -> {args.out} in {time.perf_counter() - start:.1f} s")
    return 0


def main(argv: list[str] | None = None) -> int:
    """``python -m aam_ds.distances.cli``: parse ``argv`` and run; returns the exit status."""
    parser = argparse.ArgumentParser(prog="aam-ds distances", description=__doc__.split("\n")[0])
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())
