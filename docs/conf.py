"""Sphinx configuration of the aam-ds documentation: ``sphinx-build -W -b html docs docs/_build/html``.

The API reference is autodoc over every public module, the CLI reference is sphinx-argparse over
:func:`aam_ds.cli.reference_parser` and the run-spec reference is generated from
:func:`aam_ds.spec.spec_schema` (docs/_ext/aam_docs.py). The tutorials (jupytext percent scripts in
docs/tutorials/) are executed by myst-nb and shown with their outputs; their budgets come from the
environment (``AAM_TUTORIAL_STEPS``: optimiser steps, ``AAM_TUTORIAL_DIR``: where the runs go; CI
runs 4 steps). Executed outputs are cached under the build folder (jupyter-cache), so a rebuild
runs only the tutorials that changed; ``AAM_DOCS_EXECUTE=off`` builds without running them.
"""

import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(Path(__file__).parent / "_ext")]
os.environ.setdefault("DS_ACCELERATOR", "cpu")  # importing deepspeed on a machine without a GPU

project = "aam-ds"
author = "aam-ds contributors"
extensions = ["sphinx.ext.autodoc", "sphinx.ext.napoleon", "myst_nb", "sphinxarg.ext", "aam_docs"]
# conf.py and _ext/ are Python files too, but not tutorials
exclude_patterns = ["_build", "conf.py", "_ext"]
html_theme = "furo"
html_title = "aam-ds"
autodoc_member_order = "bysource"
# members defined in each module only: a package's __all__ re-exports are documented where they are defined
autodoc_default_options = {"members": True, "show-inheritance": True, "ignore-module-all": True}
napoleon_google_docstring = True
napoleon_numpy_docstring = True
myst_heading_anchors = 3

# tutorials: jupytext percent scripts, executed (an error fails the build) and rendered with their outputs
nb_custom_formats = {".py": ["jupytext.reads", {"fmt": "py:percent"}]}
nb_execution_mode = os.environ.get("AAM_DOCS_EXECUTE", "cache")
nb_execution_raise_on_error = True
nb_execution_show_tb = True
nb_execution_timeout = 1800  # seconds per cell: the default budgets train for minutes on a laptop CPU
