"""The training loop through its real entry points: torchrun, the deepspeed launcher (two
simulated nodes), plain python; resume after a SIGKILL; the consolidated export; W&B offline;
CPU optimizer offload. Every launch runs in its own session under an outer timeout."""

from __future__ import annotations

import json
import math
import os
import re
import signal
import subprocess
import tempfile
import time
from pathlib import Path

import pandas as pd
import psutil
import pytest
import torch

from aam_ds.engine.distributed import LAUNCH_VARS, free_port
from aam_ds.tracking import read_metrics

ROOT = Path(__file__).resolve().parents[1]
BIN = ROOT / ".venv" / "bin"
PRETRAIN = str(ROOT / "launch" / "pretrain.py")


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory) -> Path:
    """One demo-data / token cache for every run in this module."""
    return tmp_path_factory.mktemp("aam-cache")


def run_args(run_dir: Path, cache: Path, **overrides) -> list[str]:
    """``--set`` arguments for a small, fast pretraining run on the demo data."""
    settings = {
        "model.preset": "tiny",
        "data.max_asvs": 16,
        "data.max_seq_len": 48,
        "data.cache_dir": cache,
        "schedule.steps": 9,
        "schedule.warmup_steps": 2,
        "schedule.log_every": 1,
        "schedule.eval_every": 1000,
        "tracking.run_dir": run_dir,
        "tracking.rich": "false",
        "parallel.micro_batch_size": 4,
        "parallel.collective_timeout_s": 60,
        **overrides,
    }
    return [arg for key, value in settings.items() for arg in ("--set", f"{key}={value}")]


def kill_tree(pid: int) -> None:
    """SIGKILL a process and all its descendants (torchrun starts its workers in their own sessions)."""
    try:
        root = psutil.Process(pid)
        procs = [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return
    for proc in procs:
        try:
            proc.send_signal(signal.SIGKILL)
        except psutil.NoSuchProcess:
            pass


def launch(cmd: list[str], timeout: float = 240, kill_when=None, cwd: Path = ROOT) -> subprocess.CompletedProcess:
    """Run ``cmd`` in ``cwd`` in its own session, output to a file (a full pipe would block the ranks);
    SIGKILL it and its workers on timeout or once ``kill_when()`` holds. The launch variables of a
    world this test process joined are not passed on: the command starts a world of its own."""
    env = {k: v for k, v in os.environ.items() if k not in LAUNCH_VARS} | {"OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    with tempfile.TemporaryFile("w+") as log:
        proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=log, stderr=subprocess.STDOUT, text=True, start_new_session=True)
        deadline = time.monotonic() + timeout
        try:
            while proc.poll() is None:
                if time.monotonic() > deadline or (kill_when is not None and kill_when()):
                    kill_tree(proc.pid)
                    break
                time.sleep(0.05)
            proc.wait(timeout=30)
        finally:
            kill_tree(proc.pid)
        log.seek(0)
        out = log.read()
    assert time.monotonic() <= deadline, f"{cmd[:3]} ran past {timeout} s:\n{out[-3000:]}"
    return subprocess.CompletedProcess(cmd, proc.returncode, out, "")


def torchrun(nproc: int, *args: str) -> list[str]:
    return [str(BIN / "torchrun"), f"--nproc_per_node={nproc}", f"--master_port={free_port()}", PRETRAIN, *args]


def train_losses(run_dir: Path) -> dict[int, float]:
    """step -> total training loss; a later record of a step (a resumed run) wins."""
    return {r["step"]: r["metrics"]["loss"] for r in read_metrics(run_dir / "metrics.jsonl") if r["kind"] == "train"}


def checked(result: subprocess.CompletedProcess) -> subprocess.CompletedProcess:
    assert result.returncode == 0, result.stdout[-4000:]
    return result


@pytest.mark.slow
@pytest.mark.parametrize("stage", [2, 3])
def test_resume_after_kill_repeats_the_uninterrupted_losses(tmp_path, cache_dir, stage):
    common = {"parallel.zero_stage": stage, "checkpoint.every_steps": 3}
    straight, broken = tmp_path / "straight", tmp_path / "broken"
    checked(launch(torchrun(2, *run_args(straight, cache_dir, **common))))
    expected = train_losses(straight)
    assert sorted(expected) == list(range(1, 10))
    mfu = [r["metrics"]["mfu"] for r in read_metrics(straight / "metrics.jsonl") if r["kind"] == "train"]
    assert mfu and all(0 < m < float("inf") for m in mfu)  # model-FLOPs utilisation of every logged window

    latest = broken / "checkpoints" / "latest"
    killed = launch(torchrun(2, *run_args(broken, cache_dir, **common)), kill_when=latest.is_file)
    assert killed.returncode != 0, "the run finished before it could be killed"
    resumed_from = int(latest.read_text().strip().removeprefix("step"))
    assert resumed_from < 9
    checked(launch(torchrun(2, *run_args(broken, cache_dir, **common), "--resume")))
    assert train_losses(broken) == expected  # bit-identical, steps before and after the kill


@pytest.mark.slow
def test_zero3_export_predicts_like_the_trained_engine(tmp_path, cache_dir):
    """The 2-rank ZeRO-3 run's final validation metrics (computed by the engine, parameters
    partitioned over ranks) are reproduced by the consolidated export in a fresh 1-process model,
    over every validation sample (an odd number: issue 20, the ranks once left the odd one out)."""
    from aam_ds.data.prepare import prepare_data
    from aam_ds.data.synthetic import demo_data
    from aam_ds.engine.distributed import DistContext
    from aam_ds.engine.evaluate import evaluate
    from aam_ds.engine.objective import Objective
    from aam_ds.export import build_exported_model, load_export
    from aam_ds.spec import RunSpec

    run_dir = tmp_path / "run"
    checked(
        launch(
            torchrun(
                2,
                *run_args(
                    run_dir,
                    cache_dir,
                    **{"parallel.zero_stage": 3, "schedule.steps": 4, "loss.nucleotide_weight": 0, "data.split.val_fraction": 0.05},
                ),
            )
        )
    )
    final_eval = [r for r in read_metrics(run_dir / "metrics.jsonl") if r["kind"] == "eval"][-1]["metrics"]

    export = load_export(run_dir / "model.pt")
    spec = RunSpec.model_validate({**export.spec, "parallel": {"micro_batch_size": 4, "grad_accum_steps": 1}})
    model = build_exported_model(export)
    data = prepare_data(spec)
    from aam_ds.distances.target import build_distance_target

    target = build_distance_target(spec.data.model_copy(update={"tree": data.tree}), data.table, torch.device("cpu"))
    val = data.dataset("val")
    assert len(val) % 2 == 1
    metrics, _ = evaluate(model, val, Objective(spec.loss, target), DistContext(0, 1, 0, torch.device("cpu"), "gloo"), 4)
    assert export.spec["parallel"]["zero_stage"] == 3 and export.step == 4
    for name in ("pairwise", "distance_r"):
        assert metrics[name] == pytest.approx(final_eval[name], rel=1e-5, abs=1e-6), name

    # fine-tuning starts from that export; its own export carries the target normaliser
    tuned = tmp_path / "tuned"
    checked(
        launch(
            [
                str(BIN / "python"),
                str(ROOT / "launch" / "finetune.py"),
                *run_args(
                    tuned,
                    cache_dir,
                    **{
                        "model.pretrained": run_dir / "model.pt",
                        "loss.task": "regression",
                        "data.targets": "[age]",
                        "loss.pairwise_weight": 0,
                        "loss.nucleotide_weight": 0,
                        "schedule.steps": 3,
                    },
                ),
            ]
        )
    )
    tuned_export = load_export(tuned / "model.pt")
    metadata = pd.read_csv(demo_data(cache_dir).metadata, sep="\t", comment="#", index_col=0)
    train_ids = (tuned / "splits" / "train.txt").read_text().split()
    assert tuned_export.targets["target_names"] == ["age"]
    assert tuned_export.targets["normalizer"]["mean"] == pytest.approx([metadata.loc[train_ids, "age"].mean()], rel=1e-5)
    encoder = "token_embedding.weight"
    assert not torch.equal(tuned_export.state_dict[encoder], export.state_dict[encoder])  # the encoder was trained too


@pytest.mark.slow
def test_two_simulated_nodes_train_as_one_world(tmp_path, cache_dir):
    """Two deepspeed launcher invocations on loopback, one per node rank, per DeepSpeed's hostfile rules."""
    hostfile = tmp_path / "hostfile"
    hostfile.write_text("nodeA slots=1\nnodeB slots=1\n")
    port, run_dir = free_port(), tmp_path / "run"
    common = [str(BIN / "deepspeed"), "--hostfile", str(hostfile), "--no_ssh", "--master_addr", "127.0.0.1", "--master_port", str(port)]
    args = [PRETRAIN, *run_args(run_dir, cache_dir, **{"schedule.steps": 3})]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    logs = [tmp_path / f"node{rank}.log" for rank in (0, 1)]
    nodes = [
        subprocess.Popen(
            [*common, "--node_rank", str(rank), *args],
            cwd=ROOT,
            env=env,
            stdout=open(logs[rank], "w"),
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        for rank in (0, 1)
    ]
    try:
        for node in nodes:
            node.wait(timeout=240)
    finally:
        for node in nodes:
            kill_tree(node.pid)
    outs = [log.read_text() for log in logs]
    assert [n.returncode for n in nodes] == [0, 0], "\n".join(o[-3000:] for o in outs)
    spec = json.loads((run_dir / "spec.json").read_text())
    assert spec["parallel"]["global_batch_size"] == 2 * 4  # two ranks of micro batch 4
    assert sorted(train_losses(run_dir)) == [1, 2, 3]
    assert (run_dir / "model.pt").is_file()


@pytest.mark.slow
def test_plain_python_with_cpu_offload_and_wandb_offline(tmp_path, cache_dir):
    """One process, no launcher; ZeRO-2 with the optimizer offloaded to CPU (torch AdamW, no
    DeepSpeedCPUAdam build); W&B offline writes its run files under the run folder."""
    run_dir = tmp_path / "run"
    result = checked(
        launch(
            [
                str(BIN / "python"),
                PRETRAIN,
                *run_args(
                    run_dir,
                    cache_dir,
                    **{"schedule.steps": 3, "parallel.zero_stage": 2, "parallel.offload_optimizer": "cpu", "tracking.wandb": "offline"},
                ),
            ]
        )
    )
    config = json.loads((run_dir / "ds_config.json").read_text())
    assert config["zero_optimization"]["offload_optimizer"]["device"] == "cpu"
    assert sorted(train_losses(run_dir)) == [1, 2, 3]
    assert all(torch.isfinite(torch.tensor(v)) for v in train_losses(run_dir).values())
    assert list(run_dir.glob("wandb/offline-run-*/run-*.wandb")), result.stdout[-2000:]


@pytest.mark.slow
def test_memory_budget_picks_the_micro_batch_from_real_steps(tmp_path, cache_dir):
    """Real data (23 samples): a generous budget (`--max-memory-gb auto`: 80 % of free RAM) admits the
    whole per-rank batch as one micro batch, and the global batch stays what the spec says (issue 16:
    the search once swapped a global batch of 8 for the whole training split); each probe is
    reported; a budget below the runtime's own footprint is refused with a clear message."""
    small = ROOT.parent / "shared" / "data" / "small"
    if not (small / "test-small.biom").is_file():
        pytest.skip(f"real data folder {small} is absent")
    data = {
        "data.table": small / "test-small.biom",
        "data.tree": small / "test-small-tree.nwk",
        "data.max_seq_len": 90,
        "schedule.steps": 2,
        "data.split.val_fraction": 0.15,
    }
    roomy = tmp_path / "roomy"
    roomy_run = checked(
        launch(
            [
                str(BIN / "python"),
                PRETRAIN,
                *run_args(roomy, cache_dir, **data, **{"parallel.micro_batch_size": 2, "parallel.grad_accum_steps": 3}),
                "--max-memory-gb",
                "auto",
            ]
        )
    )
    spec = json.loads((roomy / "spec.json").read_text())
    assert (spec["parallel"]["micro_batch_size"], spec["parallel"]["grad_accum_steps"], spec["parallel"]["global_batch_size"]) == (6, 1, 6)
    assert "memory search: micro batch 6: peak" in roomy_run.stdout
    assert "memory search: micro batch 6 x accumulation 1" in roomy_run.stdout
    peak = [r for r in read_metrics(roomy / "metrics.jsonl") if r["kind"] == "train"][-1]["metrics"]["peak_memory_gib"]
    assert 0 < peak < 16

    tight = launch([str(BIN / "python"), PRETRAIN, *run_args(tmp_path / "tight", cache_dir, **data, **{"parallel.max_memory_gb": 0.05})])
    assert tight.returncode == 2
    assert "parallel.max_memory_gb: even a micro batch of 2 needs more than 0.05 GiB" in tight.stdout


@pytest.mark.slow
def test_a_loss_that_stays_non_finite_stops_the_run_with_a_clear_error(tmp_path, cache_dir):
    """Issue 20: a learning rate that drives the loss to NaN no longer trains on to an export; after
    ``schedule.max_nonfinite_steps`` such steps the run stops (exit 2) naming the step, the loss
    terms and the last checkpoint."""
    run_dir = tmp_path / "nan"
    result = launch(
        [
            str(BIN / "python"),
            PRETRAIN,
            *run_args(
                run_dir,
                cache_dir,
                **{
                    "optim.lr": 1e12,
                    "schedule.steps": 30,
                    "schedule.warmup_steps": 0,
                    "checkpoint.every_steps": 1,
                    "schedule.max_nonfinite_steps": 2,
                },
            ),
        ]
    )
    assert result.returncode == 2, result.stdout[-3000:]
    message = next(line for line in result.stdout.splitlines() if "schedule.max_nonfinite_steps" in line)
    assert re.search(r"the loss was not finite for 2 consecutive steps, up to step \d+ \(pairwise \S+, nucleotide \S+", message)
    assert "the last checkpoint is" in message and "lower optim.lr" in message
    assert not (run_dir / "model.pt").exists()  # no export of a broken model
    losses = train_losses(run_dir)
    assert losses and all(math.isfinite(v) for v in list(losses.values())[:1])
    last = [r for r in read_metrics(run_dir / "metrics.jsonl") if r["kind"] == "train"][-1]
    assert last["metrics"]["nonfinite_steps"] >= 2 and not math.isfinite(last["metrics"]["loss"])  # the fatal step is logged
    assert "nonfinite_steps" in result.stdout  # and shown on the console


@pytest.mark.slow
def test_resume_with_another_layout_is_refused_before_deepspeed_reads_it(tmp_path, cache_dir):
    """Issue 20: a checkpoint resumed with another world size, ZeRO stage, batch or model shape is
    one clear error listing every difference (from the checkpoint's layout.json), not DeepSpeed's
    traceback; the run's spec.json stays the one that wrote it."""
    run_dir = tmp_path / "run"
    common = {"schedule.steps": 3, "parallel.zero_stage": 1}
    checked(launch(torchrun(2, *run_args(run_dir, cache_dir, **common))))
    tag_dir = run_dir / "checkpoints" / "step00000003"
    assert json.loads((tag_dir / "layout.json").read_text())["world size"] == 2
    spec_before = (run_dir / "spec.json").read_text()
    changed = {**common, "schedule.steps": 5, "parallel.zero_stage": 2, "model.d_model": 32, "model.n_heads": 2}
    result = launch([str(BIN / "python"), PRETRAIN, *run_args(run_dir, cache_dir, **changed), "--resume"])
    assert result.returncode == 2, result.stdout[-3000:]
    line = next(line for line in result.stdout.splitlines() if "was written with another layout" in line)
    for difference in ("world size 2 -> 1", "parallel.zero_stage 1 -> 2", "parallel.global_batch_size 8 -> 4", "model.d_model 64 -> 32"):
        assert difference in line
    assert "model.pretrained" in line and "Traceback" not in result.stdout
    assert (run_dir / "spec.json").read_text() == spec_before


@pytest.mark.slow
def test_a_damaged_newest_checkpoint_falls_back_to_the_previous_complete_one(tmp_path, cache_dir):
    """Issue 20: every checkpoint carries a manifest (sizes, SHA-256); a resume whose newest
    checkpoint is truncated says so in one notice and continues from the previous complete one,
    repeating the uninterrupted run's losses; with no complete checkpoint left it is one clear error."""
    settings = {"schedule.steps": 6, "checkpoint.every_steps": 2, "parallel.zero_stage": 1}
    reference = tmp_path / "reference"
    checked(launch([str(BIN / "python"), PRETRAIN, *run_args(reference, cache_dir, **settings)]))
    run_dir = tmp_path / "run"
    checked(launch([str(BIN / "python"), PRETRAIN, *run_args(run_dir, cache_dir, **{**settings, "schedule.steps": 4})]))
    ckpt = run_dir / "checkpoints"
    assert (ckpt / "latest").read_text().strip() == "step00000004"
    manifest = json.loads((ckpt / "step00000004" / "manifest.json").read_text())
    victim = ckpt / "step00000004" / max(manifest, key=lambda name: manifest[name][0])  # the largest file
    victim.write_bytes(victim.read_bytes()[: manifest[victim.name][0] // 2])
    truncated = victim.stat().st_size

    resumed = checked(launch([str(BIN / "python"), PRETRAIN, *run_args(run_dir, cache_dir, **settings), "--resume"]))
    notices = [line for line in resumed.stdout.splitlines() if "is damaged" in line]
    assert len(notices) == 1 and notices[0].startswith("aam-ds: notice: checkpoint ")
    assert f"has {truncated} bytes" in notices[0] and "resuming from the previous one" in notices[0]
    assert notices[0].endswith("step00000002")
    expected = train_losses(reference)
    assert train_losses(run_dir) == pytest.approx(expected, rel=1e-6)  # steps 3-6 redone from step 2, as uninterrupted

    for tag_dir in ckpt.glob("step*"):  # the kept ones, steps 4 and 6
        (tag_dir / "manifest.json").write_text(json.dumps({"missing.pt": [1, "0"]}))
    refused = launch([str(BIN / "python"), PRETRAIN, *run_args(run_dir, cache_dir, **{**settings, "schedule.steps": 8}), "--resume"])
    assert refused.returncode == 2
    assert "is damaged (missing.pt is missing) and no older complete checkpoint is left" in refused.stdout
