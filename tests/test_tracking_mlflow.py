"""MLflow tracking against a real ``mlflow server`` (conftest's ``mlflow_server``: SQLite backend
store, artifacts proxied by the server, on a free local port): a 2-rank run killed and resumed logs its params, step metrics and
files into one MLflow run, read back with MlflowClient and compared with metrics.jsonl; an
unreachable tracking URI is refused before any compute."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from test_engine_train import PRETRAIN, ROOT, checked, launch, run_args, torchrun

from aam_ds.engine.distributed import free_port
from aam_ds.errors import AamInputError
from aam_ds.spec import load_spec
from aam_ds.tracking import check_tracking, read_metrics
from aam_ds.tracking.mlflow_logger import flatten, resolve_mlflow_uri


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("aam-cache")


def comparable(pairs) -> list[tuple[int, str]]:
    """(step, value) pairs sorted, values as their repr so that NaN equals NaN."""
    return sorted((int(step), repr(float(value))) for step, value in pairs)


def history(client, run_id: str, key: str) -> list[tuple[int, str]]:
    """Every (step, value) MLflow holds for ``key`` (a resumed run's repeated steps included), comparable."""
    return comparable((m.step, m.value) for m in client.get_metric_history(run_id, key))


@pytest.mark.slow
def test_two_rank_run_killed_and_resumed_fills_one_mlflow_run(tmp_path, cache_dir, mlflow_server):
    from mlflow import MlflowClient

    run_dir = tmp_path / "run"
    common = {
        "tracking.mlflow": mlflow_server,
        "tracking.project": "aam-ds-test",
        "checkpoint.every_steps": 3,
        "schedule.steps": 6,
        "schedule.eval_every": 3,
        "parallel.zero_stage": 2,
    }
    latest = run_dir / "checkpoints" / "latest"
    killed = launch(torchrun(2, *run_args(run_dir, cache_dir, **common)), kill_when=latest.is_file)
    assert killed.returncode != 0, "the run finished before it could be killed"
    run_id = (run_dir / "mlflow_run_id").read_text().strip()
    checked(launch(torchrun(2, *run_args(run_dir, cache_dir, **common), "--resume")))
    assert (run_dir / "mlflow_run_id").read_text().strip() == run_id  # the resumed run continued it

    client = MlflowClient(mlflow_server)
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED" and run.info.run_name == "run"
    assert client.get_experiment(run.info.experiment_id).name == "aam-ds-test"
    assert len(client.search_runs([run.info.experiment_id])) == 1  # no second run for the resumed one
    assert run.data.tags["aam_ds.world size"] == "2" and run.data.tags["aam_ds.stage"] == "pretrain"
    assert run.data.tags["aam_ds.resumed_with.checkpoint.resume"] == "true"

    spec = json.loads((run_dir / "spec.json").read_text())
    expected_params = flatten({**spec, "checkpoint": {**spec["checkpoint"], "resume": False}})  # logged by the first start
    assert run.data.params == expected_params
    assert run.data.params["model.d_model"] == "64" and run.data.params["parallel.micro_batch_size"] == "4"

    records = read_metrics(run_dir / "metrics.jsonl")
    for kind in ("train", "eval"):
        names = {name for r in records if r["kind"] == kind for name in r["metrics"]}
        assert names
        for name in names:
            expected = comparable((r["step"], r["metrics"][name]) for r in records if r["kind"] == kind and name in r["metrics"])
            assert history(client, run_id, f"{kind}/{name}") == expected, name
    assert {step for step, _ in history(client, run_id, "train/loss")} == set(range(1, 7))
    assert {step for step, _ in history(client, run_id, "eval/loss")} == {3, 6}
    assert history(client, run_id, "train/lr") == comparable((r["step"], r["lr"]) for r in records if r["kind"] == "train")

    top = {f.path for f in client.list_artifacts(run_id)}
    assert {"spec.json", "ds_config.json", "model.pt", "evaluation"} <= top
    assert [f.path for f in client.list_artifacts(run_id, "evaluation")] == ["evaluation/distance_scatter.png"]
    local = Path(client.download_artifacts(run_id, "spec.json", str(tmp_path)))
    assert local.read_bytes() == (run_dir / "spec.json").read_bytes()
    local = Path(client.download_artifacts(run_id, "model.pt", str(tmp_path)))
    assert local.read_bytes() == (run_dir / "model.pt").read_bytes()


def test_unreachable_tracking_uri_is_refused_before_any_compute(tmp_path):
    """A URI nobody serves: exit 2 with one line naming tracking.mlflow, no traceback, no run folder."""
    run_dir = tmp_path / "run"
    dead = f"http://127.0.0.1:{free_port()}"
    started = time.monotonic()
    result = subprocess.run(
        [
            sys.executable,
            PRETRAIN,
            "--set",
            f"tracking.mlflow={dead}",
            "--set",
            f"tracking.run_dir={run_dir}",
            "--set",
            "model.preset=tiny",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert result.returncode == 2, result.stderr[-3000:]
    assert f"tracking.mlflow={dead}: the MLflow tracking store does not answer" in result.stderr
    assert "Traceback" not in result.stderr
    assert not run_dir.exists()
    assert time.monotonic() - started < 60  # no minutes of MLflow's request retries


def test_tracking_uri_of_an_unknown_scheme_is_refused():
    with pytest.raises(AamInputError, match="tracking.mlflow=htp://host:5000.*does not answer"):
        check_tracking(load_spec(None, ["tracking.mlflow=htp://host:5000"]))


def test_local_store_lives_beside_the_default_run_folders(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert resolve_mlflow_uri("local") == f"sqlite:///{tmp_path / 'runs' / 'mlflow.db'}"
    assert resolve_mlflow_uri("disabled") is None and resolve_mlflow_uri("http://host:5000") == "http://host:5000"
