"""What a training run is built from, before its engine exists: the launch checks (world size,
device), the prepared data (rank 0 first), the model (fresh, or from a pretrained export with the
run's own run-time fields) and the objective (distance target, class weights).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from aam_ds.data.prepare import PreparedData, prepare_data
from aam_ds.data.shards import ShardRows
from aam_ds.data.splits import save_splits
from aam_ds.engine.distributed import DistContext, main_first
from aam_ds.engine.objective import Objective, check_loss_compatible
from aam_ds.errors import AamInputError
from aam_ds.export import load_export, model_config
from aam_ds.model import losses
from aam_ds.model.aam import AAMModel
from aam_ds.spec import BatchPlan, ModelSpec, RunSpec

# model fields a fine-tuning run takes from its own spec (the rest of the architecture comes from the export)
RUN_TIME_MODEL_FIELDS = (
    "dropout",
    "asv_chunk_size",
    "activation_checkpointing",
    "pretrained",
    "freeze_encoder",
    "freeze_sequence_encoder",
    "asv_identity_dropout",
)


def check_world_size(spec: RunSpec, world_size: int) -> BatchPlan:
    """The run's batch plan on the ``world_size`` ranks launched (an AamInputError when it does not fit them)."""
    return spec.parallel.batch_plan(world_size)


def check_device_support(spec: RunSpec, device: torch.device) -> None:
    """Refuse (AamInputError) fp16 on a CPU device (DeepSpeed does not support it)."""
    if device.type == "cpu" and spec.parallel.precision == "fp16":
        raise AamInputError("parallel.precision", "fp16 is not supported by DeepSpeed on CPU", "use bf16 or fp32 on CPU")


def load_data(spec: RunSpec, ctx: DistContext) -> PreparedData:
    """Rank 0 prepares first (token cache, split files); the others then read the warm cache."""
    return main_first(ctx, lambda first: prepare_data(spec, spec.tracking.run_dir if first else None))


def given_data(data: PreparedData, run_dir: Path, ctx: DistContext) -> PreparedData:
    """Data prepared by the caller: rank 0 saves its split ID lists under ``run_dir`` as prepare_data would."""
    if ctx.is_main:
        save_splits(run_dir, data.splits, data.table.sample_ids)
    return data


def build_model(spec: RunSpec, data: PreparedData, finetuning: bool) -> tuple[AAMModel, dict[str, Any], ModelSpec]:
    """The model, its constructor arguments and the model section it was built from (both recorded
    in the export): the run's, or a pretrained export's architecture with the run's
    :data:`RUN_TIME_MODEL_FIELDS`. The model's :class:`~aam_ds.model.config.ModelConfig` is built
    from that section here (:func:`aam_ds.export.model_config`)."""
    check_loss_compatible(spec.model, spec.loss)
    n_targets = len(data.target_names) if finetuning and spec.loss.task == "regression" else 0
    n_classes = len(data.class_names or []) if finetuning and spec.loss.task == "classification" else 0
    args = {
        "max_seq_len": data.max_seq_len,
        "n_targets": n_targets,
        "n_classes": n_classes,
        "covariate_cardinalities": [len(c) for c in data.covariate_classes] if finetuning else [],
    }
    model_spec = spec.model
    export = load_export(spec.model.pretrained) if spec.model.pretrained else None
    if export is not None:
        if export.model_args["max_seq_len"] < data.max_seq_len:
            raise AamInputError(
                str(spec.model.pretrained),
                f"built for {export.model_args['max_seq_len']} nucleotides, data has {data.max_seq_len}",
                f"set data.max_seq_len={export.model_args['max_seq_len']}",
            )
        args["max_seq_len"] = export.model_args["max_seq_len"]
        keep = {k: getattr(spec.model, k) for k in RUN_TIME_MODEL_FIELDS}
        model_spec = type(spec.model).model_validate({**export.spec["model"], **keep})
    torch.manual_seed(spec.schedule.seed)  # initial weights: nn.Module initialisers draw from torch's global RNG (no generator argument)
    model = AAMModel(model_config(model_spec), **args)
    if export is not None:
        missing, unexpected = model.load_state_dict(export.state_dict, strict=False)
        foreign = unexpected + [k for k in missing if not k.startswith(("task_head.", "target_normalizer."))]
        if foreign:
            raise AamInputError(
                str(spec.model.pretrained), f"weights do not fit the model ({foreign[:5]})", "fine-tune with the export's model settings"
            )
    if export is not None and (spec.model.freeze_encoder or spec.model.freeze_sequence_encoder):
        model.asv_standardizer.fixed = True  # the pretrained sequence path stays as exported, statistics included
    model.mark_asvs_seen(torch.as_tensor(data.tokens[training_asvs(data)]))
    if finetuning and spec.model.freeze_encoder:
        for name, param in model.named_parameters():
            param.requires_grad_(name.startswith("task_head."))
    if n_targets:
        model.target_normalizer.fit(torch.as_tensor(data.targets[data.splits["train"]]), "data.targets (training split)")
    return model, args, model_spec


def training_asvs(data: PreparedData) -> np.ndarray:
    """Table columns (ASVs) present in the training split's kept rows, ``int64 [K]`` sorted."""
    if isinstance(data.rows, ShardRows):  # read shard by shard, not held
        return np.flatnonzero(data.rows.shards.present_asvs(data.splits["train"], len(data.tokens)))
    rows = [data.rows[i].asv_index for i in data.splits["train"]]
    return np.unique(np.concatenate(rows)) if rows else np.zeros(0, dtype=np.int64)


def build_objective(spec: RunSpec, data: PreparedData, device: torch.device, model: AAMModel) -> Objective:
    """The training objective: distance target (pairwise loss), class weights and the loss settings of ``spec``."""
    target = None
    if spec.loss.pairwise_weight > 0:
        from aam_ds.distances.target import build_distance_target

        target = build_distance_target(spec.data.model_copy(update={"tree": data.tree or spec.data.tree}), data.table, device)
    weights = None
    if spec.loss.task == "classification" and spec.loss.class_weights:
        train_labels = torch.as_tensor(data.targets[data.splits["train"]])
        weights = losses.inverse_frequency_weights(train_labels, len(data.class_names))
    return Objective(spec.loss, target, weights)


def parameter_text(model: AAMModel) -> str:
    """``"86,216 (+ 4,194,304 in the ASV identity table)"``: a step reads only its batch's rows of the table."""
    table = model.asv_identity.weight.numel() if model.asv_identity is not None else 0
    dense = sum(p.numel() for p in model.parameters()) - table
    return f"{dense:,}" + (f" (+ {table:,} in the ASV identity table)" if table else "")
