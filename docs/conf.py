"""Sphinx configuration of the aam-ds documentation: ``sphinx-build -W -b html docs docs/_build/html``.

Nothing is executed at build time beyond importing aam_ds: the API reference is autodoc over every
public module, the CLI reference is sphinx-argparse over :func:`aam_ds.cli.reference_parser` and
the run-spec reference is generated from :func:`aam_ds.spec.spec_schema` (docs/_ext/aam_docs.py).
"""

import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(Path(__file__).parent / "_ext")]
os.environ.setdefault("DS_ACCELERATOR", "cpu")  # importing deepspeed on a machine without a GPU

project = "aam-ds"
author = "aam-ds contributors"
extensions = ["sphinx.ext.autodoc", "sphinx.ext.napoleon", "myst_parser", "sphinxarg.ext", "aam_docs"]
source_suffix = {".rst": "restructuredtext", ".md": "markdown"}
exclude_patterns = ["_build"]
html_theme = "furo"
html_title = "aam-ds"
autodoc_member_order = "bysource"
# members defined in each module only: a package's __all__ re-exports are documented where they are defined
autodoc_default_options = {"members": True, "show-inheritance": True, "ignore-module-all": True}
napoleon_google_docstring = True
napoleon_numpy_docstring = True
myst_heading_anchors = 3
