"""The container image's recipe (container/Containerfile, built and smoke-tested by container/build.sh,
which takes minutes and needs podman, so CI does not run it): what the final stage holds, and that
every runtime dependency of pyproject.toml has a pinned version in container/constraints.txt."""

from __future__ import annotations

import re
import subprocess
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CONTAINER = ROOT / "container"


def final_stage() -> str:
    """The Containerfile's text from its last FROM on."""
    text = (CONTAINER / "Containerfile").read_text()
    return text[text.rindex("\nFROM ") :]


def normalise(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def test_every_runtime_dependency_is_pinned_for_the_image():
    dependencies = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    names = {normalise(re.match(r"[A-Za-z0-9_.-]+", d).group()) for d in dependencies} - {"torch"}  # torch: the TORCH build argument
    pinned = {
        normalise(line.split("==")[0])
        for line in (CONTAINER / "constraints.txt").read_text().splitlines()
        if "==" in line and not line.startswith("#")
    }
    assert names and not names - pinned, f"not pinned in container/constraints.txt (bash container/build.sh --freeze): {names - pinned}"
    assert re.search(r"ARG TORCH=torch==\d+\.\d+\.\d+\n", (CONTAINER / "Containerfile").read_text())


def test_final_stage_runs_aam_ds_as_a_user_without_build_tools():
    stage = final_stage()
    assert stage.count("\nFROM ") == 1 and "COPY --from=build /opt/aam-ds/venv" in stage
    assert re.search(r"^USER (?!root|0\b)\w+", stage, re.M) and 'ENTRYPOINT ["aam-ds"]' in stage
    installed = " ".join(re.findall(r"apt-get install ([^&\\]+)", stage))
    assert "python3" in installed and not re.search(r"build-essential|gcc|g\+\+|-dev\b|python3-pip|python3-venv", installed)
    assert "pip install" not in stage


def test_build_script_parses():
    assert subprocess.run(["bash", "-n", str(CONTAINER / "build.sh")], capture_output=True).returncode == 0
