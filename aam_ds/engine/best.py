"""The best evaluation so far of one validation metric (``schedule.best_metric``), and early stopping.

The trainer keeps the weights of the best evaluation in the checkpoint folder ``best`` and exports
them at the end; :class:`BestTracker` decides which evaluation is best and when
``schedule.early_stopping_patience`` evaluations without improvement stop the run. Its state
travels in every checkpoint's client state, so a resumed run keeps selecting and counting.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from aam_ds.errors import AamInputError
from aam_ds.spec import RunSpec

# metrics where larger is better (``best_mode: auto``); so is any correlation ``*_r``; the rest are losses / errors
HIGHER_IS_BETTER = frozenset({"accuracy", "balanced_accuracy", "auc", "f1", "r2", "nucleotide_accuracy"})


def maximizes(metric: str, mode: str = "auto") -> bool:
    """Whether larger values of ``metric`` are better: ``mode`` max / min, or auto (accuracies, AUC, R^2, ``*_r``)."""
    return mode == "max" or (mode == "auto" and (metric in HIGHER_IS_BETTER or metric.endswith("_r")))


@dataclass
class BestTracker:
    """Best value of one validation metric so far, and evaluations since it improved (early stopping).

    Every rank evaluates the same gathered metrics, so every rank's tracker agrees; the stop decision
    is still reduced over ranks before acting on it.
    """

    metric: str
    maximize: bool
    patience: int
    value: float = math.nan
    step: int = 0
    metrics: dict[str, float] = field(default_factory=dict)
    evals_since_best: int = 0

    @classmethod
    def from_spec(cls, spec: RunSpec) -> "BestTracker | None":
        """A tracker of ``schedule.best_metric`` (direction, patience), or None when the spec names none."""
        sched = spec.schedule
        if not sched.best_metric:
            return None
        return cls(sched.best_metric, maximizes(sched.best_metric, sched.best_mode), sched.early_stopping_patience)

    def update(self, step: int, metrics: dict[str, float]) -> bool:
        """Record an evaluation; True when it is the best so far (NaN never is)."""
        if self.metric not in metrics:
            raise AamInputError(
                "schedule.best_metric", f"'{self.metric}' is not a validation metric of this run", f"choose one of {sorted(metrics)}"
            )
        value = metrics[self.metric]
        better = not math.isnan(value) and (math.isnan(self.value) or (value > self.value if self.maximize else value < self.value))
        if better:
            self.value, self.step, self.metrics, self.evals_since_best = value, step, dict(metrics), 0
        else:
            self.evals_since_best += 1
        return better

    @property
    def exhausted(self) -> bool:
        return self.patience > 0 and self.evals_since_best >= self.patience

    def state(self) -> dict[str, Any]:
        """Saved in each checkpoint's client state, so a resumed run keeps selecting and counting."""
        return {"best": {"value": self.value, "step": self.step, "metrics": self.metrics, "evals_since_best": self.evals_since_best}}

    def restore(self, client_state: dict[str, Any]) -> None:
        """Restore the best value, step, metrics and patience count saved in a checkpoint's client state."""
        saved = client_state.get("best")
        if saved:
            self.value, self.step, self.metrics, self.evals_since_best = (
                saved["value"],
                saved["step"],
                saved["metrics"],
                saved["evals_since_best"],
            )
