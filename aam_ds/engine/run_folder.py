"""The run folder of a training stage: a fresh one per run by default, and never two histories in one.

With ``tracking.run_dir`` unset a run gets ``runs/<stage>-<YYYYmmdd-HHMMSS>`` (stage: pretrain,
finetune or cv; ``-2``, ``-3`` ... appended when two runs start in the same second) and the symlink
``runs/<stage>-latest`` is re-pointed at it by rename, so ``runs/pretrain-latest/model.pt`` is the
newest pretraining export. A resumed run (``checkpoint.resume``) with no run_dir continues the run
that ``runs/<stage>-latest`` names.

A folder holding a previous run (metrics.jsonl, model.pt, checkpoints, cross-validation folds) is
continued with ``checkpoint.resume``, emptied of that run's outputs with ``tracking.overwrite``, and
refused otherwise. Rank 0 decides; every rank gets its answer (the folder, or the same error).
"""

from __future__ import annotations

import itertools
import os
import shutil
from datetime import datetime
from pathlib import Path

from aam_ds.engine.checkpoint import LATEST, resumable_tag
from aam_ds.engine.distributed import DistContext, broadcast_from_main
from aam_ds.errors import AamInputError
from aam_ds.export import EXPORT_NAME
from aam_ds.spec import RunSpec
from aam_ds.tracking import METRICS_FILE

RUNS_ROOT = Path("runs")  # default run folders live here, relative to the working directory
# Names (glob patterns) in a run folder that show a run already used it: the trainer's metrics and
# export, its default checkpoint folder, and a cross-validation's folds file and fold folders.
HISTORY = (METRICS_FILE, EXPORT_NAME, "checkpoints", "folds.tsv", "fold[0-9]*")
# Everything a run writes there (removed by tracking.overwrite): the above, the trainer's spec,
# DeepSpeed config, split lists and split predictions, W&B's files, the MLflow run ID, evaluation reports
# written for the trackers, cross-validation's results.
OUTPUTS = HISTORY + (
    "spec.json",
    "ds_config.json",
    "splits",
    "predictions_*.tsv",
    "wandb",
    "wandb_run_id",
    "mlflow_run_id",
    "evaluation",
    "oof_predictions.tsv",
    "cv_metrics.json",
)


def claim_run_dir(spec: RunSpec, stage: str, ctx: DistContext, checkpointed: bool = True) -> RunSpec:
    """The spec with its run folder decided and ready, the same on every rank (call on every rank).

    ``stage`` names default folders; ``checkpointed``: the stage resumes from a checkpoint in
    ``spec.checkpoint_dir()`` (training), not from fold folders (cross-validation).
    """
    answer = decide(spec, stage, checkpointed) if ctx.is_main else None
    run_dir, problem = broadcast_from_main(answer)
    if problem is not None:
        raise AamInputError(*problem)
    return with_run_dir(spec, Path(run_dir))


def decide(spec: RunSpec, stage: str, checkpointed: bool) -> tuple[str | None, tuple[str, str, str] | None]:
    """Rank 0: (the run folder, None), or (None, an AamInputError's source, problem, fix) to raise on every rank."""
    try:
        return str(prepare_run_dir(spec, stage, checkpointed)), None
    except AamInputError as exc:
        return None, (exc.source, exc.problem, exc.fix)


def prepare_run_dir(spec: RunSpec, stage: str, checkpointed: bool) -> Path:
    """Choose the run folder and make it ready: resumable, new, or emptied (``tracking.overwrite``)."""
    resume = spec.checkpoint.resume
    fresh = spec.tracking.run_dir is None and not resume
    if fresh:
        check_latest_link(stage)
    run_dir = spec.tracking.run_dir or (latest_run_dir(stage) if resume else new_run_dir(stage, datetime.now()))
    ckpt_dir = with_run_dir(spec, run_dir).checkpoint_dir()
    history = run_history(run_dir, ckpt_dir)
    if resume:
        if checkpointed:
            resumable_tag(ckpt_dir)
        elif not history:
            raise AamInputError(str(run_dir), "holds no previous run to resume", "run without --resume (checkpoint.resume)")
    elif history:
        if not spec.tracking.overwrite:
            raise in_use_error(run_dir, history)
        remove_outputs(run_dir, ckpt_dir)
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise AamInputError(f"tracking.run_dir {run_dir}", f"cannot be created ({exc.strerror})", "choose a writable folder") from None
    check_writable(run_dir, ckpt_dir)
    if fresh:
        point_latest_link(stage, run_dir)
    return run_dir


def check_writable(run_dir: Path, ckpt_dir: Path) -> None:
    """Refuse, before any compute, a run folder (or checkpoint folder) this process cannot write, and
    a file name the run will write that is taken by a folder (e.g. ``model.pt/``)."""
    for folder in (run_dir, ckpt_dir if ckpt_dir.exists() else ckpt_dir.parent):
        if folder.exists() and not os.access(folder, os.W_OK | os.X_OK):
            raise AamInputError(
                str(folder),
                "is not writable by this process",
                "choose another tracking.run_dir (or checkpoint.dir), or fix its permissions",
            )
    for name in (METRICS_FILE, EXPORT_NAME, "spec.json", "ds_config.json"):
        if (run_dir / name).is_dir():
            raise AamInputError(
                str(run_dir / name),
                "is a folder, but the run writes a file of that name",
                "remove or rename it, or choose another tracking.run_dir",
            )


def with_run_dir(spec: RunSpec, run_dir: Path) -> RunSpec:
    """A copy of ``spec`` with ``tracking.run_dir`` set to ``run_dir``."""
    return spec.model_copy(update={"tracking": spec.tracking.model_copy(update={"run_dir": run_dir})})


def latest_link(stage: str) -> Path:
    """``runs/<stage>-latest``: the symlink to the newest default run folder of ``stage``."""
    return RUNS_ROOT / f"{stage}-latest"


def check_latest_link(stage: str) -> None:
    """Refuse (AamInputError) a ``runs/<stage>-latest`` that exists but is not a symlink."""
    link = latest_link(stage)
    if link.exists() and not link.is_symlink():
        raise AamInputError(str(link), "is not the symlink aam-ds keeps to the newest run", "rename or move it")


def latest_run_dir(stage: str) -> Path:
    """The folder ``runs/<stage>-latest`` links to (a resumed run with no tracking.run_dir continues it)."""
    link = latest_link(stage)
    if not link.is_symlink():
        raise AamInputError(
            str(link),
            f"not found: there is no previous {stage} run to resume",
            "run without --resume, or set tracking.run_dir to the folder of the run to continue",
        )
    return link.parent / os.readlink(link)


def new_run_dir(stage: str, now: datetime) -> Path:
    """Create ``runs/<stage>-<YYYYmmdd-HHMMSS>`` (with ``-2``, ``-3`` ... when taken, e.g. by a
    job started in the same second); creation is exclusive, so concurrent runs never share one."""
    base = f"{stage}-{now:%Y%m%d-%H%M%S}"
    for n in itertools.count(1):
        path = RUNS_ROOT / (base if n == 1 else f"{base}-{n}")
        try:
            path.mkdir(parents=True)
            return path
        except FileExistsError:
            continue


def point_latest_link(stage: str, run_dir: Path) -> None:
    """Re-point ``runs/<stage>-latest`` at ``run_dir`` by rename (readers see the old or the new link)."""
    link = latest_link(stage)
    tmp = link.with_name(f".{link.name}.{os.getpid()}.tmp")
    tmp.unlink(missing_ok=True)
    tmp.symlink_to(os.path.relpath(run_dir, link.parent))
    os.replace(tmp, link)


def run_history(run_dir: Path, ckpt_dir: Path) -> list[Path]:
    """What shows that a run already used ``run_dir`` (its outputs, or a checkpoint in ``ckpt_dir``)."""
    found = sorted(path for pattern in HISTORY for path in run_dir.glob(pattern))
    if (ckpt_dir / LATEST).is_file() and ckpt_dir not in found:  # a checkpoint.dir outside the run folder
        found.append(ckpt_dir / LATEST)
    return found


def in_use_error(run_dir: Path, history: list[Path]) -> AamInputError:
    """The AamInputError for a run folder that holds a previous run's files (``history``), naming the ways out."""
    shown = ", ".join(str(path.relative_to(run_dir)) if path.is_relative_to(run_dir) else str(path) for path in history)
    return AamInputError(
        str(run_dir),
        f"already holds a previous run ({shown})",
        "continue it with --resume (checkpoint.resume: true), choose another tracking.run_dir (unset: a new "
        "runs/<stage>-<time> folder), or set tracking.overwrite: true to delete its outputs first",
    )


def remove_outputs(run_dir: Path, ckpt_dir: Path) -> None:
    """Delete what a run wrote into ``run_dir`` (the names in OUTPUTS) and its checkpoint folder; other files stay."""
    paths = {path for pattern in OUTPUTS for path in run_dir.glob(pattern)} | {ckpt_dir}
    for path in paths:
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        elif path.exists() or path.is_symlink():
            path.unlink()
