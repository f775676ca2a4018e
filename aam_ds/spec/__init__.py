"""The run spec: one pydantic-validated document that describes a whole run.

Sections (:mod:`aam_ds.spec.sections`): data, model, loss, optim, schedule, parallel, tracking,
checkpoint. Every section forbids unknown keys, so a typo is an error rather than a silently
ignored setting. The whole spec and its cross-section rules: :mod:`aam_ds.spec.run`. A spec is
loaded from YAML, TOML or JSON and then patched by dotted overrides (``--set model.d_model=256``):
:mod:`aam_ds.spec.files`. The batch plan (global = micro x accumulation x world size), resolved once when
a spec is validated: :mod:`aam_ds.spec.batch`.
"""

from aam_ds.spec.batch import DEFAULT_MICRO_BATCH, BatchPlan
from aam_ds.spec.files import apply_overrides, build_spec, format_validation_error, load_spec, read_spec_file, spec_schema
from aam_ds.spec.run import RunSpec
from aam_ds.spec.sections import (
    MODEL_PRESETS,
    AugmentSpec,
    CheckpointSpec,
    DataSpec,
    LossSpec,
    ModelSpec,
    OptimSpec,
    ParallelSpec,
    ScheduleSpec,
    SplitSpec,
    TrackingSpec,
    scaled_default,
)

__all__ = [
    "DEFAULT_MICRO_BATCH",
    "MODEL_PRESETS",
    "AugmentSpec",
    "BatchPlan",
    "CheckpointSpec",
    "DataSpec",
    "LossSpec",
    "ModelSpec",
    "OptimSpec",
    "ParallelSpec",
    "RunSpec",
    "ScheduleSpec",
    "SplitSpec",
    "TrackingSpec",
    "apply_overrides",
    "build_spec",
    "format_validation_error",
    "load_spec",
    "read_spec_file",
    "scaled_default",
    "spec_schema",
]
