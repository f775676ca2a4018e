"""Package layering: the training engine and inference never import each other, and the model
package depends on torch alone.

Engine and inference sit on the neutral modules below them (aam_ds.export: the model file;
aam_ds.prediction: a model's predictions on preprocessed samples; aam_ds.data, aam_ds.model, ...).
``aam_ds/model`` imports nothing of aam_ds outside itself (no run spec, no pydantic: its config is
the ModelConfig dataclass beside the model) and no third-party package but torch. Every module is
parsed with :mod:`ast`, and every import at any depth (module level, inside functions, relative,
``from aam_ds import inference``, ``importlib.import_module`` with a literal name) is checked.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "aam_ds"
FORBIDDEN = {"engine": "aam_ds.inference", "inference": "aam_ds.engine"}


def module_name(path: Path, root: Path) -> str:
    parts = path.relative_to(root.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(path: Path, root: Path) -> list[tuple[int, list[str]]]:
    """Per import statement anywhere in ``path``: its line and the dotted names it may load."""
    this = module_name(path, root)
    package = this if path.name == "__init__.py" else this.rpartition(".")[0]
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.append((node.lineno, [alias.name for alias in node.names]))
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: resolve against this module's package
                parts = package.split(".")
                base = ".".join(parts[: len(parts) - (node.level - 1)] + ([node.module] if node.module else []))
            found.append((node.lineno, [base] + [f"{base}.{alias.name}" for alias in node.names]))  # from aam_ds import inference
        elif isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str):
            func = node.func
            if (func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")) in ("import_module", "__import__"):
                found.append((node.lineno, [node.args[0].value]))
    return sorted(found)


def violations(package: str, root: Path = PACKAGE) -> list[str]:
    """``"<file>:<line> imports <name>"`` for each import of the package ``package`` must not use."""
    forbidden = FORBIDDEN[package]
    found = []
    for path in sorted((root / package).rglob("*.py")):
        for line, names in imports(path, root):
            bad = [n for n in names if n == forbidden or n.startswith(forbidden + ".")]
            if bad:
                found.append(f"{path.relative_to(root.parent)}:{line} imports {bad[0]}")
    return found


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_engine_and_inference_do_not_import_each_other(package):
    assert len(list((PACKAGE / package).rglob("*.py"))) > 1
    found = violations(package)
    assert not found, f"aam_ds/{package} must not import {FORBIDDEN[package]}:\n" + "\n".join(found)


def model_violations(root: Path = PACKAGE) -> list[str]:
    """``"<file>:<line> imports <name>"`` for each import in ``aam_ds/model`` of a module of aam_ds
    outside aam_ds.model, or of a third-party package other than torch."""
    found = []
    for path in sorted((root / "model").rglob("*.py")):
        for line, names in imports(path, root):
            top = {n.split(".")[0] for n in names}
            outside = [n for n in names if n.startswith("aam_ds.") and n != "aam_ds.model" and not n.startswith("aam_ds.model.")]
            foreign = sorted(t for t in top if t not in ("aam_ds", "torch", "__future__") and t not in sys.stdlib_module_names)
            if outside or foreign:
                found.append(f"{path.relative_to(root.parent)}:{line} imports {(outside or foreign)[0]}")
    return found


def test_the_model_package_depends_on_torch_alone():
    assert len(list((PACKAGE / "model").rglob("*.py"))) > 1
    found = model_violations()
    assert not found, "aam_ds/model must import only torch, the standard library and aam_ds.model:\n" + "\n".join(found)


def test_the_model_scan_catches_the_run_spec_pydantic_and_other_packages(tmp_path):
    fake = tmp_path / "aam_ds"
    (fake / "model").mkdir(parents=True)
    (fake / "model" / "net.py").write_text(
        "import math\nimport torch.nn\nfrom aam_ds.model.config import ModelConfig\nfrom . import blocks\n"
        "from aam_ds.spec import ModelSpec\n"
        "def f():\n    import pydantic\n"
        "def g():\n    from .. import errors\n"
        "from aam_ds.data.sequences import PAD\n"
    )
    assert model_violations(fake) == [
        "aam_ds/model/net.py:5 imports aam_ds.spec",
        "aam_ds/model/net.py:7 imports pydantic",
        "aam_ds/model/net.py:9 imports aam_ds.errors",
        "aam_ds/model/net.py:10 imports aam_ds.data.sequences",
    ]


def test_the_import_scan_sees_imports_at_any_depth(tmp_path):
    """The scanner itself: imports inside functions, relative ones, ``from aam_ds import inference``
    and ``importlib.import_module`` are all caught; other imports are not."""
    fake = tmp_path / "aam_ds"
    (fake / "engine").mkdir(parents=True)
    (fake / "engine" / "nested.py").write_text(
        "import aam_ds.data.dataset\n"
        "def f():\n    from aam_ds.inference.predict import predict_split\n"
        "def g():\n    from ..inference import predict\n"
        "def h():\n    from aam_ds import inference, model\n"
        "def k():\n    import importlib\n    importlib.import_module('aam_ds.inference.cli')\n"
        "class C:\n    def m(self):\n        import aam_ds.inference\n"
    )
    assert violations("engine", fake) == [
        "aam_ds/engine/nested.py:3 imports aam_ds.inference.predict",
        "aam_ds/engine/nested.py:5 imports aam_ds.inference",
        "aam_ds/engine/nested.py:7 imports aam_ds.inference",
        "aam_ds/engine/nested.py:10 imports aam_ds.inference.cli",
        "aam_ds/engine/nested.py:13 imports aam_ds.inference",
    ]
