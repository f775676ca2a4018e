"""Shared test fixtures: the real public data folder, the demo dataset, artifact builders, an MLflow server."""

from __future__ import annotations

import fcntl
import os
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
import zipfile
from pathlib import Path
from typing import Callable

import pytest
from hypothesis import HealthCheck, settings

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
SHARED_CASES = SHARED_DATA.parent / "cases"

# property-based tests: few, reproducible examples in CI; `pytest --hypothesis-profile long` for a local hunt
settings.register_profile(
    "ci", max_examples=20, deadline=None, derandomize=True, print_blob=True, suppress_health_check=[HealthCheck.too_slow]
)
settings.register_profile("long", max_examples=1000, deadline=None, print_blob=True, suppress_health_check=[HealthCheck.too_slow])
settings.load_profile("ci")


@pytest.fixture(autouse=True)
def _no_leaked_launch_environment():
    """An in-process training run sets MASTER_PORT & co. in os.environ (its one-process group keeps
    that port bound); restore them after each test so that a later test's subprocess does not
    inherit a port that this process still holds (EADDRINUSE)."""
    from aam_ds.engine.distributed import LAUNCH_VARS

    saved = {name: os.environ.get(name) for name in LAUNCH_VARS}
    yield
    for name, value in saved.items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value


@pytest.fixture
def documented_master_port():
    """DeepSpeed's default rendezvous port (29500), held by this test alone for its duration.

    A test that runs a documented ``deepspeed ...`` command as written rendezvouses on 29500. Under
    pytest-xdist two such tests in two workers would collide (EADDRINUSE), so they take turns on an
    exclusive lock on a file in the temporary folder, which every worker of the run shares."""
    with open(Path(tempfile.gettempdir()) / "aam-ds-tests-port-29500.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield 29500


def pytest_report_header(config: pytest.Config) -> str:
    """One line at the top of every run: whether the tests that need the real data can run here."""
    if SHARED_DATA.is_dir():
        return f"real data folder: {SHARED_DATA} (the tests that need it run)"
    return f"real data folder: {SHARED_DATA} is absent, so the tests that need it skip (CI has it; see README, 'Quick start')"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The folder of real public 16S data beside the repository (skips when absent)."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real data folder {SHARED_DATA} is absent (it lives beside the repository, never in it)")
    return SHARED_DATA


@pytest.fixture(scope="session")
def demo_paths(tmp_path_factory: pytest.TempPathFactory):
    """The generated demo dataset (BIOM, Newick, metadata, FASTA), seed 0, written once per session."""
    from aam_ds.data.synthetic import generate_demo

    return generate_demo(tmp_path_factory.mktemp("demo"), seed=0)


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A cache folder (tokens, demo data) shared by the training runs of one test module."""
    return tmp_path_factory.mktemp("aam-cache")


@pytest.fixture(scope="module")
def demo(cache: Path):
    """The demo dataset in ``cache``, where a run with ``data.cache_dir=cache`` and no table finds it."""
    from aam_ds.data.synthetic import demo_data

    return demo_data(cache)


def write_qza(path: Path, semantic_type: str, payload_name: str, payload: bytes) -> Path:
    """Write a minimal QIIME 2 artifact: <uuid>/metadata.yaml + <uuid>/data/<payload_name>."""
    root = str(uuid.uuid4())
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr(f"{root}/VERSION", "QIIME 2\narchive: 5\nframework: 2023.9.0\n")
        archive.writestr(f"{root}/metadata.yaml", f"uuid: {root}\ntype: {semantic_type}\nformat: DirFmt\n")
        archive.writestr(f"{root}/data/{payload_name}", payload)
    return path


@pytest.fixture
def make_qza() -> Callable[[Path, str, str, bytes], Path]:
    """A builder of QIIME 2 artifacts for tests: ``make_qza(path, type, payload_name, payload_bytes)``."""
    return write_qza


@pytest.fixture(scope="session")
def mlflow_server(tmp_path_factory):
    """A real ``mlflow server`` on a free port of 127.0.0.1 with a SQLite store and proxied artifacts, started once
    per test session by the first test that needs it (about 15 s) and killed (its whole process session) at the end."""
    from aam_ds.engine.distributed import free_port

    root = tmp_path_factory.mktemp("mlflow-server")
    port = free_port()
    uri = f"http://127.0.0.1:{port}"
    log = open(root / "server.log", "w")
    proc = subprocess.Popen(
        [
            str(Path(sys.executable).parent / "mlflow"),
            "server",
            "--backend-store-uri",
            f"sqlite:///{root / 'mlflow.db'}",
            "--artifacts-destination",
            str(root / "artifacts"),
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--workers",
            "1",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                with urllib.request.urlopen(f"{uri}/health", timeout=2) as answer:
                    if answer.status == 200:
                        break
            except OSError:
                pass
            assert proc.poll() is None, (root / "server.log").read_text()[-3000:]
            assert time.monotonic() < deadline, "mlflow server did not answer within 120 s"
            time.sleep(0.5)
        yield uri
    finally:  # a throwaway server: SIGKILL spares uvicorn's graceful shutdown (~15 s)
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        log.close()


@pytest.fixture(scope="session")
def shared_cases() -> Path:
    """The folder of failing inputs modelled on the field's bug reports (skips when absent)."""
    if not SHARED_CASES.is_dir():
        pytest.skip(f"case folder {SHARED_CASES} is absent (it lives beside the repository, never in it)")
    return SHARED_CASES
