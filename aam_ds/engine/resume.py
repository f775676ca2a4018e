"""Where a resumed run continues: the checkpoint every rank agreed on, or, after a change of the
number of ranks with ``checkpoint.on_world_size_change=restart_from_weights``, that checkpoint's
consolidated fp32 weights with a fresh optimizer."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

from aam_ds.engine import checkpoint as ckpt
from aam_ds.engine.distributed import DistContext
from aam_ds.errors import AamInputError, notice
from aam_ds.model.aam import AAMModel
from aam_ds.spec import RunSpec


def resume_point(spec: RunSpec, ckpt_dir: Path, ctx: DistContext, model: AAMModel) -> tuple[str | None, int | None]:
    """Where a resumed run continues (every rank): ``(tag, None)``, the checkpoint every rank agreed
    on (its layout checked), or with ``checkpoint.on_world_size_change=restart_from_weights`` and a
    checkpoint of another world size ``(None, its step)`` after loading its consolidated fp32
    weights into ``model`` (only the model shape must match; the optimizer starts afresh, the
    learning-rate schedule at that step, the data at that step's place in the new global batches)."""
    tag = ckpt.agreed_resume_tag(ckpt_dir)
    saved_world = ckpt.saved_layout(ckpt_dir / tag).get("world size", ctx.world_size)
    restart = spec.checkpoint.on_world_size_change == "restart_from_weights" and saved_world != ctx.world_size
    ckpt.check_layout(ckpt_dir / tag, ckpt.checkpoint_layout(spec, ctx.world_size), weights_only=restart)
    if not restart:
        return tag, None
    missing, unexpected = model.load_state_dict(ckpt.checkpoint_weights(ckpt_dir, tag), strict=False)
    trainable = {name for name, p in model.named_parameters() if p.requires_grad}
    if unexpected or trainable & set(missing):
        raise AamInputError(str(ckpt_dir / tag), f"holds weights that do not fit the model ({(unexpected + missing)[:5]})",
                            "resume with the model settings it was written with")
    step = int(tag.removeprefix("step"))
    notice(f"checkpoint {ckpt_dir / tag} was written by {saved_world} rank(s), this run has {ctx.world_size}: continuing at "
           f"step {step} from its consolidated fp32 weights with the optimizer state reset (checkpoint.on_world_size_change)")
    return None, step


def advance_schedule(engine: Any, steps: int) -> None:
    """Move a fresh engine's learning-rate schedule on by ``steps`` optimizer steps."""
    if engine.lr_scheduler is None:
        return
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch: "lr_scheduler.step() before optimizer.step()"
        for _ in range(steps):
            engine.lr_scheduler.step()
