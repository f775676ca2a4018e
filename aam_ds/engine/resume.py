"""Where a resumed run continues: the checkpoint every rank agreed on, or, after a change of the
number of ranks with ``checkpoint.on_world_size_change=restart_from_weights``, that checkpoint's
consolidated fp32 weights with a fresh optimizer; in both cases the data stream continues at the
checkpoint's data position, counted in samples (:class:`~aam_ds.engine.batches.DataPosition`)."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import torch

from aam_ds.engine import checkpoint as ckpt
from aam_ds.engine.batches import DataPosition, advance
from aam_ds.engine.distributed import DistContext
from aam_ds.errors import AamInputError, notice
from aam_ds.model.aam import AAMModel
from aam_ds.spec import RunSpec

DATA_POSITION = "data_position"  # the checkpoint's client-state key: [epoch, samples of its permutation used]


def resume_point(
    spec: RunSpec, ckpt_dir: Path, ctx: DistContext, model: AAMModel, n_train: int
) -> tuple[str | None, tuple[int, DataPosition] | None]:
    """Where a resumed run continues (every rank): ``(tag, None)``, the checkpoint every rank agreed
    on (its layout checked), or with ``checkpoint.on_world_size_change=restart_from_weights`` and a
    checkpoint of another world size ``(None, (its step, its data position))`` after loading its
    consolidated fp32 weights into ``model`` (only the model shape must match; the optimizer starts
    afresh, the learning-rate schedule at that step, the data where the checkpoint left the epoch's
    permutation, cut into the new global micro-batches; ``n_train``: training samples)."""
    tag = ckpt.agreed_resume_tag(ckpt_dir)
    saved_world = ckpt.saved_layout(ckpt_dir / tag).get("world size", ctx.world_size)
    restart = spec.checkpoint.on_world_size_change == "restart_from_weights" and saved_world != ctx.world_size
    ckpt.check_layout(ckpt_dir / tag, ckpt.checkpoint_layout(spec, ctx.world_size), weights_only=restart)
    if not restart:
        return tag, None
    missing, unexpected = model.load_state_dict(ckpt.checkpoint_weights(ckpt_dir, tag), strict=False)
    trainable = {name for name, p in model.named_parameters() if p.requires_grad}
    if unexpected or trainable & set(missing):
        raise AamInputError(
            str(ckpt_dir / tag),
            f"holds weights that do not fit the model ({(unexpected + missing)[:5]})",
            "resume with the model settings it was written with",
        )
    step = int(tag.removeprefix("step"))
    position = saved_data_position(ckpt_dir / tag, step, saved_world, n_train)
    notice(
        f"checkpoint {ckpt_dir / tag} was written by {saved_world} rank(s), this run has {ctx.world_size}: continuing at "
        f"step {step} from its consolidated fp32 weights with the optimizer state reset, data at epoch {position.epoch} after {position.sample} of its samples "
        "(checkpoint.on_world_size_change)"
    )
    return None, (step, position)


def data_position(state: dict[str, Any], micro_steps: int, n_samples: int, global_micro: int) -> DataPosition:
    """The data position kept in a checkpoint's client ``state``; for checkpoints written before it
    was kept, the place after ``micro_steps`` micro-steps of ``global_micro`` samples from the start
    (the layout that wrote them)."""
    if DATA_POSITION in state:
        return DataPosition(*state[DATA_POSITION])
    return advance(DataPosition(), micro_steps, n_samples, global_micro)


def saved_data_position(tag_dir: Path, step: int, saved_world: int, n_samples: int) -> DataPosition:
    """The data position of checkpoint ``tag_dir`` (read from its model-states file without DeepSpeed),
    or, for an older checkpoint, the place after ``step`` steps of its own layout over ``n_samples``
    training samples."""
    state = torch.load(tag_dir / "mp_rank_00_model_states.pt", map_location="cpu", weights_only=False)
    layout = ckpt.saved_layout(tag_dir)
    micro, batch = layout.get("parallel.micro_batch_size", 1), layout.get("parallel.global_batch_size", 1)
    return data_position(state, step * batch // (micro * saved_world), n_samples, micro * saved_world)


def advance_schedule(engine: Any, steps: int) -> None:
    """Move a fresh engine's learning-rate schedule on by ``steps`` optimizer steps."""
    if engine.lr_scheduler is None:
        return
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch: "lr_scheduler.step() before optimizer.step()"
        for _ in range(steps):
            engine.lr_scheduler.step()
