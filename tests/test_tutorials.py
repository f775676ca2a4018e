"""The tutorials of docs/tutorials: jupytext percent scripts, each a page of the site's tutorial list.

The documentation build executes them (myst-nb, on 4 steps each) and renders their outputs; that
one execution is what CI runs and checks (tests/test_docs_build.py), so they are not run again here.
"""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_tutorials_are_jupytext_percent_scripts_listed_on_the_tutorials_page():
    page = (ROOT / "docs" / "tutorials.md").read_text()
    toctree = re.search(r"```\{toctree\}\n(.*?)```", page, re.S).group(1).split()
    scripts = sorted((ROOT / "docs" / "tutorials").glob("*.py"))
    assert len(scripts) >= 3
    for script in scripts:
        text = script.read_text()
        assert "format_name: percent" in text and text.count("# %% [markdown]") >= 2, script
        assert f"tutorials/{script.stem}" in toctree, f"{script.name} is not in the toctree of docs/tutorials.md"
    assert "tutorials/multi_gpu" in toctree  # the read-only recipes page (Markdown, not executed)
