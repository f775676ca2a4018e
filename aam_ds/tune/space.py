"""The search space of ``aam-ds tune``: a YAML mapping from run-spec fields (dotted) to distributions.

    optim.lr: {type: log, low: 1.0e-4, high: 1.0e-2}         # float, log-uniform (= type: float, log: true)
    optim.weight_decay: {type: float, low: 0.0, high: 0.1}
    model.d_model: {type: int, low: 32, high: 128, step: 32}
    model.preset: {type: categorical, choices: [tiny, small]}

Any field of the run spec can be searched (``aam-ds spec schema`` lists them) except those that
tune sets for every trial (its run folder and name, resuming, overwriting). Every entry is checked
before the first trial: the field exists, the range is valid (low < high, log ranges positive,
a positive step, non-empty choices), and the run spec accepts both ends of the range (or every
choice), so a bad space fails at once, naming the entry, instead of in a late trial.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel

from aam_ds.errors import AamInputError
from aam_ds.spec import RunSpec, build_spec

KINDS = ("float", "int", "log", "categorical")
KEYS = {
    "float": {"type", "low", "high", "log", "step"},
    "int": {"type", "low", "high", "log", "step"},
    "log": {"type", "low", "high"},
    "categorical": {"type", "choices"},
}
SET_BY_TUNE = ("tracking.run_dir", "tracking.name", "tracking.overwrite", "checkpoint.resume", "checkpoint.dir")
EXAMPLE = "e.g. optim.lr: {type: log, low: 1.0e-4, high: 1.0e-2}"


@dataclass(frozen=True)
class Dimension:
    """One searched spec field: ``kind`` float / int / categorical, ``low`` / ``high`` / ``step`` / ``log``
    for numbers, ``choices`` for categories."""

    field: str
    kind: str
    low: float | int | None = None
    high: float | int | None = None
    step: float | int | None = None
    log: bool = False
    choices: tuple[Any, ...] = ()

    def suggest(self, trial: Any) -> Any:
        """Draw this field's value for an Optuna ``trial`` (rank 0 only: it talks to the storage)."""
        if self.kind == "categorical":
            return trial.suggest_categorical(self.field, list(self.choices))
        if self.kind == "int":
            return trial.suggest_int(self.field, self.low, self.high, step=self.step or 1, log=self.log)
        return trial.suggest_float(self.field, self.low, self.high, step=self.step, log=self.log)

    def extremes(self) -> list[Any]:
        """The values the run spec must accept: both ends of a range, or every choice."""
        return list(self.choices) if self.kind == "categorical" else [self.low, self.high]


def set_fields(raw: dict[str, Any], values: dict[str, Any]) -> dict[str, Any]:
    """A deep copy of the raw spec dict with each dotted field set, e.g. ``{"optim.lr": 0.01}``."""
    raw = copy.deepcopy(raw)
    for field, value in values.items():
        node = raw
        *sections, name = field.split(".")
        for section in sections:
            node = node.setdefault(section, {})
        node[name] = value
    return raw


def check_field(field: str, source: str) -> None:
    """Raise AamInputError unless ``field`` (dotted) names a field of the run spec that tune may search."""
    model: type[BaseModel] = RunSpec
    parts = field.split(".")
    for depth, part in enumerate(parts):
        info = model.model_fields.get(part)
        last = depth == len(parts) - 1
        section = info is not None and isinstance(info.annotation, type) and issubclass(info.annotation, BaseModel)
        if info is None or last == section:
            kind = "a section, not a field" if info is not None and section else "not a field of the run spec"
            raise AamInputError(f"{source}: {field}", kind, "name a field as section.key (`aam-ds spec schema` lists them), " + EXAMPLE)
        if not last:
            model = info.annotation
    if field in SET_BY_TUNE:
        raise AamInputError(f"{source}: {field}", "is set by aam-ds tune for every trial", "remove it from the search space")


def parse_dimension(field: str, entry: Any, source: str) -> Dimension:
    """One entry of the space file as a :class:`Dimension`, its range checked (AamInputError naming it)."""
    where = f"{source}: {field}"
    if not isinstance(entry, dict) or entry.get("type") not in KINDS:
        raise AamInputError(where, f"needs a mapping with type one of {', '.join(KINDS)}", EXAMPLE)
    kind = entry["type"]
    unknown = sorted(set(entry) - KEYS[kind])
    if unknown:
        raise AamInputError(where, f"unknown keys {unknown} for type {kind}", f"use only {sorted(KEYS[kind])}")
    if kind == "categorical":
        choices = entry.get("choices")
        if not isinstance(choices, list) or not choices or any(isinstance(c, (list, dict)) for c in choices):
            raise AamInputError(where, "choices must be a non-empty list of plain values", "write e.g. choices: [tiny, small]")
        return Dimension(field, kind, choices=tuple(choices))
    low, high, step, log = entry.get("low"), entry.get("high"), entry.get("step"), bool(entry.get("log", False)) or kind == "log"
    number = int if kind == "int" else (int, float)
    for name, value in (("low", low), ("high", high), ("step", step)):
        if (value is not None or name != "step") and (isinstance(value, bool) or not isinstance(value, number)):
            raise AamInputError(where, f"{name}={value!r} is not {'an integer' if kind == 'int' else 'a number'}", EXAMPLE)
    if not low < high:
        raise AamInputError(where, f"invalid range: low={low} is not below high={high}", "give low < high")
    if log and low <= 0:
        raise AamInputError(where, f"invalid range: a log scale needs low > 0 (got {low})", "raise low above 0, or drop the log scale")
    if step is not None and (step <= 0 or log):
        raise AamInputError(where, f"invalid step={step}: it must be > 0 and cannot be combined with a log scale", "fix or drop step")
    return Dimension(field, "int" if kind == "int" else "float", low, high, step, log)


@dataclass(frozen=True)
class SearchSpace:
    """The parsed, checked search space: one :class:`Dimension` per searched field, in file order."""

    dimensions: tuple[Dimension, ...]
    source: str

    def suggest(self, trial: Any) -> dict[str, Any]:
        """field -> value for an Optuna trial."""
        return {d.field: d.suggest(trial) for d in self.dimensions}


def load_space(path: Path, base: dict[str, Any]) -> SearchSpace:
    """Read and check the space file against the raw run spec ``base`` (file + overrides).

    Raises
    ------
    AamInputError
        The file is missing or not a mapping; an entry names an unknown spec field, has an invalid
        range, or a value (an end of its range, a choice) that the run spec refuses.
    """
    path = Path(path)
    if not path.is_file():
        raise AamInputError(str(path), "search space file not found", "check the path given to --space")
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise AamInputError(str(path), f"cannot be parsed: {exc}", "fix the YAML syntax") from None
    if not isinstance(raw, dict) or not raw:
        raise AamInputError(str(path), "is not a mapping of spec fields to distributions", EXAMPLE)
    dimensions = []
    for field, entry in raw.items():
        check_field(str(field), str(path))
        dimension = parse_dimension(str(field), entry, str(path))
        for value in dimension.extremes():
            try:
                build_spec(set_fields(base, {dimension.field: value}), f"{path}: {field}={value!r}")
            except AamInputError as exc:
                raise AamInputError(
                    f"{path}: {field}",
                    f"the run spec refuses {value!r}: {exc.problem}",
                    "keep the range within the values the field accepts",
                ) from None
        dimensions.append(dimension)
    return SearchSpace(tuple(dimensions), str(path))
