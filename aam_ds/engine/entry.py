"""Command-line plumbing shared by ``launch/pretrain.py`` and ``launch/finetune.py``.

Works under the deepspeed launcher (which appends ``--local_rank=N``), under torchrun (which
sets LOCAL_RANK) and as a plain one-process ``python launch/pretrain.py``.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Callable, Sequence

from aam_ds.cli_args import add_spec_arguments
from aam_ds.errors import AamInputError, show_notices_as_lines
from aam_ds.help_format import HelpFormatter
from aam_ds.spec import RunSpec, load_spec


def parse_args(argv: Sequence[str] | None, description: str, prog: str | None = None) -> argparse.Namespace:
    """The options of a training stage; ``prog`` names the command in ``--help`` (default: the script's name)."""
    return add_stage_arguments(argparse.ArgumentParser(prog=prog, description=description, formatter_class=HelpFormatter)).parse_args(argv)


def add_stage_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Add the options of a training stage (``--spec``, ``--set``, ``--ds-config``, ...) to ``parser``; returns it."""
    add_spec_arguments(parser, "run spec (YAML, TOML or JSON); default: the built-in demo run")
    parser.add_argument(
        "--ds-config",
        type=Path,
        help="DeepSpeed JSON; decides ZeRO, offload, precision (must agree with the spec); default: generated from the spec",
    )
    parser.add_argument(
        "--resume",
        action="store_true",
        help="continue from <checkpoint dir>/latest (without tracking.run_dir: the run runs/<stage>-latest links to)",
    )
    parser.add_argument(
        "--max-memory-gb",
        default=None,
        metavar="GIB|auto",
        help="pick the largest micro batch whose real steps fit this per-rank budget (sets parallel.max_memory_gb)",
    )
    parser.add_argument("--local_rank", "--local-rank", type=int, default=None, help="set by the deepspeed launcher")
    return parser


def run_stage(
    stage: Callable[[RunSpec, Path | None], object], argv: Sequence[str] | None = None, description: str = "", prog: str | None = None
) -> None:
    """Parse arguments, run ``stage(spec, ds_config_path)`` on this rank, and exit the process.

    Any failure, from parsing the spec to the last step, is printed once with this rank's number:
    a bad input as one line (exit 2), Ctrl-C as one line (exit 130, after the training loop saved a
    checkpoint), anything else with its traceback (exit 1).
    """
    from aam_ds.engine.distributed import exit_process, launcher_rank, report_rank_failure

    args = parse_args(argv, description, prog)
    rank = launcher_rank()  # the process group does not exist yet
    show_notices_as_lines(show=rank == 0)  # one line each, from rank 0 only
    if args.local_rank is not None:
        os.environ.setdefault("LOCAL_RANK", str(args.local_rank))
    try:
        with report_rank_failure(rank):
            overrides = args.overrides + (["checkpoint.resume=true"] if args.resume else [])
            overrides += [f"parallel.max_memory_gb={args.max_memory_gb}"] if args.max_memory_gb else []
            stage(load_spec(args.spec, overrides), args.ds_config)
    except AamInputError:
        exit_process(2)
    except KeyboardInterrupt:
        exit_process(130)
    except BaseException:
        exit_process(1)
    exit_process(0)
