"""The tutorials of docs/tutorials (jupytext percent scripts) run from top to bottom on a small budget."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_quickstart_tutorial_runs_and_plots_the_learning_curves(tmp_path):
    run_dir = tmp_path / "run"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "AAM_TUTORIAL_STEPS": "4", "AAM_TUTORIAL_DIR": str(run_dir)}
    result = subprocess.run([sys.executable, "docs/tutorials/quickstart.py"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, (result.stdout + result.stderr)[-4000:]
    assert "4 training records, 1 evaluations" in result.stdout
    for name in ("metrics.jsonl", "model.pt", "learning_curves.png"):
        assert (run_dir / name).is_file()
    assert (run_dir / "learning_curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_tutorials_are_jupytext_percent_scripts_shown_in_the_docs():
    page = (ROOT / "docs" / "tutorials.md").read_text()
    for script in sorted((ROOT / "docs" / "tutorials").glob("*.py")):
        text = script.read_text()
        assert "format_name: percent" in text and text.count("# %% [markdown]") >= 2, script
        assert f"tutorials/{script.name}" in page, f"{script.name} is not on docs/tutorials.md"
