"""Disk space for checkpoints: an estimate checked before training starts, and a failed save
(disk full, file-size limit, quota) reported as one clear error per rank.

A DeepSpeed checkpoint of a model with P parameters holds about ``BYTES_PER_PARAMETER * P``
bytes over all ranks: fp32 master weights and Adam's two moments (12 bytes per parameter,
partitioned over ranks from ZeRO-1 on) and the module's weights (2-4 bytes, none at ZeRO-3).
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any, Callable

from aam_ds.engine.distributed import all_gather_objects, barrier, is_peer_failure, process_rank
from aam_ds.errors import AamInputError, notice

BYTES_PER_PARAMETER = 16
SAVE_ERRORS = (OSError, RuntimeError)  # a failed write: OSError from Python, RuntimeError from torch's zip writer


def checkpoint_bytes(n_params: int) -> int:
    """Estimated bytes of one checkpoint (all ranks' files) of a model with ``n_params`` parameters."""
    return BYTES_PER_PARAMETER * n_params


def engine_parameters(engine: Any) -> int:
    """The model's parameter count, also when ZeRO-3 has partitioned the parameters (``ds_numel``)."""
    return sum(getattr(p, "ds_numel", p.numel()) for p in engine.module.parameters())


def size_text(n_bytes: float) -> str:
    """``"51.5 MB"``, ``"12.30 GB"`` (decimal units, as ``df -H``)."""
    return f"{n_bytes / 1e9:.2f} GB" if n_bytes >= 1e9 else f"{n_bytes / 1e6:.1f} MB"


def free_bytes(folder: Path) -> int:
    """Free bytes on the file system of ``folder`` (or of its nearest existing parent)."""
    folder = Path(folder).absolute()
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    return shutil.disk_usage(folder).free


def check_free_space(ckpt_dir: Path, n_params: int, keep_last: int) -> None:
    """Before training: an AamInputError when the checkpoint folder's file system cannot hold one
    checkpoint (:func:`checkpoint_bytes`), a notice when it cannot hold ``keep_last + 1`` (the kept
    ones and the one being written)."""
    need, free = checkpoint_bytes(n_params), free_bytes(ckpt_dir)
    if free < need:
        raise AamInputError(
            str(ckpt_dir),
            f"has {size_text(free)} free, and a checkpoint of this model needs about {size_text(need)}",
            "free disk space, or set checkpoint.dir to a larger file system",
        )
    if free < need * (keep_last + 1):
        notice(
            f"{ckpt_dir} has {size_text(free)} free; checkpoint.keep_last={keep_last} checkpoints and the one being "
            f"written need about {size_text(need * (keep_last + 1))}"
        )


def written_on_every_rank(write: Callable[[], Any], tag_dir: Path, need: int, fix: str, collective: bool) -> None:
    """Run ``write`` on every rank; when it failed on any rank (:data:`SAVE_ERRORS`), every rank
    raises one AamInputError naming ``tag_dir``, the first failing rank and its cause, the free
    space and ``need`` (bytes), and ``fix``.

    ``collective``: ``write`` ends in a barrier of its own (DeepSpeed's save), which a failing rank
    then joins here instead, so that every rank reaches the exchange of outcomes.
    """
    cause = None
    try:
        write()
    except SAVE_ERRORS as exc:
        if is_peer_failure(exc):  # a silent or lost peer, not a failed write: no further collective here
            raise
        cause = save_error_text(exc)
        if collective:
            barrier()
    causes = all_gather_objects(cause)
    failed = [(rank, text) for rank, text in enumerate(causes) if text]
    if failed:
        rank, text = (process_rank(), cause) if cause else failed[0]  # this rank's own cause first
        raise AamInputError(
            str(tag_dir),
            f"could not be written (rank {rank}: {text}); {size_text(free_bytes(tag_dir))} "
            f"free there, a checkpoint needs about {size_text(need)}",
            fix,
        )


def save_error_text(exc: BaseException) -> str:
    """One line for a failed write: the OS error, or for torch's zip writer (which reports a short
    write as ``unexpected pos``) what that means."""
    text = (str(exc).strip().splitlines() or [""])[0]
    if isinstance(exc, RuntimeError) and ("inline_container" in text or "iostream error" in text):
        return f"a file was written only in part: the disk is full or a file-size limit was reached (torch: {text})"
    return f"{type(exc).__name__}: {text}"
