"""Command-line options that several ``aam-ds`` commands share; imports argparse only, so that any
command's ``--help`` stays fast."""

from __future__ import annotations

import argparse
from pathlib import Path

SPEC_HELP = "run spec (YAML, TOML or JSON); default: every field at its default"
SET_HELP = "override a spec field, e.g. --set model.d_model=256 (repeatable)"


def add_set_argument(parser: argparse.ArgumentParser, help: str = SET_HELP) -> None:
    """Repeatable ``--set KEY=VALUE`` run-spec overrides, collected in ``args.overrides`` (a list of str)."""
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE", help=help)


def add_spec_arguments(parser: argparse.ArgumentParser, spec_help: str = SPEC_HELP, set_help: str = SET_HELP) -> None:
    """``--spec FILE`` (``args.spec``, a Path or None) and :func:`add_set_argument`'s ``--set``."""
    parser.add_argument("--spec", type=Path, default=None, help=spec_help)
    add_set_argument(parser, set_help)
