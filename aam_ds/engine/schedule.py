"""Learning-rate schedule: linear warmup to ``optim.lr``, then cosine decay to ``min_lr_ratio * lr``."""

from __future__ import annotations

import math
from typing import Callable

import torch

from aam_ds.spec import ScheduleSpec


def warmup_cosine(schedule: ScheduleSpec) -> Callable[[int], float]:
    """Multiplier of the base learning rate after ``step`` optimizer steps (LambdaLR convention)."""

    def factor(step: int) -> float:
        if step < schedule.warmup_steps:
            return (step + 1) / schedule.warmup_steps
        decay_steps = max(1, schedule.steps - schedule.warmup_steps)
        progress = min(1.0, (step - schedule.warmup_steps) / decay_steps)
        cosine = 0.5 * (1.0 + math.cos(math.pi * progress))
        return schedule.min_lr_ratio + (1.0 - schedule.min_lr_ratio) * cosine

    return factor


def scheduler_factory(schedule: ScheduleSpec) -> Callable[[torch.optim.Optimizer], torch.optim.lr_scheduler.LambdaLR]:
    """What ``deepspeed.initialize(lr_scheduler=...)`` calls with the optimizer it built; DeepSpeed
    steps it once per optimizer step and saves it in checkpoints."""
    return lambda optimizer: torch.optim.lr_scheduler.LambdaLR(optimizer, warmup_cosine(schedule))
