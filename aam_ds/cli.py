"""The ``aam-ds`` command. Each subcommand parses its arguments and calls the library.

Heavy imports (torch, deepspeed) happen inside the subcommands that need them, so
``aam-ds spec show`` answers instantly.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from aam_ds.errors import AamInputError


def add_spec_arguments(parser: argparse.ArgumentParser) -> None:
    """--spec FILE and repeated --set dotted.key=value, shared by every command that reads a spec."""
    parser.add_argument("--spec", type=Path, default=None, help="run spec (YAML, TOML or JSON)")
    parser.add_argument(
        "--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
        help="override a spec field, e.g. --set model.d_model=256 (repeatable)",
    )


def spec_from_args(args: argparse.Namespace):
    from aam_ds.spec import load_spec

    return load_spec(args.spec, args.overrides)


# --------------------------------------------------------------------------------------------
# spec


def cmd_spec(args: argparse.Namespace) -> int:
    from aam_ds.spec import spec_schema

    if args.spec_command == "schema":
        print(json.dumps(spec_schema(), indent=2))
    else:
        print(json.dumps(spec_from_args(args).model_dump(mode="json"), indent=2))
    return 0


# --------------------------------------------------------------------------------------------
# ds-config


def ds_config_spec_overrides(stage: int, offload: str | None, nvme_path: Path | None) -> list[str]:
    """Spec overrides for a ZeRO stage and an offload target (optimizer, plus parameters at ZeRO-3)."""
    overrides = [f"parallel.zero_stage={stage}"]
    if offload:
        overrides.append(f"parallel.offload_optimizer={offload}")
        if stage == 3:
            overrides.append(f"parallel.offload_param={offload}")
        if offload == "nvme":
            overrides.append(f"parallel.nvme_path={nvme_path}")
    return overrides


def cmd_ds_config(args: argparse.Namespace) -> int:
    from aam_ds.ds_config import build_ds_config, write_ds_config
    from aam_ds.spec import load_spec

    if args.offload == "nvme" and args.nvme_path is None:
        raise AamInputError("--offload nvme", "NVMe offload needs a directory", "add --nvme-path /local/nvme/dir")
    overrides = args.overrides + ds_config_spec_overrides(args.stage, args.offload, args.nvme_path)
    config = build_ds_config(load_spec(args.spec, overrides))
    if args.out:
        write_ds_config(config, args.out)
        print(f"wrote {args.out}")
    else:
        print(json.dumps(config, indent=2))
    return 0


# --------------------------------------------------------------------------------------------
# parser


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="aam-ds", description="Train AAM microbiome transformers with DeepSpeed: spec, data, distances, training, evaluation.")
    sub = parser.add_subparsers(dest="command", required=True)

    spec = sub.add_parser("spec", help="print the run spec's JSON Schema or a resolved spec")
    spec_sub = spec.add_subparsers(dest="spec_command", required=True)
    spec_sub.add_parser("schema", help="JSON Schema of the run spec")
    show = spec_sub.add_parser("show", help="the resolved spec (file + overrides + defaults)")
    add_spec_arguments(show)
    spec.set_defaults(func=cmd_spec)

    ds = sub.add_parser("ds-config", help="write a DeepSpeed config generated from the spec")
    ds.add_argument("--stage", type=int, choices=[0, 1, 2, 3], required=True)
    ds.add_argument("--offload", choices=["cpu", "nvme"], default=None)
    ds.add_argument("--nvme-path", type=Path, default=None)
    ds.add_argument("--out", type=Path, default=None, help="file to write (default: print)")
    add_spec_arguments(ds)
    ds.set_defaults(func=cmd_ds_config)

    from aam_ds.distances import cli as distances_cli
    from aam_ds.evaluation import cli as evaluation_cli
    from aam_ds.inference import cli as inference_cli

    dist = sub.add_parser("distances", help="full distance matrix (unifrac HDF5 layout) with the torch or ssu engine")
    distances_cli.add_arguments(dist)
    dist.set_defaults(func=distances_cli.run)

    predict = sub.add_parser("predict", help="predict metadata with a fine-tuned model.pt (TSV for `aam-ds evaluate`)")
    inference_cli.add_arguments(predict)
    predict.set_defaults(func=inference_cli.run)

    evaluate = sub.add_parser("evaluate", help="metrics, per-group errors, worst samples and plots for a predictions TSV")
    evaluation_cli.add_evaluate_arguments(evaluate)
    evaluate.set_defaults(func=evaluation_cli.run_evaluate)

    rf = sub.add_parser("rf-baseline", help="scikit-learn random forest on the same folds, side by side")
    evaluation_cli.add_rf_arguments(rf)
    rf.set_defaults(func=evaluation_cli.run_rf_baseline)

    from aam_ds.benchmark import cli as benchmark_cli

    bench = sub.add_parser("benchmark", help="random forest, linear model and AAM (pretrain + k-fold fine-tuning) on the same folds: one report")
    benchmark_cli.add_arguments(bench)
    bench.set_defaults(func=benchmark_cli.run)

    for stage, text in TRAINING_STAGES.items():
        sub.add_parser(stage, add_help=False, help=text)
    return parser


TRAINING_STAGES = {
    "pretrain": "pretrain with DeepSpeed (same as launch/pretrain.py; see `aam-ds pretrain --help`)",
    "finetune": "fine-tune with DeepSpeed (same as launch/finetune.py; see `aam-ds finetune --help`)",
    "cv": "k-fold cross-validated fine-tuning (data.split.folds / folds_file): out-of-fold predictions and metrics",
}


def run_training_stage(stage: str, argv: list[str]) -> None:
    """``aam-ds pretrain|finetune ...``: the launch scripts' code path, in this process."""
    from aam_ds.engine import crossval, trainer
    from aam_ds.engine.entry import run_stage

    stages = {"pretrain": trainer.pretrain, "finetune": trainer.finetune, "cv": crossval.cross_validate}
    run_stage(stages[stage], argv, description=TRAINING_STAGES[stage])


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv and argv[0] in TRAINING_STAGES:
        run_training_stage(argv[0], argv[1:])  # exits the process with the run's status
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except AamInputError as exc:
        print(f"aam-ds: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
