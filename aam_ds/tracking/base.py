"""The RunLogger interface, the do-nothing logger of non-zero ranks, and the fan-out to backends."""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np

if TYPE_CHECKING:
    from aam_ds.spec import RunSpec

DistanceScatter = tuple[np.ndarray, np.ndarray]
"""(predicted, true) pairwise distances, both float ``[P]``, one entry per sample pair."""


class RunLogger:
    """Where a run reports its progress. Every method is a no-op here; backends override what they use.

    Call order: ``start`` once, then any number of ``log_train`` / ``log_eval`` / ``print``, then
    ``finish`` (normal end) or ``close(failed=True)``. Used as a context manager the logger is closed
    on exit, and an exception escaping the block marks the run as failed.
    """

    def start(self, spec: RunSpec, total_steps: int, extra: dict[str, Any] | None = None) -> None:
        """Begin the run. ``extra``: run facts not in the spec (world size, parameter count, ...)."""

    def log_train(self, step: int, epoch: int, metrics: dict[str, float], samples_per_s: float, lr: float) -> None:
        """One training report. ``metrics``: loss name -> value; ``samples_per_s`` over all ranks."""

    def log_eval(self, step: int, metrics: dict[str, float], distance_scatter: DistanceScatter | None = None) -> None:
        """One evaluation report, optionally with the predicted-vs-true pairwise distances."""

    def print(self, msg: str) -> None:
        """A plain message line for the user."""

    keeps_files = False
    """Whether :meth:`log_artifacts` stores anything (a tracking service does; the console does not)."""

    def log_artifacts(self, paths: Sequence[Path], folder: str = "") -> None:
        """Keep copies of these files with the run (spec, export, evaluation plots and reports), under
        ``folder`` in the run's file tree; missing paths are skipped."""

    def finish(self, summary: dict[str, float]) -> None:
        """Record the final summary (metric name -> value) and close."""
        self.close()

    def close(self, failed: bool = False) -> None:
        """Release files and services; safe to call more than once."""

    def __enter__(self) -> RunLogger:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: Any) -> None:
        self.close(failed=exc_type is not None)


class NullLogger(RunLogger):
    """The logger of ranks other than 0: it writes and prints nothing."""


class FanOutLogger(RunLogger):
    """Forwards every call to each backend in order (rank 0: console, metrics.jsonl, W&B, MLflow)."""

    def __init__(self, backends: Sequence[RunLogger]):
        self.backends = list(backends)

    def start(self, spec: RunSpec, total_steps: int, extra: dict[str, Any] | None = None) -> None:
        for backend in self.backends:
            backend.start(spec, total_steps, extra)

    def log_train(self, step: int, epoch: int, metrics: dict[str, float], samples_per_s: float, lr: float) -> None:
        for backend in self.backends:
            backend.log_train(step, epoch, metrics, samples_per_s, lr)

    def log_eval(self, step: int, metrics: dict[str, float], distance_scatter: DistanceScatter | None = None) -> None:
        for backend in self.backends:
            backend.log_eval(step, metrics, distance_scatter)

    def print(self, msg: str) -> None:
        for backend in self.backends:
            backend.print(msg)

    @property
    def keeps_files(self) -> bool:  # type: ignore[override]
        return any(backend.keeps_files for backend in self.backends)

    def log_artifacts(self, paths: Sequence[Path], folder: str = "") -> None:
        existing = [Path(p) for p in paths if Path(p).exists()]
        for backend in self.backends:
            if backend.keeps_files and existing:
                backend.log_artifacts(existing, folder)

    def finish(self, summary: dict[str, float]) -> None:
        self._end_each("finish", summary)

    def close(self, failed: bool = False) -> None:
        self._end_each("close", failed)

    def _end_each(self, method: str, arg: Any) -> None:
        """Call ``method`` on every backend, in order, even when an earlier one raises."""
        with contextlib.ExitStack() as stack:
            for backend in reversed(self.backends):  # the stack unwinds last-in first-out
                stack.callback(getattr(backend, method), arg)
