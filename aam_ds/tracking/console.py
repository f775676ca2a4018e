"""Rank 0's console: a Rich progress bar (plain lines when not a terminal) and a final summary table."""

from __future__ import annotations

import datetime
import time
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, Callable, Iterator

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Column, Table

from aam_ds.tracking.base import DistanceScatter, RunLogger

if TYPE_CHECKING:
    from aam_ds.spec import RunSpec


@contextmanager
def count_progress(description: str, unit: str = "samples") -> Iterator[Callable[[int], Callable[[int], None]]]:
    """A Rich progress bar on stderr for work counted in items (a live bar on a terminal, the final
    state in a log file). Yields ``start(total)``, which shows the bar and returns ``advance(n)``."""
    progress = Progress(
        TextColumn(description),
        BarColumn(bar_width=24),
        MofNCompleteColumn(),
        TextColumn(unit),
        TimeElapsedColumn(),
        TextColumn("ETA"),
        TimeRemainingColumn(),
        console=Console(stderr=True),
    )

    def start(total: int) -> Callable[[int], None]:
        task = progress.add_task(description, total=total)
        progress.start()
        return lambda n: progress.advance(task, n)

    try:
        yield start
    finally:
        progress.stop()


def format_metrics(metrics: dict[str, float]) -> str:
    """``name value`` pairs (4 significant digits) on one line."""
    return " ".join(f"{name} {float(value):.4g}" for name, value in metrics.items())


class StepRate:
    """Remaining time from the steps done since the first report (a resumed run starts its own clock)."""

    def __init__(self, total_steps: int):
        self.total_steps = total_steps
        self._first: tuple[float, int] | None = None

    def eta(self, step: int) -> str:
        """Estimated time left at ``step`` from the rate since the first call (``?`` before a rate is known)."""
        now = time.monotonic()
        if self._first is None:
            self._first = (now, step)
        start_time, start_step = self._first
        if step <= start_step or now <= start_time:
            return "?"
        seconds_per_step = (now - start_time) / (step - start_step)
        return str(datetime.timedelta(seconds=round(seconds_per_step * max(self.total_steps - step, 0))))


class ConsoleLogger(RunLogger):
    """Progress bar (step/total, epoch, samples/s, each loss, lr, ETA), eval lines and a summary table;
    the header line and the summary's title name the run when ``tracking.name`` is set.

    ``bar=False``, or a console that is not a terminal (a batch job's log file), prints one plain
    line per training report instead of the live bar.
    """

    def __init__(self, console: Console | None = None, bar: bool = True):
        self.console = console or Console()
        self.bar = bar and self.console.is_terminal
        self._progress: Progress | None = None
        self._rate = StepRate(0)
        self._name: str | None = None
        self._validation: str | None = None

    def start(self, spec: RunSpec, total_steps: int, extra: dict[str, Any] | None = None) -> None:
        self._rate = StepRate(total_steps)
        self._name = spec.tracking.name
        self._validation = (extra or {}).get("validation")  # what the val split is, where the trainer says (a fold's)
        facts = {"steps": total_steps, "global batch": spec.parallel.global_batch_size, **(extra or {})}
        self.print(f"aam-ds run{self._label(' ')}: " + ", ".join(f"{key} {value}" for key, value in facts.items()))
        if self.bar:
            self._progress = Progress(
                TextColumn("step"),
                BarColumn(bar_width=24),
                MofNCompleteColumn(),
                TimeElapsedColumn(),
                TextColumn("{task.fields[stats]}", table_column=Column(overflow="fold")),  # wraps, never cut
                console=self.console,
            )
            self._task = self._progress.add_task("train", total=total_steps, stats="")
            self._progress.start()

    def log_train(self, step: int, epoch: int, metrics: dict[str, float], samples_per_s: float, lr: float) -> None:
        stats = f"epoch {epoch} | {samples_per_s:.1f} samples/s | {format_metrics(metrics)} | lr {lr:.2e} | ETA {self._rate.eta(step)}"
        if self._progress is not None:
            self._progress.update(self._task, completed=step, stats=stats)
        else:
            self.print(f"step {step}/{self._rate.total_steps} | {stats}")

    def log_eval(self, step: int, metrics: dict[str, float], distance_scatter: DistanceScatter | None = None) -> None:
        on = f" on val ({self._validation})" if self._validation else ""
        self.print(f"eval step {step}{on} | {format_metrics(metrics)}")

    def print(self, msg: str) -> None:
        self.console.print(msg, markup=False, highlight=False, soft_wrap=True)

    def finish(self, summary: dict[str, float]) -> None:
        self.close()
        title = f"run summary{self._label(': ')}"
        table = Table(title=title, min_width=len(title))  # wide enough for the title on one line
        table.add_column("metric")
        table.add_column("value", justify="right")
        for name, value in summary.items():
            table.add_row(name, f"{float(value):.6g}")
        self.console.print(table)

    def _label(self, separator: str) -> str:
        """The run's name (``tracking.name``, e.g. a cross-validation fold's) after ``separator``; empty without one."""
        return f"{separator}{self._name}" if self._name else ""

    def close(self, failed: bool = False) -> None:
        if self._progress is not None:
            self._progress.stop()
            self._progress = None
