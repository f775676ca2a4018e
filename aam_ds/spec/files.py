"""Reading a run spec: YAML / TOML / JSON files, dotted ``--set`` overrides, validation errors as one
AamInputError per problem, the JSON schema."""

from __future__ import annotations

import json
import tomllib
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from aam_ds.errors import AamInputError
from aam_ds.spec.run import RunSpec

# --------------------------------------------------------------------------------------------
# loading, overrides, error reporting


def read_spec_file(path: Path) -> dict[str, Any]:
    """Parse a YAML, TOML or JSON spec file into a plain dict (chosen by suffix)."""
    path = Path(path)
    if not path.is_file():
        raise AamInputError(str(path), "spec file not found", "check the path given to --spec")
    text = path.read_text()
    try:
        if path.suffix == ".toml":
            raw = tomllib.loads(text)
        elif path.suffix == ".json":
            raw = json.loads(text)
        elif path.suffix in (".yaml", ".yml"):
            raw = yaml.safe_load(text) or {}
        else:
            raise AamInputError(str(path), f"unknown spec format '{path.suffix}'", "use .yaml, .yml, .toml or .json")
    except (ValueError, yaml.YAMLError) as exc:
        if isinstance(exc, AamInputError):
            raise
        raise AamInputError(str(path), f"cannot be parsed: {exc}", "fix the syntax error") from exc
    if not isinstance(raw, dict):
        raise AamInputError(str(path), "top level is not a mapping", "write sections such as 'model:' at the top level")
    return raw


def apply_overrides(raw: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply ``section.key=value`` overrides; values are parsed as YAML scalars/lists."""
    for item in overrides:
        if "=" not in item:
            raise AamInputError(f"--set {item}", "expected dotted.key=value", "write e.g. --set model.d_model=256")
        key, value = item.split("=", 1)
        node = raw
        parts = key.strip().split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise AamInputError(f"--set {item}", f"'{part}' is not a section", "override a field inside a section")
        node[parts[-1]] = yaml.safe_load(value) if value.strip() else None
    return raw


def format_validation_error(exc: ValidationError, source: str) -> AamInputError:
    """Turn pydantic's error list into one AamInputError naming every bad field."""
    lines = []
    for err in exc.errors():
        field = ".".join(str(p) for p in err["loc"]) or "<spec>"
        msg = err["msg"].removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            msg = "unknown key (not a field of this section; check the spelling against `aam-ds spec schema`)"
        lines.append(f"  {field}: {msg}")
    return AamInputError(source, "invalid run spec:\n" + "\n".join(lines), "correct the fields listed above")


def build_spec(raw: dict[str, Any], source: str = "<spec>") -> RunSpec:
    """Validate ``raw`` as a RunSpec; AamInputError lists every invalid field of ``source``."""
    try:
        return RunSpec.model_validate(raw)
    except ValidationError as exc:
        raise format_validation_error(exc, source) from None


def load_spec(path: Path | None = None, overrides: list[str] | None = None) -> RunSpec:
    """Load a spec file (optional) and apply dotted overrides; validate everything at once."""
    raw = read_spec_file(path) if path else {}
    raw = apply_overrides(raw, overrides or [])
    return build_spec(raw, source=str(path) if path else "run spec")


def spec_schema() -> dict[str, Any]:
    """The JSON Schema of the run spec (pydantic's, with every field's default and description)."""
    return RunSpec.model_json_schema()
