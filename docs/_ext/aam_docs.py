"""Sphinx directives of the aam-ds docs, so that each reference has one source:

- ``.. aam-api::``: an ``automodule`` section for every public module of aam_ds (found by walking
  the package, so a new module needs no edit here);
- ``.. aam-run-spec::``: the run-spec reference, one table per section, from
  :func:`aam_ds.spec.spec_schema` (the pydantic models' JSON Schema).
"""

from __future__ import annotations

import json
import pkgutil

from docutils import nodes
from docutils.statemachine import StringList
from sphinx.util.docutils import SphinxDirective
from sphinx.util.nodes import nested_parse_with_titles


def public_modules() -> list[str]:
    """Every module of aam_ds whose dotted name has no part starting with ``_``, sorted."""
    import aam_ds

    names = ["aam_ds"] + [m.name for m in pkgutil.walk_packages(aam_ds.__path__, "aam_ds.")]
    return sorted(n for n in names if not any(part.startswith("_") for part in n.split(".")))


class _Generated(SphinxDirective):
    """A directive whose content is reStructuredText made by :meth:`lines` at build time."""

    def lines(self) -> list[str]:
        """The reStructuredText to parse in place of the directive."""
        raise NotImplementedError

    def run(self):
        """Parse :meth:`lines` (section titles allowed) and return the nodes."""
        container = nodes.container()
        nested_parse_with_titles(self.state, StringList(self.lines(), "<aam_docs>"), container)
        return container.children


class ApiDirective(_Generated):
    """``.. aam-api::``: a section with ``automodule`` for every public module."""

    def lines(self) -> list[str]:
        out = []
        for name in public_modules():
            out += [name, "-" * len(name), "", f".. automodule:: {name}", ""]
        return out


def _type(prop: dict, defs: dict) -> str:
    if "$ref" in prop:
        return prop["$ref"].rsplit("/", 1)[-1]
    if "enum" in prop:
        return " | ".join(json.dumps(v) for v in prop["enum"])
    if "const" in prop:
        return json.dumps(prop["const"])
    if "anyOf" in prop:
        return " | ".join(_type(p, defs) for p in prop["anyOf"])
    if prop.get("type") == "array":
        return f"list[{_type(prop.get('items', {}), defs)}]"
    return prop.get("type", "any")


def _cell(text: str) -> str:
    """A description as one line of RST text (markup characters escaped)."""
    return text.replace("\n", " ").replace("\\", "\\\\").replace("*", "\\*").replace("|", "\\|").replace("`", "\\`") or " "


def _table(title: str, schema: dict, defs: dict) -> list[str]:
    out = [title, "-" * len(title), "", schema.get("description", "").strip(), "",
           ".. list-table::", "   :header-rows: 1", "   :widths: 20 20 15 45", "",
           "   * - field", "     - type", "     - default", "     - description"]
    for name, prop in schema.get("properties", {}).items():
        required = name in schema.get("required", ())
        default = json.dumps(prop["default"]) if "default" in prop else "(required)" if required else "(its defaults)"
        out += [f"   * - ``{name}``", f"     - ``{_type(prop, defs)}``", f"     - ``{default}``",
                f"     - {_cell(prop.get('description', ''))}"]
    return out + [""]


class RunSpecDirective(_Generated):
    """``.. aam-run-spec::``: one table per section of the run spec."""

    def lines(self) -> list[str]:
        from aam_ds.spec import spec_schema

        schema = spec_schema()
        defs = schema.get("$defs", {})
        out = _table("RunSpec (top level)", schema, defs)
        for name, sub in defs.items():
            if sub.get("type") == "object":
                out += _table(name, sub, defs)
        return out


def setup(app):
    app.add_directive("aam-api", ApiDirective)
    app.add_directive("aam-run-spec", RunSpecDirective)
    return {"parallel_read_safe": True, "version": "1"}
