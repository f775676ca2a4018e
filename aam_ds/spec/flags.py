"""Command flags in the run spec's vocabulary: ``aam-ds distances``, ``aam-ds rf-baseline`` and ``aam-ds predict``
take ``--spec`` / ``--set`` like the training commands, and each of their flags that a spec field also decides
(``--metric`` is ``data.metric``, ``--group-column`` is ``data.split.group_column``, predict's ``--table`` is
``data.table`` ...) is filled from that field.

Precedence: a flag given on the command line, else the field when the spec (file or ``--set``) sets it,
else the flag's own default (the spec field's default where the two mean the same).
"""

from __future__ import annotations

import argparse
from typing import Any, get_args

from aam_ds import cli_args
from aam_ds.spec.files import load_spec
from aam_ds.spec.run import RunSpec
from aam_ds.spec.sections import LossSpec, SplitSpec

SPLIT_KINDS: tuple[str, ...] = get_args(SplitSpec.model_fields["kind"].annotation)  # data.split.kind
TASKS: tuple[str, ...] = tuple(t for t in get_args(LossSpec.model_fields["task"].annotation) if t != "none")  # loss.task


def add_spec_arguments(parser: argparse.ArgumentParser) -> None:
    """``--spec FILE`` and repeatable ``--set KEY=VALUE`` (dest ``overrides``) for a command whose own
    flags the spec fills (:func:`fill_from_spec`)."""
    cli_args.add_spec_arguments(
        parser,
        "run spec (YAML / TOML / JSON) whose fields fill the flags not given",
        "run-spec override, e.g. --set data.metric=jaccard (repeatable)",
    )


def spec_flag_help(text: str, field: str, default: Any = None) -> str:
    """Help of a flag filled from spec field ``field`` (dotted), naming its default."""
    shown = f" (default: {default})" if default is not None else ""
    return f"{text}; or {field} of --spec{shown}"


def fill_from_spec(args: argparse.Namespace, fields: dict[str, tuple[str, Any]]) -> RunSpec:
    """Fill each flag ``dest`` of ``fields`` (``dest -> (dotted spec field, default)``) left unset (None).

    Returns the spec read from ``args.spec`` / ``args.overrides`` (the defaults without them).

    Raises
    ------
    AamInputError
        the spec file or an override is invalid.
    """
    spec = load_spec(args.spec, args.overrides)
    for dest, (field, default) in fields.items():
        if getattr(args, dest) is None:
            given, value = _set_in_spec(spec, field)
            setattr(args, dest, value if given else default)
    return spec


def _set_in_spec(spec: RunSpec, field: str) -> tuple[bool, Any]:
    """Whether the spec sets dotted ``field`` (a file or an override named it), and its value."""
    node: Any = spec
    given = True
    for part in field.split("."):
        given = given and part in node.model_fields_set
        node = getattr(node, part)
    return given, node
