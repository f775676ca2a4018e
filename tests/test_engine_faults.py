"""Issue 20: faults of a 2-rank run (gloo, tiny model) end in one clear line per rank, exit code 2,
no traceback, and a checkpoint folder a later run resumes from with the same losses.

Each rank is a spawned process running the real entry point (``run_stage(pretrain, argv)``), its
output in ``rank<N>.log``; the faults are real: a file-size limit of the rank processes
(``RLIMIT_FSIZE``, writes past it fail with EFBIG as on a full disk), per-rank checkpoint folders.
"""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import re
import resource
import shutil
import signal
import time
from pathlib import Path

import pytest
import torch
from test_engine_pairwise import run_ranks
from test_engine_train import run_args, train_losses

from aam_ds.engine import checkpoint as ckpt
from aam_ds.engine.disk import check_free_space, checkpoint_bytes, free_bytes
from aam_ds.errors import AamInputError


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory) -> Path:
    """One demo-data / token cache for every run in this module."""
    return tmp_path_factory.mktemp("aam-cache")


def _stage_rank(
    rank: int, world: int, port: int, argv: list[str], log_dir: str, file_size_limit: int | None, cwds: list[str] | None
) -> None:
    """One rank of ``aam-ds pretrain``: output to ``<log_dir>/rank<N>.log``; optionally no file may
    grow past ``file_size_limit`` bytes; ``cwds[rank]``: this rank's working folder (as on another node)."""
    os.environ.update(
        RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), OMP_NUM_THREADS="1"
    )
    if cwds:
        os.chdir(cwds[rank])
    log = open(Path(log_dir) / f"rank{rank}.log", "w", buffering=1)
    os.dup2(log.fileno(), 1)
    os.dup2(log.fileno(), 2)
    if file_size_limit:
        resource.setrlimit(resource.RLIMIT_FSIZE, (file_size_limit, resource.getrlimit(resource.RLIMIT_FSIZE)[1]))
    from aam_ds.engine.entry import run_stage
    from aam_ds.engine.trainer import pretrain

    run_stage(pretrain, argv)


def pretrain_ranks(
    log_dir: Path, argv: list[str], file_size_limit: int | None = None, cwds: list[Path] | None = None, world: int = 2
) -> tuple[list[int], list[str]]:
    """Exit codes and logs of a ``world``-rank ``aam-ds pretrain argv``."""
    log_dir.mkdir(parents=True, exist_ok=True)
    codes = run_ranks(_stage_rank, world, argv, str(log_dir), file_size_limit, cwds and [str(c) for c in cwds], timeout=240)
    return codes, [(log_dir / f"rank{rank}.log").read_text() for rank in range(world)]


def error_lines(log: str) -> list[str]:
    return [line for line in log.splitlines() if "] error: " in line]


SETTINGS = {"schedule.steps": 4, "checkpoint.every_steps": 2, "parallel.zero_stage": 2}


@pytest.fixture(scope="module")
def two_step_run(tmp_path_factory, cache_dir) -> Path:
    """A finished 2-rank run of 2 steps of :data:`SETTINGS` with its step-2 checkpoint (tests copy it)."""
    base = tmp_path_factory.mktemp("two-step")
    codes, logs = pretrain_ranks(base / "logs", run_args(base / "run", cache_dir, **{**SETTINGS, "schedule.steps": 2}))
    assert codes == [0, 0], logs[0][-3000:]
    return base / "run"


def one_error_line_per_rank(codes: list[int], logs: list[str]) -> list[str]:
    """Both ranks exited with 2 and printed one error line each, without a traceback; the lines."""
    assert codes == [2, 2], logs[0][-3000:] + logs[1][-3000:]
    lines = []
    for rank, log in enumerate(logs):
        assert "Traceback" not in log, log[-3000:]
        (line,) = error_lines(log)
        assert line.startswith(f"[rank {rank}] error: ")
        lines.append(line)
    return lines


@pytest.mark.slow
def test_a_full_disk_while_saving_is_one_error_per_rank_and_keeps_the_previous_checkpoint(tmp_path, cache_dir, two_step_run):
    """Resumed at step 2, the step-4 save runs into a 5 MB file-size limit (the optimizer shards
    are ~25 MB): every rank says in one line which folder could not be written, why, and the space a
    checkpoint needs; ``latest`` still names step 2, which is intact, and a resumed run repeats
    steps 3-4 as they were computed before the failed save."""
    run_dir = shutil.copytree(two_step_run, tmp_path / "run")
    codes, logs = pretrain_ranks(tmp_path / "full", [*run_args(run_dir, cache_dir, **SETTINGS), "--resume"], file_size_limit=5 * 10**6)
    checkpoints = run_dir / "checkpoints"
    for line in one_error_line_per_rank(codes, logs):
        assert f"error: {checkpoints / 'step00000004'}: could not be written (rank " in line
        assert "the disk is full or a file-size limit was reached" in line and "free there, a checkpoint needs about" in line
        assert f"the previous checkpoint {checkpoints / 'step00000002'} is kept" in line
    assert ckpt.latest_tag(checkpoints) == "step00000002" and not (checkpoints / "step00000004").exists()
    assert ckpt.damage(checkpoints / "step00000002") is None
    before = train_losses(run_dir)  # steps 3-4 ran before the save failed

    codes, logs = pretrain_ranks(tmp_path / "resumed", [*run_args(run_dir, cache_dir, **SETTINGS), "--resume"])
    assert codes == [0, 0], logs[0][-3000:]
    assert ckpt.latest_tag(checkpoints) == "step00000004"
    assert train_losses(run_dir) == before and sorted(before) == [1, 2, 3, 4]


def node_folders(tmp_path: Path, rank0_checkpoints: Path | None = None) -> list[Path]:
    """A working folder per rank, as on two nodes: ``ckpt`` in each is a folder of its own (rank 0's
    a link to ``rank0_checkpoints`` when given), so ``checkpoint.dir=ckpt`` differs between ranks."""
    cwds = [tmp_path / f"node{rank}" for rank in (0, 1)]
    for cwd in cwds:
        cwd.mkdir()
    if rank0_checkpoints is not None:
        (cwds[0] / "ckpt").symlink_to(rank0_checkpoints)
    for cwd in cwds:
        (cwd / "ckpt").mkdir(exist_ok=True)
    return cwds


@pytest.mark.slow
def test_checkpoint_folders_that_are_not_shared_are_refused_at_the_first_save(tmp_path, cache_dir):
    """Issue 20 item 8: each rank saves into a folder the other does not see; the first save says so
    on every rank instead of leaving a checkpoint that each rank would resume differently."""
    argv = run_args(tmp_path / "run", cache_dir, **{**SETTINGS, "schedule.steps": 2, "checkpoint.every_steps": 1, "checkpoint.dir": "ckpt"})
    codes, logs = pretrain_ranks(tmp_path / "logs", argv, cwds=node_folders(tmp_path))
    for line in one_error_line_per_rank(codes, logs):
        assert re.search(
            r"ckpt: rank 0 does not see the checkpoint files that the other ranks wrote \(\d+ of the files written "
            r"into step00000001 are missing here, e\.g\. \S+\)\.",
            line,
        ), line
        assert "Fix: checkpoint.dir must be shared by all nodes" in line
    assert not any((tmp_path / f"node{rank}" / "ckpt" / "latest").exists() for rank in (0, 1))


@pytest.mark.slow
def test_a_resume_that_one_rank_cannot_see_is_refused_on_every_rank(tmp_path, cache_dir, two_step_run):
    """Rank 0 decides the checkpoint (step 2) and tells rank 1, whose folder lacks it: both stop with
    one line instead of rank 1 silently restarting from step 0."""
    run_dir = shutil.copytree(two_step_run, tmp_path / "run")
    cwds = node_folders(tmp_path, rank0_checkpoints=run_dir / "checkpoints")
    argv = [*run_args(run_dir, cache_dir, **{**SETTINGS, "checkpoint.dir": "ckpt"}), "--resume"]
    codes, logs = pretrain_ranks(tmp_path / "logs", argv, cwds=cwds)
    for line in one_error_line_per_rank(codes, logs):
        assert "ckpt: rank 1 does not see checkpoint step00000002, which rank 0 resumes from (there is no folder" in line
        assert "Fix: checkpoint.dir must be shared by all nodes" in line
    assert train_losses(run_dir) == train_losses(two_step_run)  # no step was trained


@pytest.mark.slow
def test_a_resume_on_another_number_of_ranks_restarts_from_the_consolidated_weights(tmp_path, cache_dir, two_step_run):
    """Issue 20 item 4: the 2-rank ZeRO-2 checkpoint of step 2, resumed on 1 rank with
    ``checkpoint.on_world_size_change=restart_from_weights``: one notice, training continues at
    step 3 from the step-2 weights (oracle: the step-3 loss of the 2-rank run's consolidated export
    on the 1-rank run's step-3 batch), with a fresh optimizer; the new checkpoint is a 1-rank one.
    The data continues where the 2-rank run left epoch 0's permutation (2 steps x 2 ranks x micro
    batch 4 = 16 samples used), not at "micro-step 2" of the new layout (which would repeat 8)."""
    from aam_ds.data.dataset import to_device
    from aam_ds.data.prepare import prepare_data
    from aam_ds.engine.batches import DataPosition
    from aam_ds.engine.distributed import DistContext
    from aam_ds.engine.setup import build_objective
    from aam_ds.engine.steps import seed_micro_step, train_batches
    from aam_ds.export import build_exported_model, load_export
    from aam_ds.spec import RunSpec

    run_dir = shutil.copytree(two_step_run, tmp_path / "run")
    argv = [
        *run_args(run_dir, cache_dir, **{**SETTINGS, "schedule.steps": 3, "checkpoint.on_world_size_change": "restart_from_weights"}),
        "--resume",
    ]
    codes, (log,) = pretrain_ranks(tmp_path / "logs", argv, world=1)
    assert codes == [0], log[-3000:]
    (line,) = [line for line in log.splitlines() if "this run has 1" in line]
    assert line == (
        f"aam-ds: notice: checkpoint {run_dir / 'checkpoints' / 'step00000002'} was written by 2 rank(s), this run has "
        "1: continuing at step 2 from its consolidated fp32 weights with the optimizer state reset, data at epoch 0 "
        "after 16 of its samples (checkpoint.on_world_size_change)"
    )
    losses = train_losses(run_dir)
    assert sorted(losses) == [1, 2, 3] and ckpt.saved_layout(run_dir / "checkpoints" / "step00000003")["world size"] == 1

    spec = RunSpec.model_validate(json.loads((run_dir / "spec.json").read_text()))
    ctx, data = DistContext(0, 1, 0, torch.device("cpu"), "gloo"), prepare_data(spec)
    _, batches = train_batches(data, spec, ctx, spec.parallel.micro_batch_size, DataPosition(0, 2 * 2 * 4))
    batch = to_device(next(batches), ctx.device)
    model = build_exported_model(load_export(two_step_run / "model.pt")).train()
    with torch.no_grad():
        parts = build_objective(spec, data, ctx.device, model)(model, batch, seed_micro_step(spec.schedule.seed, 2, 0))
    assert losses[3] == pytest.approx(parts["loss"].item(), rel=1e-5)


@pytest.mark.slow
def test_a_collective_timeout_names_the_silent_rank_and_the_setting(tmp_path, cache_dir):
    """Issue 20 item 9: rank 1 is stopped (SIGSTOP) after step 2; rank 0's next collective times
    out after parallel.collective_timeout_s and says, in one line, that rank 1 did not answer."""
    from aam_ds.engine.distributed import free_port

    run_dir, log_dir = tmp_path / "run", tmp_path / "logs"
    log_dir.mkdir()
    argv = run_args(run_dir, cache_dir, **{**SETTINGS, "schedule.steps": 200, "parallel.collective_timeout_s": 8})
    ctx, port = mp.get_context("spawn"), free_port()
    procs = [ctx.Process(target=_stage_rank, args=(rank, 2, port, argv, str(log_dir), None, None)) for rank in (0, 1)]
    for proc in procs:
        proc.start()
    try:
        deadline = time.monotonic() + 180
        while len(train_losses(run_dir) if (run_dir / "metrics.jsonl").is_file() else {}) < 2:
            assert time.monotonic() < deadline and all(p.is_alive() for p in procs), "the run did not reach step 2"
            time.sleep(0.2)
        os.kill(procs[1].pid, signal.SIGSTOP)
        stopped_at = time.monotonic()
        procs[0].join(120)
        assert not procs[0].is_alive(), "rank 0 did not give up"
        assert time.monotonic() - stopped_at < 8 + 60
    finally:
        for proc in procs:
            if proc.is_alive():
                proc.kill()
                proc.join(10)
    log = (log_dir / "rank0.log").read_text()
    assert procs[0].exitcode == 1 and "Traceback" not in log, log[-3000:]
    (line,) = error_lines(log)
    assert line.startswith(
        "[rank 0] error: a collective operation timed out after parallel.collective_timeout_s=8 s: rank 1 (last step begun: "
    ), line
    assert "did not answer. Fix: " in line


def test_too_little_free_space_for_one_checkpoint_is_refused_before_training(tmp_path):
    """The estimate (16 bytes per parameter) against the real free space of the folder's file system."""
    free = free_bytes(tmp_path / "checkpoints")  # not created yet: its parent's file system
    n_params = free // 16 + 10**6
    with pytest.raises(AamInputError, match=r"checkpoints: has .* free, and a checkpoint of this model needs about"):
        check_free_space(tmp_path / "checkpoints", n_params, keep_last=2)
    assert checkpoint_bytes(1000) == 16000
    check_free_space(tmp_path / "checkpoints", 1000, keep_last=2)  # a small model fits
