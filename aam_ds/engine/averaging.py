"""Weight averaging: export the mean of the weights over the last part of a run (``schedule.average_from``).

After every optimizer step from step ``ceil(average_from x schedule.steps)`` on, each rank adds its
module's parameters to a running mean (float32, on the CPU); the export takes that mean instead of
the last step's parameters (buffers, such as the target normaliser's statistics, stay the last
step's). This is tail (Polyak) averaging, which stochastic weight averaging uses: the mean of the
iterates of the decaying schedule's last part lies nearer the centre of the flat region that SGD
circles at the end of training, which generalises and is calibrated better than any one iterate
(Izmailov et al. 2018; Polyak and Juditsky 1992). It costs one float32 copy of the parameters per
rank and one addition per step. The running mean is part of every checkpoint, so a resumed run
averages exactly as an uninterrupted one.

References:
    Izmailov, P., Podoprikhin, D., Garipov, T., Vetrov, D., Wilson, A. G. (2018). Averaging Weights
    Leads to Wider Optima and Better Generalization. UAI 2018, arXiv:1803.05407.
    Polyak, B. T., Juditsky, A. B. (1992). Acceleration of Stochastic Approximation by Averaging.
    SIAM Journal on Control and Optimization 30(4), 838-855.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from aam_ds.errors import AamInputError
from aam_ds.spec import RunSpec

STATE_KEY = "weight_average"  # client-state entry of a checkpoint: {"count": int, "mean": {name: float32 tensor}}


class WeightAverage:
    """Running mean of a module's floating-point parameters over the optimizer steps ``>= start``.

    Parameters
    ----------
    start : int
        The first step (1-based count of steps done) whose weights enter the mean.
    """

    def __init__(self, start: int):
        self.start, self.count = start, 0
        self.mean: dict[str, torch.Tensor] = {}

    @classmethod
    def from_spec(cls, spec: RunSpec) -> "WeightAverage | None":
        """The average ``schedule.average_from`` asks for, or None (1.0: the last step's weights).

        Raises
        ------
        AamInputError
            With ZeRO stage 3, whose ranks each hold only a partition of the parameters.
        """
        fraction = spec.schedule.average_from
        if fraction >= 1.0:
            return None
        if spec.parallel.zero_stage == 3:
            raise AamInputError(
                "schedule.average_from",
                "weight averaging reads every parameter on every rank, and ZeRO-3 partitions them",
                "use ZeRO stage 0-2",
            )
        return cls(max(1, math.ceil(fraction * spec.schedule.steps)))

    def update(self, module: torch.nn.Module, done: int) -> None:
        """Add the parameters after step ``done`` (1-based) to the mean when ``done >= start``."""
        if done < self.start:
            return
        self.count += 1
        with torch.no_grad():
            for name, param in module.named_parameters():
                value = param.detach().float().cpu()
                if name in self.mean:
                    self.mean[name] += (value - self.mean[name]) / self.count
                else:
                    self.mean[name] = value.clone()

    def state(self) -> dict[str, Any]:
        """For a checkpoint's client state."""
        return {STATE_KEY: {"count": self.count, "mean": self.mean}}

    def restore(self, state: dict[str, Any]) -> None:
        """Continue the mean a checkpoint's client state holds (none before ``start``)."""
        saved = state.get(STATE_KEY) or {"count": 0, "mean": {}}
        self.count, self.mean = int(saved["count"]), {name: value.float().cpu() for name, value in saved["mean"].items()}

    def applied(self, state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """``state_dict`` with each averaged parameter replaced by its mean (in the entry's dtype)."""
        if not self.count:
            return state_dict
        return {name: self.mean[name].to(value.dtype) if name in self.mean else value for name, value in state_dict.items()}
