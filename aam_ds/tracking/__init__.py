"""Progress and tracking: rank 0 logs to metrics.jsonl, W&B and a Rich console; other ranks log nothing.

    with make_logger(spec, rank, run_dir) as log:
        log.start(spec, total_steps, {"world size": world})
        log.log_train(step, epoch, {"loss": 0.7, "pairwise": 0.4}, samples_per_s, lr)
        log.log_eval(step, {"loss": 0.6}, distance_scatter=(predicted, true))
        log.finish({"final loss": 0.6})
"""

from __future__ import annotations

from pathlib import Path

from rich.console import Console

from aam_ds.spec import RunSpec
from aam_ds.tracking.base import DistanceScatter, FanOutLogger, NullLogger, RunLogger
from aam_ds.tracking.console import ConsoleLogger
from aam_ds.tracking.jsonl import JsonlLogger, read_metrics
from aam_ds.tracking.wandb_logger import WandbLogger, resolve_wandb_mode

__all__ = ["DistanceScatter", "NullLogger", "RunLogger", "make_logger", "read_metrics", "resolve_wandb_mode"]

METRICS_FILE = "metrics.jsonl"


def make_logger(spec: RunSpec, rank: int, run_dir: Path, console: Console | None = None) -> RunLogger:
    """Rank 0: the console, metrics.jsonl (always) and W&B (unless its mode is disabled); others: NullLogger.

    ``console`` replaces the terminal console (tests record its output).
    """
    if rank != 0:
        return NullLogger()
    wandb_mode = resolve_wandb_mode(spec.tracking.wandb)
    backends: list[RunLogger] = [
        ConsoleLogger(console, bar=spec.tracking.rich),  # first: its bar stops before W&B prints its farewell
        JsonlLogger(Path(run_dir) / METRICS_FILE),
    ]
    if wandb_mode != "disabled":
        backends.append(WandbLogger(wandb_mode, run_dir))
    return FanOutLogger(backends)
