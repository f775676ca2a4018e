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
        isinstance(vars(base).get(name), (staticmethod, classmethod))
        and vars(base)[name].__func__.__doc__
        or inspect.isfunction(vars(base).get(name))
        and vars(base)[name].__doc__
        for base in cls.__mro__
        if base.__module__.startswith("aam_ds")
    )


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
            methods = [
                m
                for m, f in vars(obj).items()
                if not m.startswith("_") and isinstance(f, (staticmethod, classmethod)) or not m.startswith("_") and inspect.isfunction(f)
            ]
            found += [f"{module_name}.{name}.{m}" for m in methods if not documented_in_aam_ds(obj, m)]
    return found


def test_every_public_function_has_a_docstring():
    modules = public_modules()
    assert "aam_ds.inference.onnx" in modules and len(modules) > 80
    missing = [name for module in modules for name in undocumented(module)]
    assert not missing, f"{len(missing)} public objects lack a docstring: {missing}"


def test_the_docstring_check_sees_a_missing_docstring(tmp_path, monkeypatch):
    (tmp_path / "aam_ds_probe.py").write_text(
        '"""A module."""\n\n\ndef public(x):\n    return x\n\n\nclass Thing:\n'
        '    """A class."""\n\n    def method(self):\n        return 1\n'
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    assert undocumented("aam_ds_probe") == ["aam_ds_probe.public", "aam_ds_probe.Thing.method"]


# ipykernel's own line on the kernel's stderr (a local kernel on 127.0.0.1), not a documentation warning
KERNEL_TRANSPORT_NOTICE = "[IPKernelApp] WARNING | Kernel is running over TCP without encryption"


@pytest.mark.slow
def test_sphinx_builds_with_warnings_as_errors_and_executes_the_tutorials(tmp_path):
    """One build: the references, and the tutorials executed once on 4 steps each and rendered with their outputs."""
    site, runs = tmp_path / "html", tmp_path / "runs"
    env = {
        **os.environ,
        "DS_ACCELERATOR": "cpu",
        "PYTHONPATH": str(ROOT),
        "OMP_NUM_THREADS": "1",
        "AAM_TUTORIAL_STEPS": "4",
        "AAM_TUTORIAL_DIR": str(runs),
        "AAM_DOCS_EXECUTE": "cache",
    }
    result = subprocess.run(
        [sys.executable, "-m", "sphinx", "-W", "--keep-going", "-q", "-b", "html", "docs", str(site)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    output = "\n".join(line for line in (result.stdout + result.stderr).splitlines() if KERNEL_TRANSPORT_NOTICE not in line)
    assert result.returncode == 0, output[-4000:]
    assert "WARNING" not in output and "ERROR" not in output, output[-4000:]  # docutils' own messages (argparse help) too
    check_references(site)
    check_tutorials(site, runs)


def check_tutorials(site: Path, runs: Path) -> None:
    """Each tutorial page holds its executed outputs: printed results and inline figures."""
    pages = {name: (site / "tutorials" / f"{name}.html").read_text() for name in ("quickstart", "own_data", "distances", "multi_gpu")}
    figures = {name: page.count('<img alt="../_images/') for name, page in pages.items()}
    assert figures == {"quickstart": 1, "own_data": 2, "distances": 1, "multi_gpu": 0}, figures
    assert "4 training records, 1 evaluations" in pages["quickstart"]
    assert "pretrained 4 steps" in pages["own_data"] and "balanced_accuracy" in pages["own_data"]
    assert "max |difference|" in pages["distances"] and "held-out samples; Mantel r" in pages["distances"]
    assert "hostfile" in pages["multi_gpu"] and "--no_ssh" in pages["multi_gpu"]  # the README's multi-node section, included
    assert (runs / "tutorial-quickstart" / "learning_curves.png").is_file()
    assert (runs / "tutorial-own-data" / "evaluate" / "confusion_matrix.png").is_file()
    assert (runs / "tutorial-distances" / "pretrain" / "model.pt").is_file()


def check_references(site: Path) -> None:
    """The API, CLI and run-spec references, each generated from its one source, and the docs/ pages."""
    api = (site / "api.html").read_text()
    assert all(f'id="module-{name}"' in api for name in public_modules())
    assert 'id="aam_ds.inference.onnx.export_onnx"' in api
    cli = (site / "cli.html").read_text()
    for command in ("export-onnx", "predict", "pretrain", "tune", "--subset-fraction", "--max-memory-gb"):
        assert command in cli
    from aam_ds.spec import spec_schema

    spec_page, schema = (site / "run-spec.html").read_text(), spec_schema()
    fields = [field for section in schema["$defs"].values() for field in section.get("properties", {})]
    assert len(fields) > 40 and all(field in spec_page for field in fields)
    for page in ("architecture", "benchmarks", "explain", "input-problems", "tutorials"):
        assert (site / f"{page}.html").is_file()
