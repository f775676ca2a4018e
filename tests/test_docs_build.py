"""The Sphinx site (docs/): it builds with warnings as errors and holds the API, CLI and run-spec
references, each generated from its one source; every public function, class and method of aam_ds
has a docstring."""

from __future__ import annotations

import importlib
import inspect
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def public_modules() -> list[str]:
    sys.path.insert(0, str(ROOT / "docs" / "_ext"))
    try:
        from aam_docs import public_modules as modules
    finally:
        sys.path.remove(str(ROOT / "docs" / "_ext"))
    return modules()


def documented_in_aam_ds(cls: type, name: str) -> bool:
    """Whether ``cls`` or an aam_ds class it inherits from gives method ``name`` a docstring."""
    return any(
        isinstance(vars(base).get(name), (staticmethod, classmethod)) and vars(base)[name].__func__.__doc__
        or inspect.isfunction(vars(base).get(name)) and vars(base)[name].__doc__
        for base in cls.__mro__ if base.__module__.startswith("aam_ds")
    )  # fmt: skip


def undocumented(module_name: str) -> list[str]:
    """Public objects of ``module_name`` without a docstring: the module, its functions and classes,
    and the public methods of its classes (a docstring on an aam_ds base class counts)."""
    module = importlib.import_module(module_name)
    found = [] if module.__doc__ else [module_name]
    for name, obj in vars(module).items():
        if name.startswith("_") or getattr(obj, "__module__", None) != module_name:
            continue
        if (inspect.isfunction(obj) or inspect.isclass(obj)) and not obj.__doc__:
            found.append(f"{module_name}.{name}")
        if inspect.isclass(obj):
            methods = [m for m, f in vars(obj).items() if not m.startswith("_") and isinstance(f, (staticmethod, classmethod))
                       or not m.startswith("_") and inspect.isfunction(f)]
            found += [f"{module_name}.{name}.{m}" for m in methods if not documented_in_aam_ds(obj, m)]
    return found


def test_every_public_function_has_a_docstring():
    modules = public_modules()
    assert "aam_ds.inference.onnx" in modules and len(modules) > 80
    missing = [name for module in modules for name in undocumented(module)]
    assert not missing, f"{len(missing)} public objects lack a docstring: {missing}"


def test_the_docstring_check_sees_a_missing_docstring(tmp_path, monkeypatch):
    (tmp_path / "aam_ds_probe.py").write_text('"""A module."""\n\n\ndef public(x):\n    return x\n\n\nclass Thing:\n'
                                             '    """A class."""\n\n    def method(self):\n        return 1\n')
    monkeypatch.syspath_prepend(str(tmp_path))
    assert undocumented("aam_ds_probe") == ["aam_ds_probe.public", "aam_ds_probe.Thing.method"]


@pytest.mark.slow
def test_sphinx_builds_with_warnings_as_errors(tmp_path):
    env = {**os.environ, "DS_ACCELERATOR": "cpu", "PYTHONPATH": str(ROOT)}
    result = subprocess.run([sys.executable, "-m", "sphinx", "-W", "--keep-going", "-q", "-b", "html", "docs", str(tmp_path)],
                            cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-4000:]
    assert "WARNING" not in output and "ERROR" not in output, output[-4000:]  # docutils' own messages (argparse help) too
    api = (tmp_path / "api.html").read_text()
    assert all(f'id="module-{name}"' in api for name in public_modules())
    assert 'id="aam_ds.inference.onnx.export_onnx"' in api
    cli = (tmp_path / "cli.html").read_text()
    for command in ("export-onnx", "predict", "pretrain", "tune", "--subset-fraction", "--max-memory-gb"):
        assert command in cli
    from aam_ds.spec import spec_schema

    spec_page, schema = (tmp_path / "run-spec.html").read_text(), spec_schema()
    fields = [field for section in schema["$defs"].values() for field in section.get("properties", {})]
    assert len(fields) > 40 and all(field in spec_page for field in fields)
    for page in ("architecture", "benchmarks", "explain", "input-problems", "tutorials"):
        assert (tmp_path / f"{page}.html").is_file()
