"""Progress and tracking: rank 0 logs to metrics.jsonl, W&B, MLflow and a Rich console; other ranks log nothing.

with make_logger(spec, rank, run_dir) as log:
    log.start(spec, total_steps, {"world size": world})
    log.log_train(step, epoch, {"loss": 0.7, "pairwise": 0.4}, samples_per_s, lr)
    log.log_eval(step, {"loss": 0.6}, distance_scatter=(predicted, true))
    log.log_artifacts([run_dir / "spec.json", run_dir / "model.pt"])   # W&B and MLflow keep copies
    log.finish({"final loss": 0.6})
"""

from __future__ import annotations

from pathlib import Path

from rich.console import Console

from aam_ds.spec import RunSpec
from aam_ds.tracking.base import DistanceScatter, FanOutLogger, NullLogger, RunLogger
from aam_ds.tracking.console import ConsoleLogger
from aam_ds.tracking.jsonl import JsonlLogger, read_metrics
from aam_ds.tracking.mlflow_logger import MlflowLogger, check_mlflow, resolve_mlflow_uri
from aam_ds.tracking.wandb_logger import WandbLogger, resolve_wandb_mode

__all__ = [
    "DistanceScatter",
    "FanOutLogger",
    "NullLogger",
    "RunLogger",
    "check_tracking",
    "make_logger",
    "read_metrics",
    "resolve_wandb_mode",
    "tracking_services",
]

METRICS_FILE = "metrics.jsonl"


def make_logger(spec: RunSpec, rank: int, run_dir: Path, console: Console | None = None) -> RunLogger:
    """Rank 0: the console, metrics.jsonl (always), W&B and MLflow (unless disabled); others: NullLogger.

    ``console`` replaces the terminal console (tests record its output).
    """
    if rank != 0:
        return NullLogger()
    return FanOutLogger(
        [
            ConsoleLogger(console, bar=spec.tracking.rich),  # first: its bar stops before W&B prints its farewell
            JsonlLogger(Path(run_dir) / METRICS_FILE),
            *tracking_services(spec, run_dir),
        ]
    )


def tracking_services(spec: RunSpec, run_dir: Path) -> list[RunLogger]:
    """The W&B and MLflow loggers the spec turns on (each keeps its run ID in ``run_dir``)."""
    services: list[RunLogger] = []
    wandb_mode = resolve_wandb_mode(spec.tracking.wandb)
    if wandb_mode != "disabled":
        services.append(WandbLogger(wandb_mode, run_dir))
    mlflow_uri = resolve_mlflow_uri(spec.tracking.mlflow)
    if mlflow_uri is not None:
        services.append(MlflowLogger(mlflow_uri, run_dir))
    return services


def check_tracking(spec: RunSpec) -> None:
    """Refuse, before any compute, tracking settings that cannot work: an unknown ``$WANDB_MODE``, an
    MLflow tracking URI whose store does not answer (raises :class:`aam_ds.errors.AamInputError`)."""
    resolve_wandb_mode(spec.tracking.wandb)
    check_mlflow(spec.tracking.mlflow)
