"""DeepSpeed checkpoints (every rank), an atomically updated ``latest``, and the consolidated fp32 state dict.

Layout of a checkpoint folder::

    <dir>/step00000040/...   DeepSpeed's files (model, ZeRO partitions, optimizer, scheduler, client state)
    <dir>/step00000040/layout.json   world size, ZeRO stage, batch layout, model shape (checked on resume)
    <dir>/step00000040/manifest.json size and SHA-256 of every file (a damaged newest checkpoint falls back)
    <dir>/latest             the tag of the newest complete checkpoint (written by rename)

``latest`` is only replaced after every rank has finished writing its tag folder, so a crash in
the middle of a save leaves the previous checkpoint as the one a resume picks up.

:func:`consolidated_state_dict` gathers the fp32 weights (from ZeRO partitions for stages 1-3)
that the trainer writes into the consolidated export (:mod:`aam_ds.export`).
"""

from __future__ import annotations

import hashlib
import json
import shutil
import time
from pathlib import Path
from typing import Any

import torch

from aam_ds.engine.disk import checkpoint_bytes, engine_parameters, written_on_every_rank
from aam_ds.engine.distributed import all_gather_objects, barrier, broadcast_from_main, process_rank
from aam_ds.errors import AamInputError, notice
from aam_ds.io_utils import atomic_write_text
from aam_ds.spec import RunSpec

LATEST = "latest"
LAYOUT_FILE = "layout.json"
MANIFEST_FILE = "manifest.json"
PEER_FILES_WAIT_S = 3.0  # how long a rank waits to see the files the other ranks just saved
SHAPE_FIELDS = ("d_model", "n_heads", "asv_layers", "sample_layers", "ffn_mult", "asv_identity_buckets")


def step_tag(step: int) -> str:
    """The checkpoint tag of ``step``, e.g. ``step00000050``."""
    return f"step{step:08d}"


def latest_tag(ckpt_dir: Path) -> str | None:
    """The tag named by ``<dir>/latest``, or None when there is no complete checkpoint."""
    path = Path(ckpt_dir) / LATEST
    if not path.is_file():
        return None
    tag = path.read_text().strip()
    if not (Path(ckpt_dir) / tag).is_dir():
        raise AamInputError(str(path), f"names checkpoint '{tag}' which does not exist", f"delete {path} or restore {tag}")
    return tag


def checkpoint_layout(spec: RunSpec, world_size: int) -> dict[str, Any]:
    """What a checkpoint can only be resumed with: the world size, ZeRO stage, offload, precision,
    batch layout and model shape (``layout.json`` in each tag folder)."""
    par, model = spec.parallel, spec.model
    return {
        "world size": world_size,
        "parallel.zero_stage": par.zero_stage,
        "parallel.offload_optimizer": par.offload_optimizer,
        "parallel.offload_param": par.offload_param,
        "parallel.precision": par.precision,
        "parallel.global_batch_size": par.global_batch_size,
        "parallel.micro_batch_size": par.micro_batch_size,
        **{f"model.{name}": getattr(model, name) for name in SHAPE_FIELDS},
    }


def saved_layout(tag_dir: Path) -> dict[str, Any]:
    """The checkpoint's ``layout.json`` (empty for checkpoints written without one)."""
    path = tag_dir / LAYOUT_FILE
    return json.loads(path.read_text()) if path.is_file() else {}


def check_layout(tag_dir: Path, layout: dict[str, Any], weights_only: bool = False) -> None:
    """Refuse, before DeepSpeed reads anything, a checkpoint written with another layout (an
    AamInputError listing every difference); checkpoints without ``layout.json`` are not checked.
    ``weights_only``: only the model shape must match (a restart from the checkpoint's weights)."""
    saved = saved_layout(tag_dir)
    changed = [
        f"{name} {saved[name]} -> {value}"
        for name, value in layout.items()
        if name in saved and saved[name] != value and (name.startswith("model.") or not weights_only)
    ]
    if changed:
        world_changed = not weights_only and saved.get("world size", layout["world size"]) != layout["world size"]
        raise AamInputError(
            str(tag_dir),
            f"was written with another layout than this run's ({'; '.join(changed)})",
            "resume with the settings it was written with, or start a new run from the consolidated export "
            "(--set model.pretrained=<run>/model.pt, optimizer state reset)"
            + ("; or continue from its weights with --set checkpoint.on_world_size_change=restart_from_weights" if world_changed else ""),
        )


def checkpoint_weights(ckpt_dir: Path, tag: str) -> dict[str, torch.Tensor]:
    """The consolidated fp32 weights and buffers of checkpoint ``tag``, written by any number of
    ranks: merged from the ZeRO partitions (stages 1-3, DeepSpeed's ``zero_to_fp32``), or the
    module's own state (ZeRO-0; 16-bit runs give their 16-bit weights as fp32)."""
    if saved_layout(Path(ckpt_dir) / tag).get("parallel.zero_stage", 1) == 0:
        state = torch.load(Path(ckpt_dir) / tag / "mp_rank_00_model_states.pt", map_location="cpu", weights_only=False)["module"]
        return {name: value.float() if value.is_floating_point() else value for name, value in state.items()}
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

    return dict(get_fp32_state_dict_from_zero_checkpoint(str(ckpt_dir), tag=tag))


def save_checkpoint(
    engine: Any, ckpt_dir: Path, step: int, client_state: dict[str, Any], keep_last: int, layout: dict[str, Any] | None = None
) -> str:
    """Save on every rank (DeepSpeed's save is collective), then point ``latest`` at it; returns the tag.

    Rank 0 writes ``layout`` (:func:`checkpoint_layout`) and a manifest of every file's size and
    SHA-256 (:func:`damage`) into the tag folder before ``latest`` moves; older tags beyond
    ``keep_last`` are removed by rank 0 after ``latest`` moved on. A write that fails on any rank
    (disk full, file-size limit) is one AamInputError on every rank naming the folder, the cause
    and the space needed (:func:`~aam_ds.engine.disk.written_on_every_rank`); the half-written
    folder is removed and ``latest`` still names the previous checkpoint.
    """
    ckpt_dir = Path(ckpt_dir)
    tag, previous = step_tag(step), latest_tag(ckpt_dir)
    need = checkpoint_size(ckpt_dir / previous) if previous else checkpoint_bytes(engine_parameters(engine))
    fix = "free disk space, or set checkpoint.dir to a larger file system; " + (
        f"the previous checkpoint {ckpt_dir / previous} is kept: continue from it with --resume"
        if previous
        else "no earlier checkpoint exists"
    )

    def publish() -> None:  # rank 0, once every rank's files are written
        if layout is not None:
            atomic_write_text(ckpt_dir / tag / LAYOUT_FILE, json.dumps(layout, indent=1) + "\n")
        atomic_write_text(ckpt_dir / tag / MANIFEST_FILE, json.dumps(file_manifest(ckpt_dir / tag), indent=1) + "\n")
        atomic_write_text(ckpt_dir / LATEST, tag + "\n")

    try:
        written_on_every_rank(
            lambda: engine.save_checkpoint(str(ckpt_dir), tag=tag, client_state={**client_state, "step": step}, save_latest=False),
            ckpt_dir / tag,
            need,
            fix,
            collective=True,
        )
        require_shared(ckpt_dir, all_gather_objects(unseen_peer_files(ckpt_dir / tag)))
        written_on_every_rank(publish if process_rank() == 0 else lambda: None, ckpt_dir / tag, need, fix, collective=False)
    except AamInputError:
        if tag != previous:  # every rank: on checkpoint folders that are not shared each holds its own part
            shutil.rmtree(ckpt_dir / tag, ignore_errors=True)
        raise
    if process_rank() == 0:
        tags = sorted(p.name for p in ckpt_dir.iterdir() if p.is_dir() and p.name.startswith("step"))
        for old in tags[: max(0, len(tags) - keep_last)]:
            if old != tag:
                shutil.rmtree(ckpt_dir / old, ignore_errors=True)
    barrier()
    return tag


def checkpoint_size(tag_dir: Path) -> int:
    """Bytes of a written checkpoint (from its manifest; 0 without one)."""
    path = tag_dir / MANIFEST_FILE
    return sum(size for size, _ in json.loads(path.read_text()).values()) if path.is_file() else 0


def file_manifest(tag_dir: Path) -> dict[str, list]:
    """``{relative path: [bytes, sha256]}`` of every file under ``tag_dir`` (but the manifest)."""
    manifest = {}
    for path in sorted(p for p in tag_dir.rglob("*") if p.is_file() and p.name != MANIFEST_FILE):
        digest = hashlib.sha256()
        with path.open("rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
        manifest[str(path.relative_to(tag_dir))] = [path.stat().st_size, digest.hexdigest()]
    return manifest


def damage(tag_dir: Path) -> str | None:
    """What is wrong with a checkpoint against its manifest (a missing, truncated or changed file),
    or None when it is complete; a checkpoint without a manifest (older runs) is taken as complete."""
    path = tag_dir / MANIFEST_FILE
    if not path.is_file():
        return None
    expected, found = json.loads(path.read_text()), file_manifest(tag_dir)
    for name, (size, digest) in expected.items():
        if name not in found:
            return f"{name} is missing"
        if found[name][0] != size:
            return f"{name} has {found[name][0]} bytes, {size} were written"
        if found[name][1] != digest:
            return f"{name} differs from what was written"
    return None


def resumable_tag(ckpt_dir: Path) -> str:
    """The tag a resumed run continues from: ``latest``'s when it is complete (:func:`damage`), else
    the newest complete older one, with a notice naming both; an AamInputError when there is none.
    Every rank reaches the same answer on a checkpoint folder they share."""
    ckpt_dir = Path(ckpt_dir)
    latest = latest_tag(ckpt_dir)
    if latest is None:
        raise AamInputError(
            str(ckpt_dir),
            "holds no checkpoint to resume from",
            "run without --resume (checkpoint.resume), or point tracking.run_dir / checkpoint.dir at the run to continue",
        )
    problem = _damage_cached(ckpt_dir / latest)
    if problem is None:
        return latest
    older = sorted((p.name for p in ckpt_dir.iterdir() if p.is_dir() and p.name.startswith("step") and p.name < latest), reverse=True)
    for tag in older:
        if _damage_cached(ckpt_dir / tag) is None:
            message = f"checkpoint {ckpt_dir / latest} is damaged ({problem}); resuming from the previous one, {ckpt_dir / tag}"
            if message not in _ANNOUNCED:  # asked more than once per run: said once
                _ANNOUNCED.add(message)
                notice(message)
            return tag
    raise AamInputError(
        str(ckpt_dir / latest),
        f"is damaged ({problem}) and no older complete checkpoint is left",
        "start the run again, or from its last export with --set model.pretrained=<run>/model.pt",
    )


def agreed_resume_tag(ckpt_dir: Path) -> str:
    """The tag every rank resumes from (call on every rank): rank 0 decides (:func:`resumable_tag`)
    and broadcasts it; every rank then confirms that it sees that checkpoint's files (a folder not
    shared by all nodes is one AamInputError on every rank, :func:`require_shared`)."""
    ckpt_dir = Path(ckpt_dir)
    answer = None
    if process_rank() == 0:
        try:
            answer = (resumable_tag(ckpt_dir), None)
        except AamInputError as exc:
            answer = (None, (exc.source, exc.problem, exc.fix))
    tag, problem = broadcast_from_main(answer)
    if problem is not None:
        raise AamInputError(*problem)
    require_shared(ckpt_dir, all_gather_objects(unseen_files(ckpt_dir / tag)), f"checkpoint {tag}, which rank 0 resumes from")
    return tag


def unseen_files(tag_dir: Path) -> str | None:
    """Which of a checkpoint's files (per its manifest) this process does not see, or None."""
    if not tag_dir.is_dir():
        return f"there is no folder {tag_dir}"
    manifest = tag_dir / MANIFEST_FILE
    missing = [name for name in (json.loads(manifest.read_text()) if manifest.is_file() else {}) if not (tag_dir / name).is_file()]
    return f"{len(missing)} of its files are missing, e.g. {missing[0]}" if missing else None


def unseen_peer_files(tag_dir: Path, wait_s: float = PEER_FILES_WAIT_S) -> str | None:
    """After a save (collective): which files that any rank sees in ``tag_dir`` this rank does not
    see, looked up by name (as network file systems revalidate a name, not a listing) for up to
    ``wait_s`` seconds; None when it sees them all."""
    written = set().union(*all_gather_objects([str(f.relative_to(tag_dir)) for f in tag_dir.rglob("*") if f.is_file()]))
    deadline = time.monotonic() + wait_s
    while (missing := sorted(name for name in written if not (tag_dir / name).is_file())) and time.monotonic() < deadline:
        time.sleep(0.5)
    return f"{len(missing)} of the files written into {tag_dir.name} are missing here, e.g. {missing[0]}" if missing else None


def require_shared(ckpt_dir: Path, problems: list[str | None], what: str = "") -> None:
    """An AamInputError on every rank when any rank reported a problem (``problems``: one per rank,
    in rank order, None where all is well) with the checkpoint folder that every rank must share."""
    failed = [(rank, problem) for rank, problem in enumerate(problems) if problem]
    if failed:
        rank, problem = failed[0]
        raise AamInputError(
            str(ckpt_dir),
            f"rank {rank} does not see {what or 'the checkpoint files that the other ranks wrote'} ({problem})",
            "checkpoint.dir must be shared by all nodes: set it (or tracking.run_dir) to a folder on a file "
            "system that every node mounts at the same path",
        )


_ANNOUNCED: set[str] = set()
_DAMAGE: dict[tuple[str, float], str | None] = {}  # (tag folder, manifest mtime) -> damage: hashed once per process


def _damage_cached(tag_dir: Path) -> str | None:
    manifest = tag_dir / MANIFEST_FILE
    key = (str(tag_dir), manifest.stat().st_mtime if manifest.is_file() else 0.0)
    if key not in _DAMAGE:
        _DAMAGE[key] = damage(tag_dir)
    return _DAMAGE[key]


def load_checkpoint(engine: Any, ckpt_dir: Path, tag: str | None = None) -> dict[str, Any]:
    """Restore model, optimizer, scheduler and client state from checkpoint ``tag`` (default:
    :func:`resumable_tag`'s; an AamInputError if there is none; check its layout first with
    :func:`check_layout`)."""
    tag = tag or resumable_tag(ckpt_dir)
    try:
        path, client_state = engine.load_checkpoint(str(ckpt_dir), tag=tag)
    except (AssertionError, RuntimeError, ValueError) as exc:
        raise AamInputError(
            str(Path(ckpt_dir) / tag),
            f"cannot be resumed ({type(exc).__name__}: {exc})",
            "resume with the same world size and ZeRO stage as the run that wrote it, "
            "or start from its consolidated export via model.pretrained",
        ) from exc
    if path is None:
        raise AamInputError(str(Path(ckpt_dir) / tag), "DeepSpeed found no checkpoint files", "delete the folder and its 'latest'")
    return client_state


def consolidated_state_dict(engine: Any, ckpt_dir: Path, tag: str) -> dict[str, torch.Tensor] | None:
    """The full fp32 state dict on rank 0 (None elsewhere); call on every rank after ``save_checkpoint``.

    ZeRO stages 1-3 keep the fp32 master weights partitioned in the optimizer files; DeepSpeed's
    ``zero_to_fp32`` merges them exactly. ZeRO-0 replicates them: they are read from the optimizer
    (the bf16 optimizer's fp32 copies) or, in fp32, are the module's own.
    """
    state = None
    if process_rank() == 0:
        if engine.zero_optimization_stage() == 0:
            state = {k: v.detach().float().cpu().clone() for k, v in engine.module.state_dict().items()}
            state.update(_zero0_master_weights(engine))
        else:
            from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

            state = dict(get_fp32_state_dict_from_zero_checkpoint(str(ckpt_dir), tag=tag))
    barrier()
    return state


def _zero0_master_weights(engine: Any) -> dict[str, torch.Tensor]:
    """fp32 master copies of 16-bit ZeRO-0 weights, from DeepSpeed's fp16 / bf16 optimizer wrapper
    (unfused: one fp32 tensor per parameter; fused: one flat tensor per group). Empty in fp32
    training, where the weights are their own masters."""
    optimizer = engine.optimizer
    if hasattr(optimizer, "fp32_groups_flat"):
        groups = [
            torch._utils._unflatten_dense_tensors(flat, params) for params, flat in zip(optimizer.fp16_groups, optimizer.fp32_groups_flat)
        ]
    elif hasattr(optimizer, "fp32_groups") and hasattr(optimizer, "fp16_groups"):
        groups = optimizer.fp32_groups
    else:
        return {}
    names = {id(p): n for n, p in engine.module.named_parameters()}
    return {
        names[id(param)]: master.detach().float().cpu().clone()
        for params, masters in zip(optimizer.fp16_groups, groups)
        for param, master in zip(params, masters)
    }
