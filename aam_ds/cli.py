"""The ``aam-ds`` command. Each subcommand parses its arguments and calls the library.

Heavy imports (torch, deepspeed) happen inside the subcommands that need them: ``aam-ds --help``
imports no subcommand's module, and ``aam-ds spec show`` answers instantly.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import signal
import sys
from pathlib import Path
from typing import Callable

from aam_ds.cli_args import add_spec_arguments
from aam_ds.errors import AamInputError, show_notices_as_lines
from aam_ds.help_format import HelpFormatter

Runner = Callable[[argparse.Namespace], int]


def spec_from_args(args: argparse.Namespace):
    """The RunSpec of ``--spec`` and the ``--set`` overrides (AamInputError on invalid fields)."""
    from aam_ds.spec import load_spec

    return load_spec(args.spec, args.overrides)


# --------------------------------------------------------------------------------------------
# spec


def cmd_spec(args: argparse.Namespace) -> int:
    """Run ``aam-ds spec schema|show``: print the JSON Schema or the resolved spec as JSON; returns 0."""
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
    """Run ``aam-ds ds-config``: print or write the DeepSpeed config for the ZeRO stage and offload; returns 0."""
    from aam_ds.ds_config import pinned_ds_config, write_ds_config
    from aam_ds.spec import load_spec

    if args.offload == "nvme" and args.nvme_path is None:
        raise AamInputError("--offload nvme", "NVMe offload needs a directory", "add --nvme-path /local/nvme/dir")
    overrides = args.overrides + ds_config_spec_overrides(args.stage, args.offload, args.nvme_path)
    config = pinned_ds_config(load_spec(args.spec, overrides))
    if args.out:
        write_ds_config(config, args.out)
        print(f"wrote {args.out}")
    else:
        print(json.dumps(config, indent=2))
    return 0


# --------------------------------------------------------------------------------------------
# parsers: each command's module is imported only when that command runs


def add_spec_command(parser: argparse.ArgumentParser) -> Runner:
    """Add the ``schema`` and ``show`` subcommands of ``aam-ds spec`` to ``parser``; returns the runner."""
    spec_sub = parser.add_subparsers(dest="spec_command", required=True)
    spec_sub.add_parser("schema", help="JSON Schema of the run spec", description="Print the JSON Schema of the run spec.")
    show = spec_sub.add_parser(
        "show",
        help="the resolved spec (file + overrides + defaults)",
        formatter_class=HelpFormatter,
        description="Print the resolved run spec: the file, then the overrides, then every default.",
    )
    add_spec_arguments(show)
    return cmd_spec


def add_ds_config_command(parser: argparse.ArgumentParser) -> Runner:
    """Add the options of ``aam-ds ds-config`` to ``parser``; returns the runner."""
    parser.add_argument("--stage", type=int, choices=[0, 1, 2, 3], required=True, help="ZeRO stage")
    parser.add_argument(
        "--offload",
        choices=["cpu", "nvme"],
        default=None,
        help="offload the optimizer state (and at stage 3 the parameters); default: none",
    )
    parser.add_argument("--nvme-path", type=Path, default=None, help="local NVMe folder, needed with --offload nvme")
    parser.add_argument("--out", type=Path, default=None, help="file to write (default: print)")
    add_spec_arguments(parser)
    return cmd_ds_config


def lazy_command(module: str, add_arguments: str, runner: str) -> Callable[[argparse.ArgumentParser], Runner]:
    """A command whose module is imported only when the command runs (``aam-ds --help`` imports none)."""

    def add_command(parser: argparse.ArgumentParser) -> Runner:
        commands = importlib.import_module(module)
        getattr(commands, add_arguments)(parser)
        return getattr(commands, runner)

    return add_command


COMMANDS: dict[str, tuple[str, Callable[[argparse.ArgumentParser], Runner]]] = {
    "spec": ("print the run spec's JSON Schema or a resolved spec", add_spec_command),
    "ds-config": (
        "write a DeepSpeed config: ZeRO, offload, communication, and the batch / optimiser / precision fields the spec sets",
        add_ds_config_command,
    ),
    "shard": (
        "convert a BIOM table into a sharded on-disk dataset that training reads lazily (data.table: DIR)",
        lazy_command("aam_ds.data.cli", "add_arguments", "run"),
    ),
    "distances": (
        "full distance matrix (unifrac HDF5 layout) with the torch or ssu engine",
        lazy_command("aam_ds.distances.cli", "add_arguments", "run"),
    ),
    "predict": (
        "predict metadata with a fine-tuned model.pt (TSV for `aam-ds evaluate`)",
        lazy_command("aam_ds.inference.cli", "add_arguments", "run"),
    ),
    "export-onnx": (
        "export a model.pt to ONNX (sample embedding and task output) for onnxruntime and `aam-ds predict`",
        lazy_command("aam_ds.inference.cli", "add_export_arguments", "run_export"),
    ),
    "explain": (
        "attention maps and per-ASV / per-taxon feature importance of a model.pt (TSV, NPZ, PNG)",
        lazy_command("aam_ds.explain.cli", "add_arguments", "run"),
    ),
    "evaluate": (
        "metrics, per-group errors, worst samples and plots for a predictions TSV",
        lazy_command("aam_ds.evaluation.cli", "add_evaluate_arguments", "run_evaluate"),
    ),
    "rf-baseline": (
        "scikit-learn random forest on the same folds, side by side",
        lazy_command("aam_ds.evaluation.cli", "add_rf_arguments", "run_rf_baseline"),
    ),
    "tune": (
        "hyperparameter search over run-spec fields with Optuna: pruned trials, resumable study, best spec",
        lazy_command("aam_ds.tune.cli", "add_arguments", "run"),
    ),
    "benchmark": (
        "random forest, linear model and AAM (pretrain + k-fold fine-tuning) on the same folds: one report",
        lazy_command("aam_ds.benchmark.cli", "add_arguments", "run"),
    ),
}

TRAINING_STAGES = {
    "pretrain": "pretrain with DeepSpeed (the code path of launch/pretrain.py)",
    "finetune": "fine-tune with DeepSpeed (the code path of launch/finetune.py)",
    "cv": "k-fold cross-validated fine-tuning (data.split.folds / folds_file): out-of-fold predictions and metrics",
}

TRAINING_EXAMPLES = {
    "pretrain": "aam-ds pretrain --spec run.yaml --set schedule.steps=50",
    "finetune": "aam-ds finetune --spec run.yaml --set model.pretrained=runs/pretrain-latest/model.pt \\\n"
    "    --set loss.task=regression --set data.targets=[age]",
    "cv": "aam-ds cv --spec run.yaml --set loss.task=regression --set data.targets=[age] --set data.split.folds=5",
}


def top_parser() -> tuple[argparse.ArgumentParser, argparse._SubParsersAction]:
    """The ``aam-ds`` parser without its commands, and the action that adds them."""
    parser = argparse.ArgumentParser(
        prog="aam-ds",
        formatter_class=HelpFormatter,
        description="Train AAM microbiome transformers with DeepSpeed: spec, data, distances, training, evaluation.",
        epilog="`aam-ds COMMAND --help` describes a command's options.",
    )
    return parser, parser.add_subparsers(dest="command", required=True, metavar="COMMAND")


def build_parser() -> argparse.ArgumentParser:
    """The top-level parser: it lists the commands (for ``aam-ds --help``) without importing them."""
    parser, sub = top_parser()
    for name, text in {**{n: text for n, (text, _) in COMMANDS.items()}, **TRAINING_STAGES}.items():
        sub.add_parser(name, add_help=False, help=text)
    return parser


def reference_parser() -> argparse.ArgumentParser:
    """The top-level parser with every command's options filled in (importing every command's module):
    the source of the CLI reference in the documentation (docs/cli.rst)."""
    from aam_ds.engine.entry import add_stage_arguments

    parser, sub = top_parser()
    for name, (text, add_command) in COMMANDS.items():
        add_command(sub.add_parser(name, help=text, description=sentence(text), formatter_class=HelpFormatter))
    for stage, text in TRAINING_STAGES.items():
        description = f"{sentence(text)}\n\nexample:\n  {TRAINING_EXAMPLES[stage]}"
        add_stage_arguments(sub.add_parser(stage, help=text, description=description, formatter_class=HelpFormatter))
    return parser


def sentence(text: str) -> str:
    """A command's one-line help as the first sentence of its ``--help``."""
    return text[:1].upper() + text[1:] + "."


def command_parser(name: str) -> tuple[argparse.ArgumentParser, Runner]:
    """The parser of ``aam-ds NAME`` and the function that runs it."""
    text, add_command = COMMANDS[name]
    parser = argparse.ArgumentParser(prog=f"aam-ds {name}", description=sentence(text), formatter_class=HelpFormatter)
    return parser, add_command(parser)


def run_training_stage(stage: str, argv: list[str]) -> None:
    """``aam-ds pretrain|finetune|cv ...``: the launch scripts' code path, in this process."""
    from aam_ds.engine import crossval, trainer
    from aam_ds.engine.entry import run_stage

    stages = {"pretrain": trainer.pretrain, "finetune": trainer.finetune, "cv": crossval.cross_validate}
    description = f"{sentence(TRAINING_STAGES[stage])}\n\nexample:\n  {TRAINING_EXAMPLES[stage]}"
    run_stage(stages[stage], argv, description=description, prog=f"aam-ds {stage}")


def run_command(argv: list[str]) -> int:
    """Parse ``argv`` and run its command; a bad input is one line on stderr (exit 2)."""
    if argv and argv[0] in TRAINING_STAGES:
        run_training_stage(argv[0], argv[1:])  # exits the process with the run's status
    if not argv or argv[0] not in COMMANDS:
        build_parser().parse_args(argv)  # --help, or an error naming the commands; exits
    parser, runner = command_parser(argv[0])
    args = parser.parse_args(argv[1:])
    try:
        return runner(args)
    except AamInputError as exc:
        print(f"aam-ds: error: {exc}", file=sys.stderr)
        return 2


def main(argv: list[str] | None = None) -> int:
    """The ``aam-ds`` entry point. Output piped into a reader that stops early (``| head``) ends
    the command quietly with the status of a process killed by SIGPIPE (141)."""
    show_notices_as_lines()
    try:
        code = run_command(sys.argv[1:] if argv is None else list(argv))
        sys.stdout.flush()  # inside the try: a closed pipe surfaces here, not at interpreter exit
        return code
    except BrokenPipeError:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # so the exit-time flush stays silent
        return 128 + signal.SIGPIPE


if __name__ == "__main__":
    sys.exit(main())
