"""metrics.jsonl: one JSON object per line, flushed as written, appended to by a resumed run.

Records (``time`` in Unix seconds, ``metrics`` maps a name to a float)::

  {"kind": "train", "step", "time", "epoch", "samples_per_s", "lr", "metrics"}
  {"kind": "eval", "step", "time", "metrics"}
  {"kind": "summary", "time", "metrics"}

A resumed run repeats the steps after its checkpoint; the later record of a (kind, step) wins.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

from aam_ds.errors import notice
from aam_ds.tracking.base import DistanceScatter, RunLogger


def _ends_mid_line(path: Path) -> bool:
    if not path.exists() or path.stat().st_size == 0:
        return False
    with open(path, "rb") as fh:
        fh.seek(-1, os.SEEK_END)
        return fh.read(1) != b"\n"


def _floats(metrics: dict[str, Any]) -> dict[str, float]:
    """Plain floats from Python, NumPy or 0-d torch scalars."""
    return {name: float(value) for name, value in metrics.items()}


class JsonlLogger(RunLogger):
    """Appends records to ``path``; each line is flushed so a crash loses nothing already logged."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        cut_short = _ends_mid_line(self.path)
        self._file = open(self.path, "a", encoding="utf-8")
        if cut_short:  # end the line a crash cut short, so the next record parses
            self._file.write("\n")

    def _write(self, record: dict[str, Any]) -> None:
        if self._file.closed:
            raise RuntimeError(f"{self.path} was already closed; log before finish()")
        self._file.write(json.dumps({**record, "time": time.time()}) + "\n")
        self._file.flush()

    def log_train(self, step: int, epoch: int, metrics: dict[str, float], samples_per_s: float, lr: float) -> None:
        self._write(
            dict(kind="train", step=int(step), epoch=int(epoch), samples_per_s=float(samples_per_s), lr=float(lr), metrics=_floats(metrics))
        )

    def log_eval(self, step: int, metrics: dict[str, float], distance_scatter: DistanceScatter | None = None) -> None:
        self._write(dict(kind="eval", step=int(step), metrics=_floats(metrics)))

    def finish(self, summary: dict[str, float]) -> None:
        self._write(dict(kind="summary", metrics=_floats(summary)))
        self.close()

    def close(self, failed: bool = False) -> None:
        self._file.close()


def read_metrics(path: Path) -> list[dict[str, Any]]:
    """All records of a metrics.jsonl in file order; a line cut short by a crash is skipped with a warning."""
    path = Path(path)
    records = []
    for line_no, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            notice(f"{path}:{line_no}: skipping a damaged record (a crash cut it short)")
    return records
