"""Argument parser and runner of ``aam-ds predict`` (wired in aam_ds/cli.py).

``--spec`` / ``--set`` fill the flags a run-spec field also decides (:mod:`aam_ds.spec.flags`):
``--table``, ``--sequences`` and ``--metadata`` are ``data.table``, ``data.sequences`` and
``data.metadata``, and ``--model`` is the run's export ``<tracking.run_dir>/model.pt``; so
``aam-ds predict --spec runs/finetune-x/spec.json --out p.tsv`` predicts that run's own table
with its model. A flag given on the command line wins.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from aam_ds.errors import AamInputError
from aam_ds.spec.flags import add_spec_arguments, fill_from_spec, spec_flag_help

# flag dest -> (run-spec field, default without a spec)
SPEC_FIELDS = {
    "table": ("data.table", None),
    "sequences": ("data.sequences", None),
    "metadata": ("data.metadata", None),
    "run_dir": ("tracking.run_dir", None),
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the options of ``aam-ds predict`` to ``parser``."""
    parser.add_argument(
        "--model",
        type=Path,
        default=None,
        help=spec_flag_help(
            "consolidated export of a fine-tuning run (<run_dir>/model.pt), or its ONNX export (.onnx, run with onnxruntime on the CPU)",
            "<tracking.run_dir>/model.pt",
        ),
    )
    parser.add_argument(
        "--table", type=Path, default=None, help=spec_flag_help("BIOM table or FeatureTable[Frequency] .qza to predict", "data.table")
    )
    parser.add_argument(
        "--sequences",
        type=Path,
        default=None,
        help=spec_flag_help(
            "FASTA or FeatureData[Sequence] .qza keyed by the table's IDs (needed when the IDs are not DNA)", "data.sequences"
        ),
    )
    parser.add_argument(
        "--metadata",
        type=Path,
        default=None,
        help=spec_flag_help("QIIME 2 metadata TSV (needed only when the model has covariates)", "data.metadata"),
    )
    parser.add_argument(
        "--passes", type=int, default=1, help="passes over random ASV subsets; > 1 reports the mean and, for regression, <target>_std"
    )
    parser.add_argument(
        "--subset-fraction", type=float, default=None, help="share of each sample's ASVs kept per pass when --passes > 1 (default 0.8)"
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the ASV subsets")
    parser.add_argument("--batch-size", type=int, default=None, help="samples per forward pass (default 32)")
    parser.add_argument("--device", choices=("cpu", "cuda"), default=None, help="default: cuda when available")
    parser.add_argument(
        "--out", type=Path, required=True, help="predictions TSV; with several regression targets, <stem>.<target>.tsv per target"
    )
    add_spec_arguments(parser)
    parser.set_defaults(run_dir=None)


def fill_inputs(args: argparse.Namespace) -> None:
    """Fill ``--model``, ``--table``, ``--sequences`` and ``--metadata`` from ``--spec`` / ``--set`` where not given.

    Raises:
        AamInputError: no model or no table, from the flags or the spec; an invalid spec.
    """
    from aam_ds.export import EXPORT_NAME

    fill_from_spec(args, SPEC_FIELDS)
    if args.model is None and args.run_dir is not None:
        args.model = Path(args.run_dir) / EXPORT_NAME
    if args.model is None:
        raise AamInputError("--model", "no model given", "pass --model <run_dir>/model.pt, or --spec with tracking.run_dir set")
    if args.table is None:
        raise AamInputError("--table", "no feature table given", "pass --table T.biom, or --spec with data.table set")
    for name in ("model", "table", "sequences", "metadata"):
        if getattr(args, name) is not None:
            setattr(args, name, Path(getattr(args, name)))


def run(args: argparse.Namespace) -> int:
    """Run ``aam-ds predict`` and write the predictions TSV(s); returns 0."""
    import torch

    from aam_ds.inference.predict import predict_table
    from aam_ds.prediction import DEFAULT_BATCH_SIZE, DEFAULT_SUBSET_FRACTION, write_prediction_files
    from aam_ds.tracking.console import count_progress

    fill_inputs(args)
    if args.subset_fraction is not None and args.passes == 1:
        raise AamInputError("--subset-fraction", "only applies to repeated passes", "add --passes K (K > 1) or drop --subset-fraction")
    device = args.device or ("cuda" if torch.cuda.is_available() and args.model.suffix != ".onnx" else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise AamInputError("--device cuda", "no CUDA device is visible to this process", "use --device cpu or run on a GPU node")
    with count_progress("predicting") as progress:
        predictions = predict_table(
            args.model,
            args.table,
            args.sequences,
            args.metadata,
            passes=args.passes,
            subset_fraction=DEFAULT_SUBSET_FRACTION if args.subset_fraction is None else args.subset_fraction,
            seed=args.seed,
            batch_size=DEFAULT_BATCH_SIZE if args.batch_size is None else args.batch_size,
            device=device,
            progress=progress,
        )
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
