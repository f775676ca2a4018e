"""The whole run spec: its sections and the rules that span several of them."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, model_validator

from aam_ds.spec.sections import (
    CheckpointSpec,
    DataSpec,
    LossSpec,
    ModelSpec,
    OptimSpec,
    ParallelSpec,
    ScheduleSpec,
    TrackingSpec,
    _Section,
)

# --------------------------------------------------------------------------------------------
# the whole spec


class RunSpec(_Section):
    """The run spec: one section per concern (data, model, loss, optim, schedule, parallel, tracking, checkpoint)."""

    data: DataSpec = Field(default_factory=DataSpec)
    model: ModelSpec = Field(default_factory=ModelSpec)
    loss: LossSpec = Field(default_factory=LossSpec)
    optim: OptimSpec = Field(default_factory=OptimSpec)
    schedule: ScheduleSpec = Field(default_factory=ScheduleSpec)
    parallel: ParallelSpec = Field(default_factory=ParallelSpec)
    tracking: TrackingSpec = Field(default_factory=TrackingSpec)
    checkpoint: CheckpointSpec = Field(default_factory=CheckpointSpec)

    @model_validator(mode="after")
    def _resolve_batch(self) -> "RunSpec":
        self.parallel = self.parallel.resolved()  # the batch plan, once (spec/batch.py)
        m = self.parallel.micro_batch_size
        if self.loss.pairwise_weight > 0 and m < 2:
            raise ValueError(
                f"the pairwise distance loss needs parallel.micro_batch_size >= 2 (got {m}): "
                "raise the micro batch or set loss.pairwise_weight=0"
            )
        if self.loss.task != "none" and not self.data.targets and self.data.table is not None:
            raise ValueError(f"loss.task={self.loss.task} needs data.targets (metadata columns to predict)")
        return self

    @model_validator(mode="after")
    def _resolve_checkpointing(self) -> "RunSpec":
        if self.checkpoint.resume and self.tracking.overwrite:
            raise ValueError(
                "checkpoint.resume (--resume) continues the run folder's outputs and tracking.overwrite deletes them: set only one"
            )
        if self.checkpoint.every_steps is None:
            self.checkpoint.every_steps = max(50, self.schedule.steps // 10)
        return self

    def checkpoint_dir(self) -> Path:
        """``checkpoint.dir``, or ``<tracking.run_dir>/checkpoints`` (once the run folder is decided)."""
        return self.checkpoint.dir or self.tracking.run_dir / "checkpoints"
