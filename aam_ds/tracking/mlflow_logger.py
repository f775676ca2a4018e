"""MLflow on rank 0: the resolved spec as params, train/eval metrics per step, the run's files as artifacts.

``tracking.mlflow``: ``disabled``, ``local`` (a SQLite store ``runs/mlflow.db`` with artifacts in
``runs/mlartifacts``, relative to the working directory: ``mlflow ui --backend-store-uri
sqlite:///runs/mlflow.db``) or any tracking URI MLflow accepts (``http://host:5000``,
``sqlite:///mlflow.db``, ``databricks``). The experiment is ``tracking.project``; the run name
``tracking.name`` or the run folder's name. The run ID is kept in ``<run_dir>/mlflow_run_id``, so a
resumed training run (``checkpoint.resume``) appends to the same MLflow run.
"""

from __future__ import annotations

import json
import os
import re
import time
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator, Sequence

from aam_ds.errors import AamInputError, notice
from aam_ds.io_utils import atomic_write_text
from aam_ds.tracking.base import DistanceScatter, RunLogger

if TYPE_CHECKING:
    from aam_ds.spec import RunSpec

LOCAL_ROOT = Path("runs")  # `local`: the store and artifacts beside the default run folders
ID_FILE = "mlflow_run_id"
BATCH = 100  # MLflow's limit of params (and tags) per log_batch call
# HTTP retries and timeout (s) of a run's requests; MLflow's defaults (7 retries with doubling back-off,
# 120 s) would stall training for minutes on a server that went away
RUN_REQUESTS = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "3", "MLFLOW_HTTP_REQUEST_TIMEOUT": "30"}


def resolve_mlflow_uri(setting: str) -> str | None:
    """The tracking URI for ``tracking.mlflow`` (None when disabled; ``local``: ``sqlite:///<abs>/runs/mlflow.db``)."""
    if setting == "disabled":
        return None
    if setting == "local":
        return f"sqlite:///{(LOCAL_ROOT / 'mlflow.db').resolve()}"
    return setting


@contextmanager
def quick_requests(timeout_s: int = 10) -> Iterator[None]:
    """HTTP calls to the tracking server without MLflow's retries (minutes of back-off) for the block."""
    names = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0", "MLFLOW_HTTP_REQUEST_TIMEOUT": str(timeout_s)}
    saved = {name: os.environ.get(name) for name in names}
    os.environ.update(names)
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def check_mlflow(setting: str) -> None:
    """Raise AamInputError unless the tracking store of ``tracking.mlflow`` answers (one quick request).

    Raises
    ------
    AamInputError
        The URI is not one MLflow accepts, or its server does not answer within 10 s.
    """
    uri = resolve_mlflow_uri(setting)
    if uri is None:
        return
    if setting == "local":
        LOCAL_ROOT.mkdir(parents=True, exist_ok=True)
    try:
        from mlflow import MlflowClient

        with quick_requests():
            MlflowClient(uri).search_experiments(max_results=1)
    except Exception as exc:  # MLflow raises MlflowException, requests' errors or ValueError by URI scheme
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise AamInputError(
            f"tracking.mlflow={setting}",
            f"the MLflow tracking store does not answer ({reason[:300]})",
            "start the server (e.g. `mlflow server --port 5000`), correct the URI, or set tracking.mlflow=disabled",
        ) from None


def flatten(tree: Any, prefix: str = "") -> dict[str, str]:
    """``{"model": {"d_model": 64}}`` -> ``{"model.d_model": "64"}``: strings as they are, other values as JSON."""
    if isinstance(tree, dict):
        flat: dict[str, str] = {}
        for key, value in tree.items():
            flat.update(flatten(value, f"{prefix}{key}." if isinstance(value, dict) else f"{prefix}{key}"))
        return flat
    return {prefix: tree if isinstance(tree, str) else json.dumps(tree)}


def mlflow_key(name: str) -> str:
    """``name`` with the characters MLflow refuses in keys (anything but letters, digits, ``_-. /:``) as ``_``."""
    return re.sub(r"[^\w\-. /:]", "_", name)


class MlflowLogger(RunLogger):
    """One MLflow run. A failing tracking service never stops training: the first failure is reported
    once and later calls are skipped (metrics.jsonl keeps everything)."""

    keeps_files = True

    def __init__(self, uri: str, run_dir: Path):
        self.uri, self.run_dir = uri, Path(run_dir)
        self._client: Any = None
        self.run_id: str | None = None
        self._step = 0

    def start(self, spec: RunSpec, total_steps: int, extra: dict[str, Any] | None = None) -> None:
        from mlflow import MlflowClient

        for name, value in RUN_REQUESTS.items():  # unless the user set them: a dead server costs seconds, not minutes
            os.environ.setdefault(name, value)
        self._client = MlflowClient(self.uri)
        id_file = self.run_dir / ID_FILE
        logged = self._resumed_run(id_file) if spec.checkpoint.resume and id_file.is_file() else None
        if logged is None:
            run = self._client.create_run(self._experiment_id(spec.tracking.project), run_name=spec.tracking.name or self.run_dir.name)
            self.run_id, logged = run.info.run_id, {}
        atomic_write_text(id_file, self.run_id + "\n")
        tags = {
            "aam_ds.run_dir": str(self.run_dir),
            "aam_ds.total_steps": str(total_steps),
            **{f"aam_ds.{key}": str(value) for key, value in (extra or {}).items()},
        }
        params = flatten(spec.model_dump(mode="json"))
        # MLflow params are write-once: a resumed run logs the fields it lacks and records changed values as tags
        tags.update({f"aam_ds.resumed_with.{k}": v for k, v in params.items() if k in logged and logged[k] != v})
        self._batch(params={k: v for k, v in params.items() if k not in logged}, tags=tags)

    def _resumed_run(self, id_file: Path) -> dict[str, str] | None:
        """Reopen the run named in ``id_file``; its logged params, or None (with a notice) when the store lost it."""
        run_id = id_file.read_text().strip()
        try:
            logged = self._client.get_run(run_id).data.params
            self._client.update_run(run_id, status="RUNNING")
        except Exception as exc:  # deleted on the server, or a store other than the one the run began in
            notice(f"MLflow run {run_id} of {self.run_dir} cannot be continued ({str(exc).strip()[:200]}); a new MLflow run starts")
            return None
        self.run_id = run_id
        return logged

    def _experiment_id(self, name: str) -> str:
        experiment = self._client.get_experiment_by_name(name)
        if experiment is not None:
            return experiment.experiment_id
        location = str((LOCAL_ROOT / "mlartifacts").resolve()) if self.uri == resolve_mlflow_uri("local") else None
        return self._client.create_experiment(name, artifact_location=location)

    def _batch(
        self,
        metrics: dict[str, float] | None = None,
        step: int = 0,
        params: dict[str, str] | None = None,
        tags: dict[str, str] | None = None,
    ) -> None:
        from mlflow.entities import Metric, Param, RunTag

        now = int(time.time() * 1000)
        metric_rows = [Metric(mlflow_key(key), float(value), now, step) for key, value in (metrics or {}).items()]
        param_rows = [Param(mlflow_key(key), value) for key, value in (params or {}).items()]
        tag_rows = [RunTag(mlflow_key(key), value) for key, value in (tags or {}).items()]
        for start in range(0, max(len(metric_rows), len(param_rows), len(tag_rows)), BATCH):
            self._call(
                "log_batch",
                self.run_id,
                metrics=metric_rows[start : start + BATCH],
                params=param_rows[start : start + BATCH],
                tags=tag_rows[start : start + BATCH],
            )

    def _call(self, method: str, *args: Any, **kwargs: Any) -> None:
        if self._client is None or self.run_id is None:
            return
        try:
            getattr(self._client, method)(*args, **kwargs)
        except Exception as exc:  # the service failed: keep training, stop talking to it
            notice(
                f"MLflow ({self.uri}) failed in {method}: {str(exc).strip()[:300]}; the run goes on without MLflow "
                f"(metrics.jsonl has every record)"
            )
            self._client = None

    def log_train(self, step: int, epoch: int, metrics: dict[str, float], samples_per_s: float, lr: float) -> None:
        row = {f"train/{name}": value for name, value in metrics.items()}
        row.update({"train/epoch": epoch, "train/samples_per_s": samples_per_s, "train/lr": lr})
        self._step = step
        self._batch(row, step)

    def log_eval(self, step: int, metrics: dict[str, float], distance_scatter: DistanceScatter | None = None) -> None:
        self._step = step
        self._batch({f"eval/{name}": value for name, value in metrics.items()}, step)

    def log_artifacts(self, paths: Sequence[Path], folder: str = "") -> None:
        for path in map(Path, paths):
            if path.is_dir():
                self._call("log_artifacts", self.run_id, str(path), "/".join(p for p in (folder, path.name) if p))
            elif path.is_file():
                self._call("log_artifact", self.run_id, str(path), folder or None)

    def finish(self, summary: dict[str, float]) -> None:
        self._batch({f"summary/{name}": value for name, value in summary.items()}, self._step)
        self.close()

    def close(self, failed: bool = False) -> None:
        if self.run_id is not None:
            self._call("set_terminated", self.run_id, "FAILED" if failed else "FINISHED")
            self._client, self.run_id = None, None
