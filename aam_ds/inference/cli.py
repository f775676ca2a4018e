"""Argument parser and runner of ``aam-ds predict`` (wired in aam_ds/cli.py)."""

from __future__ import annotations

import argparse
from pathlib import Path

from aam_ds.errors import AamInputError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the options of ``aam-ds predict`` to ``parser``."""
    parser.add_argument("--model", type=Path, required=True, help="consolidated export of a fine-tuning run (<run_dir>/model.pt), or its ONNX export (.onnx, run with "
                        "onnxruntime on the CPU)")
    parser.add_argument("--table", type=Path, required=True, help="BIOM table or FeatureTable[Frequency] .qza to predict")
    parser.add_argument("--sequences", type=Path, default=None,
                        help="FASTA or FeatureData[Sequence] .qza keyed by the table's IDs (needed when the IDs are not DNA)")
    parser.add_argument("--metadata", type=Path, default=None, help="QIIME 2 metadata TSV (needed only when the model has covariates)")
    parser.add_argument("--passes", type=int, default=1,
                        help="passes over random ASV subsets; > 1 reports the mean and, for regression, <target>_std")
    parser.add_argument("--subset-fraction", type=float, default=None,
                        help="share of each sample's ASVs kept per pass when --passes > 1 (default 0.8)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the ASV subsets")
    parser.add_argument("--batch-size", type=int, default=None, help="samples per forward pass (default 32)")
    parser.add_argument("--device", choices=("cpu", "cuda"), default=None, help="default: cuda when available")
    parser.add_argument("--out", type=Path, required=True,
                        help="predictions TSV; with several regression targets, <stem>.<target>.tsv per target")


def run(args: argparse.Namespace) -> int:
    """Run ``aam-ds predict`` and write the predictions TSV(s); returns 0."""
    import torch

    from aam_ds.inference.predict import predict_table
    from aam_ds.prediction import DEFAULT_BATCH_SIZE, DEFAULT_SUBSET_FRACTION, write_prediction_files
    from aam_ds.tracking.console import count_progress

    if args.subset_fraction is not None and args.passes == 1:
        raise AamInputError("--subset-fraction", "only applies to repeated passes", "add --passes K (K > 1) or drop --subset-fraction")
    device = args.device or ("cuda" if torch.cuda.is_available() and args.model.suffix != ".onnx" else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise AamInputError("--device cuda", "no CUDA device is visible to this process", "use --device cpu or run on a GPU node")
    with count_progress("predicting") as progress:
        predictions = predict_table(
            args.model, args.table, args.sequences, args.metadata, passes=args.passes,
            subset_fraction=DEFAULT_SUBSET_FRACTION if args.subset_fraction is None else args.subset_fraction,
            seed=args.seed, batch_size=DEFAULT_BATCH_SIZE if args.batch_size is None else args.batch_size, device=device,
            progress=progress,
        )  # fmt: skip
    for path, prediction in zip(write_prediction_files(args.out, predictions), predictions):
        print(f"wrote {len(prediction.sample_ids)} {prediction.task} predictions of {prediction.target!r} to {path}")
    return 0


def add_export_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the options of ``aam-ds export-onnx`` to ``parser``."""
    from aam_ds.inference.onnx import OPSET

    parser.add_argument("--model", type=Path, required=True, help="consolidated export (<run_dir>/model.pt), pretrained or fine-tuned")
    parser.add_argument("--out", type=Path, required=True, help="ONNX file to write (e.g. model.onnx)")
    parser.add_argument("--opset", type=int, default=OPSET, help=f"ONNX opset (default {OPSET})")


def run_export(args: argparse.Namespace) -> int:
    """Run ``aam-ds export-onnx``: write the ONNX graph of ``--model`` to ``--out``; returns 0."""
    from aam_ds.inference.onnx import export_onnx

    path = export_onnx(args.model, args.out, args.opset)
    print(f"wrote {path} (opset {args.opset}); predict with `aam-ds predict --model {path} ...`")
    return 0
