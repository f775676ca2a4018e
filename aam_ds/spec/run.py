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
        p = self.parallel
        user_set = set(p.model_fields_set)  # derived sizes below must not count as user-given
        world = p.effective_world_size()
        given = {k: getattr(p, k) for k in ("global_batch_size", "micro_batch_size", "grad_accum_steps")}
        if all(v is None for v in given.values()):
            given["micro_batch_size"], given["grad_accum_steps"] = 8, 1
        elif sum(v is not None for v in given.values()) == 1:
            if given["grad_accum_steps"] is None:
                given["grad_accum_steps"] = 1
            else:
                given["micro_batch_size"] = 8
        g, m, a = given["global_batch_size"], given["micro_batch_size"], given["grad_accum_steps"]
        if g is None:
            g = m * a * world
        elif m is None:
            if g % (a * world):
                raise ValueError(
                    f"parallel.global_batch_size={g} is not divisible by grad_accum_steps={a} x world size {world}; "
                    f"choose a global batch that is a multiple of {a * world}"
                )
            m = g // (a * world)
        elif a is None:
            if g % (m * world):
                raise ValueError(
                    f"parallel.global_batch_size={g} is not divisible by micro_batch_size={m} x world size {world}; "
                    f"choose a global batch that is a multiple of {m * world}"
                )
            a = g // (m * world)
        elif g != m * a * world:
            raise ValueError(
                f"parallel.global_batch_size={g} != micro_batch_size={m} x grad_accum_steps={a} x world size {world} "
                f"(= {m * a * world}); give only two of the three and the third is derived"
            )
        p.global_batch_size, p.micro_batch_size, p.grad_accum_steps = g, m, a
        p.__pydantic_fields_set__ = user_set
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
            raise ValueError("checkpoint.resume (--resume) continues the run folder's outputs and tracking.overwrite "
                             "deletes them: set only one")
        if self.checkpoint.every_steps is None:
            self.checkpoint.every_steps = max(50, self.schedule.steps // 10)
        return self

    def checkpoint_dir(self) -> Path:
        """``checkpoint.dir``, or ``<tracking.run_dir>/checkpoints`` (once the run folder is decided)."""
        return self.checkpoint.dir or self.tracking.run_dir / "checkpoints"
