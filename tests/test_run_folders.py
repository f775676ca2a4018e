"""Run folders lose nothing: each run gets its own default folder (``runs/<stage>-<time>``, with
``runs/<stage>-latest`` linked to the newest), a folder holding a previous run is refused unless it
is resumed or overwritten, a default-configured run checkpoints on its own so that a SIGKILL or a
Ctrl-C costs no more than the steps since the last checkpoint, and --resume with nothing to resume
is an error. Tiny model on the demo data; in this process where a run's files are all that is
checked, through launch/pretrain.py where the exit code and output matter."""

from __future__ import annotations

import os
import signal
import subprocess
import tempfile
import time
from pathlib import Path

import pytest
from test_engine_train import BIN, PRETRAIN, checked, kill_tree, launch, torchrun, train_losses
from test_finetune import in_process_world  # noqa: F401 (the fixture tears the in-process world down)

from aam_ds.engine import crossval, trainer
from aam_ds.engine.distributed import LAUNCH_VARS
from aam_ds.errors import AamInputError
from aam_ds.export import load_export
from aam_ds.spec import load_spec
from aam_ds.tracking import read_metrics

STEPS = 100  # long enough for the automatic checkpoint interval (max(50, steps // 10)) to save once before the end


def settings(cache: Path, **overrides) -> dict:
    """A small, fast pretraining run on the demo data, tracking.run_dir and checkpoint.every_steps left unset."""
    return {
        "model.preset": "tiny",
        "data.max_asvs": 16,
        "data.max_seq_len": 48,
        "data.cache_dir": cache,
        "schedule.log_every": 1,
        "schedule.eval_every": 1000,
        "tracking.rich": "false",
        "parallel.micro_batch_size": 4,
        "parallel.zero_stage": 0,
        **overrides,
    }


def spec_of(cache: Path, **overrides):
    return load_spec(None, [f"{k}={v}" for k, v in settings(cache, **overrides).items()])


def finetuning(**overrides) -> dict:
    """Overrides that turn the pretraining settings into age regression (task loss only)."""
    return {"loss.task": "regression", "data.targets": "[age]", "loss.pairwise_weight": 0, "loss.nucleotide_weight": 0, **overrides}


def pretrain_args(cache: Path, *extra: str, **overrides) -> list[str]:
    """launch/pretrain.py arguments for a STEPS-step run of :func:`settings`, then ``extra``."""
    sets = [arg for key, value in settings(cache, **{"schedule.steps": STEPS, **overrides}).items() for arg in ("--set", f"{key}={value}")]
    return [*sets, *extra]


def pretrain_cli(cache: Path, *extra: str, **overrides) -> list[str]:
    """One process, no launcher."""
    return [str(BIN / "python"), PRETRAIN, *pretrain_args(cache, *extra, **overrides)]


def history(run_dir: Path) -> list[tuple[str, int | None]]:
    """(kind, step) of every metrics.jsonl record, in file order."""
    return [(r["kind"], r.get("step")) for r in read_metrics(run_dir / "metrics.jsonl")]


# --------------------------------------------------------------------------------------------
# default folders; a used folder is refused, resumed or overwritten


def test_default_run_folders_are_per_stage_and_link_the_newest(cache, tmp_path, monkeypatch):
    """Following the README: pretrain, then fine-tune from runs/pretrain-latest/model.pt, then
    cross-validate. Each stage writes its own folder; the pretrained export and its metrics stay as
    they were; a second pretraining gets a new folder and the link moves to it."""
    monkeypatch.chdir(tmp_path)
    runs = tmp_path / "runs"
    trainer.pretrain(spec_of(cache, **{"schedule.steps": 2}))
    first = (runs / "pretrain-latest").resolve()
    assert first.parent == runs and first.name.startswith("pretrain-20")
    export, metrics = (first / "model.pt").read_bytes(), (first / "metrics.jsonl").read_bytes()

    trainer.finetune(spec_of(cache, **finetuning(**{"schedule.steps": 2, "model.pretrained": "runs/pretrain-latest/model.pt"})))
    tuned = (runs / "finetune-latest").resolve()
    assert tuned.name.startswith("finetune-20") and load_export(tuned / "model.pt").targets["target_names"] == ["age"]
    assert (first / "model.pt").read_bytes() == export and (first / "metrics.jsonl").read_bytes() == metrics

    trainer.pretrain(spec_of(cache, **{"schedule.steps": 2}))
    second = (runs / "pretrain-latest").resolve()
    assert second != first and (second / "model.pt").is_file()
    assert (first / "model.pt").read_bytes() == export and history(second) == history(first)  # one history each

    crossval.cross_validate(spec_of(cache, **finetuning(**{"schedule.steps": 2, "data.split.folds": 2})))
    cv = (runs / "cv-latest").resolve()
    assert cv.name.startswith("cv-20") and (cv / "oof_predictions.tsv").is_file()
    assert sorted(p.name for p in runs.iterdir() if not p.is_symlink()) == sorted([first.name, second.name, tuned.name, cv.name])


def test_a_used_run_folder_is_refused_unless_overwritten(cache, tmp_path):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "notes.txt").write_text("mine\n")
    trainer.finetune(spec_of(cache, **finetuning(**{"schedule.steps": 3, "tracking.run_dir": run_dir, "data.split.test_fraction": 0.2})))
    before = (run_dir / "metrics.jsonl").read_bytes()
    assert (run_dir / "predictions_test.tsv").is_file()

    with pytest.raises(AamInputError) as err:
        trainer.finetune(spec_of(cache, **finetuning(**{"schedule.steps": 3, "tracking.run_dir": run_dir})))
    message = str(err.value)
    assert message.startswith(f"{run_dir}: already holds a previous run (checkpoints, metrics.jsonl, model.pt)")
    assert "--resume" in message and "tracking.run_dir" in message and "tracking.overwrite: true" in message
    assert (run_dir / "metrics.jsonl").read_bytes() == before  # untouched

    trainer.finetune(spec_of(cache, **finetuning(**{"schedule.steps": 4, "tracking.run_dir": run_dir, "tracking.overwrite": "true"})))
    steps = [1, 2, 3, 4]
    assert history(run_dir) == [*(("train", s) for s in steps), ("eval", 4), ("summary", None)]  # the new run's alone
    assert load_export(run_dir / "model.pt").step == 4
    assert not (run_dir / "predictions_test.tsv").exists()  # the old run's outputs went, not only the ones rewritten
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir() if p.name.startswith("step")) == ["step00000004"]
    assert (run_dir / "notes.txt").read_text() == "mine\n"  # files that are not run outputs stay


def test_outputs_that_cannot_be_written_are_refused_before_training(cache, tmp_path):
    """Issue 20: a run folder that cannot be made, or an output name taken by a folder, is one clear
    error at the start, not a traceback after all the compute."""
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    with pytest.raises(AamInputError, match=r"tracking.run_dir .*a-file/run: cannot be created .*choose a writable folder"):
        trainer.pretrain(spec_of(cache, **{"schedule.steps": 2, "tracking.run_dir": blocker / "run"}))
    run_dir = tmp_path / "run"
    (run_dir / "spec.json").mkdir(parents=True)
    with pytest.raises(AamInputError, match=r"run/spec.json: is a folder, but the run writes a file of that name"):
        trainer.pretrain(spec_of(cache, **{"schedule.steps": 2, "tracking.run_dir": run_dir}))
    assert sorted(p.name for p in run_dir.iterdir()) == ["spec.json"]  # nothing written


def test_resume_needs_something_to_resume(cache, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(AamInputError, match=r"runs/pretrain-latest: not found: there is no previous pretrain run to resume"):
        trainer.pretrain(spec_of(cache, **{"schedule.steps": 2, "checkpoint.resume": "true"}))
    with pytest.raises(AamInputError, match="tracking.overwrite deletes them: set only one"):
        spec_of(cache, **{"checkpoint.resume": "true", "tracking.overwrite": "true"})
    assert not (tmp_path / "runs").exists()


@pytest.mark.slow
def test_two_ranks_share_one_default_run_folder(cache, tmp_path):
    """Rank 0 names the folder and broadcasts it: both ranks write their checkpoint shards into it."""
    checked(launch(torchrun(2, *pretrain_args(cache, **{"schedule.steps": 2, "parallel.zero_stage": 2})), cwd=tmp_path))
    folders = [p for p in (tmp_path / "runs").iterdir() if not p.is_symlink()]
    assert len(folders) == 1 and (tmp_path / "runs" / "pretrain-latest").resolve() == folders[0]
    shards = sorted(p.name for p in (folders[0] / "checkpoints" / "step00000002").iterdir() if "optim_states" in p.name)
    assert len(shards) == 2, shards  # one ZeRO-2 optimizer partition per rank


def test_resume_without_a_checkpoint_exits_with_a_clear_error(cache, tmp_path):
    run_dir = tmp_path / "run"
    result = launch(pretrain_cli(cache, "--resume", **{"tracking.run_dir": run_dir}), cwd=tmp_path)
    assert result.returncode == 2, result.stdout[-3000:]
    assert f"[rank 0] error: {run_dir / 'checkpoints'}: holds no checkpoint to resume from. Fix: run without --resume" in result.stdout
    assert "Traceback" not in result.stdout
    assert not (run_dir / "metrics.jsonl").exists()


# --------------------------------------------------------------------------------------------
# a default-configured run killed or interrupted, then resumed


@pytest.fixture(scope="module")
def uninterrupted(cache, tmp_path_factory) -> dict[int, float]:
    """step -> training loss of a default-configured run that is left alone."""
    cwd = tmp_path_factory.mktemp("uninterrupted")
    checked(launch(pretrain_cli(cache), cwd=cwd))
    losses = train_losses(cwd / "runs" / "pretrain-latest")
    assert sorted(losses) == list(range(1, STEPS + 1))
    return losses


@pytest.mark.slow
def test_killed_default_run_resumes_with_the_uninterrupted_losses(cache, tmp_path, uninterrupted):
    run_dir = tmp_path / "runs" / "pretrain-latest"
    latest = run_dir / "checkpoints" / "latest"
    killed = launch(pretrain_cli(cache), cwd=tmp_path, kill_when=latest.is_file)
    assert killed.returncode == -signal.SIGKILL, "the run finished before it could be killed"
    assert latest.read_text().strip() == "step00000050"  # the automatic interval for 100 steps

    resumed = checked(launch(pretrain_cli(cache, "--resume"), cwd=tmp_path))
    assert "resumed at step 50" in resumed.stdout
    assert train_losses(run_dir) == uninterrupted  # bit-identical, before and after the kill
    assert_continued(run_dir, 50)
    assert len(list((tmp_path / "runs").iterdir())) == 2  # one run folder and its link: the resumed run wrote no other


@pytest.mark.slow
def test_ctrl_c_saves_a_checkpoint_and_stops_with_one_line(cache, tmp_path, uninterrupted):
    """SIGINT once the loop runs: the step in progress finishes, a checkpoint of it is saved, one
    line says so (no traceback), exit code 130; --resume then continues with the same losses."""
    run_dir = tmp_path / "runs" / "pretrain-latest"
    code, out = interrupt_when(pretrain_cli(cache), tmp_path, lambda: len(train_lines(run_dir)) >= 3)
    assert code == 130, out[-3000:]
    assert "Traceback" not in out
    lines = [line for line in out.splitlines() if "interrupted" in line]
    saved = (run_dir / "checkpoints" / "latest").read_text().strip()
    step = int(saved.removeprefix("step"))
    assert 3 <= step < STEPS
    assert lines == [
        f"[rank 0] interrupted: stopped after step {step} with a checkpoint in {Path('runs') / run_dir.resolve().name / 'checkpoints'}; "
        f"continue with --resume --set tracking.run_dir={Path('runs') / run_dir.resolve().name}"
    ]

    resumed = checked(launch(pretrain_cli(cache, "--resume"), cwd=tmp_path))
    assert f"resumed at step {step}" in resumed.stdout
    assert train_losses(run_dir) == uninterrupted
    assert_continued(run_dir, step)


def assert_continued(run_dir: Path, checkpoint_step: int) -> None:
    """metrics.jsonl holds one run: the steps before the checkpoint once, then the resumed run's steps after it."""
    steps = [step for kind, step in history(run_dir) if kind == "train"]
    assert steps.count(1) == 1 and steps[:checkpoint_step] == list(range(1, checkpoint_step + 1))
    assert steps[-(STEPS - checkpoint_step) :] == list(range(checkpoint_step + 1, STEPS + 1))


def train_lines(run_dir: Path) -> list[str]:
    path = run_dir / "metrics.jsonl"
    return [line for line in path.read_text().splitlines() if '"kind": "train"' in line] if path.is_file() else []


def interrupt_when(cmd: list[str], cwd: Path, ready, timeout: float = 240) -> tuple[int, str]:
    """Run ``cmd`` in ``cwd``, send it one SIGINT (Ctrl-C) once ``ready()`` holds, and return its exit code and output."""
    env = {k: v for k, v in os.environ.items() if k not in LAUNCH_VARS} | {"OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    with tempfile.TemporaryFile("w+") as log:
        # as from a terminal: a background job (e.g. CI started with `&`) would hand the run an ignored SIGINT
        proc = subprocess.Popen(
            cmd,
            cwd=cwd,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,
            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
        )
        try:
            deadline = time.monotonic() + timeout
            while proc.poll() is None and not ready() and time.monotonic() < deadline:
                time.sleep(0.05)
            proc.send_signal(signal.SIGINT)
            code = proc.wait(timeout=60)
        finally:
            kill_tree(proc.pid)
        log.seek(0)
        return code, log.read()
