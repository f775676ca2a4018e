"""Issue 18: multi-node as users run it. The README's multi-node command, unchanged, through
DeepSpeed's runner, which reaches the two nodes of the hostfile (node001 = 127.0.0.1, node002 =
127.0.0.2) with pdsh over a real OpenSSH server (tests/multinode_nodes.py); the remote ranks get
their environment only from what the runner exports and from ``.deepspeed_env``, as on a cluster.

One job covers the issue's items 1 and 3: it is killed on the second node after a checkpoint
(the whole job must fail within ``parallel.collective_timeout_s``, naming the rank), then the
README command with ``--resume`` finishes it; its losses must equal a 2-rank single-node run's.
"""

from __future__ import annotations

import os
import shlex
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
import yaml
from multinode_nodes import Nodes, start_nodes, stop_nodes
from multinode_slurm import Cluster, start_cluster
from test_docs_commands import lay_out, small_run_yaml
from test_engine_train import kill_tree, train_losses
from test_readme_commands import readme_section

from aam_ds.engine.distributed import LAUNCH_VARS, free_port
from aam_ds.tracking import read_metrics

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
TIMEOUT_S = 30  # parallel.collective_timeout_s of the jobs
STEPS = 8
THIS_MACHINE = {"OMP_NUM_THREADS": "1", "NCCL_SOCKET_IFNAME": "lo", "GLOO_SOCKET_IFNAME": "lo"}  # both nodes talk over loopback


def readme_multinode_command() -> str:
    """The first command of README's "Multi-node" section (continuation lines joined), as written."""
    lines, command = readme_section("Multi-node"), ""
    start = lines.index("```bash") + 1
    for line in lines[start:]:
        command += " " + line.strip().removesuffix("\\").strip()
        if not line.rstrip().endswith("\\"):
            return command.strip()
    raise AssertionError("README's Multi-node section has no command")


def readme_deepspeed_env() -> dict[str, str]:
    """The variables of the README's ``.deepspeed_env`` example, with this machine's values."""
    lines = [line.strip() for line in readme_section("Multi-node")]
    start = lines.index("```text") + 1
    names = [line.split("=", 1)[0] for line in lines[start : lines.index("```", start)]]
    assert names == list(THIS_MACHINE), names
    return {name: THIS_MACHINE[name] for name in names}


@pytest.fixture(scope="module")
def cluster(tmp_path_factory) -> Cluster:
    started = start_cluster(tmp_path_factory.mktemp("slurm"))
    yield started
    started.stop()


@pytest.fixture(scope="module")
def nodes(tmp_path_factory) -> Nodes:
    started = start_nodes(tmp_path_factory.mktemp("ssh"))
    yield started
    stop_nodes(started)


def job_env(nodes: Nodes) -> dict[str, str]:
    """The launching shell: the venv and the nodes' ssh on PATH, no launch variables, and no
    OMP_NUM_THREADS (the remote ranks must get it from .deepspeed_env)."""
    env = {k: v for k, v in os.environ.items() if k not in LAUNCH_VARS and k != "OMP_NUM_THREADS"}
    return env | {"PATH": f"{nodes.bin_dir}{os.pathsep}{BIN}{os.pathsep}{env['PATH']}", "PYTHONPATH": str(ROOT), "PYTHONUNBUFFERED": "1"}


def rank_process(nodes: Nodes, rank: int) -> psutil.Process:
    """The training process of ``rank``, started through the ssh server."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        for proc in nodes.remote_processes():
            try:
                if proc.environ().get("RANK") == str(rank):
                    return proc
            except psutil.Error:
                continue
        time.sleep(0.1)
    raise AssertionError(f"no rank {rank} process under sshd")


def run_job(argv: list[str], folder: Path, env: dict[str, str], until=None, timeout: float = 240) -> tuple[int, str, float]:
    """Run ``argv`` in ``folder`` (its own session); call ``until()`` while it runs: once it returns
    True, time how long the job takes to end. Returns (exit code, output, seconds after ``until``)."""
    log_path = folder / f"job-{time.monotonic_ns()}.log"
    with open(log_path, "w") as log:
        proc = subprocess.Popen(argv, cwd=folder, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    deadline, fired_at = time.monotonic() + timeout, None
    try:
        while proc.poll() is None and time.monotonic() < deadline:
            if fired_at is None and until is not None and until():
                fired_at = time.monotonic()
            time.sleep(0.05)
        ended = time.monotonic()
    finally:
        kill_tree(proc.pid)
        proc.wait(30)
    output = log_path.read_text()
    assert ended < deadline, f"{argv[:3]} ran past {timeout} s:\n{output[-4000:]}"
    return proc.returncode, output, ended - fired_at if fired_at is not None else 0.0


def lay_out_job(folder: Path, demo_paths, cache: Path) -> Path:
    """The README's layout (run.yaml, data files, launch/, ds_configs/) in ``folder``, with a run
    spec of 8 small steps, a checkpoint every 2 and ``parallel.collective_timeout_s`` = TIMEOUT_S."""
    folder.mkdir()
    lay_out(folder, demo_paths)
    spec = small_run_yaml()
    spec["data"]["cache_dir"] = str(cache)
    spec["schedule"] = {"steps": STEPS, "warmup_steps": 2, "log_every": 1, "eval_every": 1000}
    spec["checkpoint"] = {"every_steps": 2}
    spec["parallel"]["collective_timeout_s"] = TIMEOUT_S
    spec["tracking"] |= {"run_dir": "runs/job"}
    (folder / "run.yaml").write_text(yaml.safe_dump(spec))
    return folder


@pytest.fixture(scope="module")
def reference(tmp_path_factory, demo_paths) -> tuple[Path, dict[int, float]]:
    """The cache folder and the losses of the jobs' spec run on one node with two ranks (torchrun)."""
    base = tmp_path_factory.mktemp("single-node")
    job = lay_out_job(base / "job", demo_paths, base / "cache")
    argv = [
        str(BIN / "torchrun"),
        "--nproc_per_node=2",
        f"--master_port={free_port()}",
        "launch/pretrain.py",
        "--spec",
        "run.yaml",
        "--ds-config",
        "ds_configs/zero2.json",
    ]
    env = {k: v for k, v in os.environ.items() if k not in LAUNCH_VARS} | {"PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    code, output, _ = run_job(argv, job, env)
    assert code == 0, output[-4000:]
    losses = train_losses(job / "runs" / "job")
    assert sorted(losses) == list(range(1, STEPS + 1))
    return base / "cache", losses


def resumed_losses(job: Path, kept: int) -> dict[int, float]:
    """The job's losses, after checking that its second part continued at step ``kept`` + 1 (the
    steps up to the checkpoint were logged once, by the first part)."""
    steps = [r["step"] for r in read_metrics(job / "runs" / "job" / "metrics.jsonl") if r["kind"] == "train"]
    assert all(steps.count(step) == 1 for step in range(1, kept + 1)), steps
    return train_losses(job / "runs" / "job")


def kept_step(job: Path) -> int:
    kept = int((job / "runs" / "job" / "checkpoints" / "latest").read_text().strip().removeprefix("step"))
    assert 2 <= kept < STEPS
    return kept


@pytest.mark.slow
def test_readme_multinode_command_over_pdsh_ssh_fails_fast_and_resumes(nodes, reference, demo_paths, tmp_path, documented_master_port):
    cache, expected = reference
    job = lay_out_job(tmp_path / "job", demo_paths, cache)
    (job / "hostfile").write_text("node001 slots=1\nnode002 slots=1\n")
    deepspeed_env = readme_deepspeed_env()
    (job / ".deepspeed_env").write_text("".join(f"{name}={value}\n" for name, value in deepspeed_env.items()))
    env = job_env(nodes)
    command = readme_multinode_command()
    assert command == (
        "deepspeed --hostfile hostfile --master_addr node001 --master_port 29500 launch/pretrain.py "
        "--spec run.yaml --ds-config ds_configs/zero2.json"
    )
    with socket.socket() as probe:  # the README's port must be free (as torch's store binds it) for its command to run as written
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        probe.bind(("127.0.0.1", documented_master_port))

    # the README command; after its first checkpoint, rank 1 (on node002) is killed
    latest = job / "runs" / "job" / "checkpoints" / "latest"
    seen: dict[int, dict[str, str]] = {}

    def kill_rank_1_after_a_checkpoint() -> bool:
        if not latest.is_file():
            return False
        for rank in (0, 1):
            seen[rank] = rank_process(nodes, rank).environ()
        rank_process(nodes, 1).send_signal(signal.SIGKILL)
        return True

    code, output, took = run_job(shlex.split(command), job, env, until=kill_rank_1_after_a_checkpoint)
    nodes.kill_sessions()
    assert seen, f"the job ended before its first checkpoint:\n{output[-4000:]}"
    assert code != 0, output[-4000:]
    # each rank ran on its node, reached over ssh, with the environment of .deepspeed_env and the venv's PYTHONPATH
    for rank, address in ((0, "127.0.0.1"), (1, "127.0.0.2")):
        assert seen[rank]["SSH_CONNECTION"].split()[2] == address
        assert {name: seen[rank].get(name) for name in deepspeed_env} == deepspeed_env
        assert str(ROOT) in seen[rank]["PYTHONPATH"].split(":")
    assert took < TIMEOUT_S, f"the job took {took:.0f} s to fail:\n{output[-4000:]}"
    errors = [line for line in output.splitlines() if "[rank 0] error:" in line]
    assert len(errors) == 1 and "lost its connection to another rank: rank 1 (last step begun: " in errors[0], output[-4000:]
    assert "; on node 1, host " in errors[0] and errors[0].startswith("node001: "), errors[0]
    assert "Traceback" not in output, output[-4000:]
    assert "pdsh@" in output and "node002: ssh exited with exit code" in output  # pdsh names the node that failed
    kept = kept_step(job)

    # the README command with --resume finishes the job from the kept checkpoint: the single-node losses
    code, output, _ = run_job([*shlex.split(command), "--resume"], job, env)
    nodes.kill_sessions()
    assert code == 0, output[-4000:]
    assert resumed_losses(job, kept) == expected


SBATCH = "sbatch launch/slurm_pretrain.sbatch run.yaml ds_configs/zero2.json"  # as README.md states it
CPU_NODES = ["--gpus-per-node=0", "--cpus-per-task=1"]  # the script's own remedy for CPU-only nodes (its header, README)


def submit(cluster: Cluster, job: Path, env: dict[str, str], *extra: str) -> str:
    argv = shlex.split(SBATCH)
    result = cluster.command(argv[0], *CPU_NODES, *argv[1:], *extra, cwd=job, env=env)
    assert result.returncode == 0 and result.stdout.startswith("Submitted batch job "), result.stdout + result.stderr
    return result.stdout.split()[-1]


def wait_for(cluster: Cluster, job_id: str, job: Path, done, timeout: float = 240) -> None:
    deadline = time.monotonic() + timeout
    while not done():
        out = job / f"aam-ds-pretrain-{job_id}.out"
        assert time.monotonic() < deadline, f"job {job_id}: {cluster.job_state(job_id)}\n{out.read_text()[-4000:] if out.is_file() else ''}"
        time.sleep(0.1)


@pytest.mark.slow
def test_sbatch_script_under_slurm_trains_on_two_nodes_and_resumes_after_scancel(cluster, reference, demo_paths, tmp_path):
    """Item 2: the sbatch script under a real SLURM (two slurmd nodes): cancelled after its first
    checkpoint, then submitted again with --resume, it ends with the single-node losses."""
    cache, expected = reference
    job = lay_out_job(tmp_path / "job", demo_paths, cache)
    env = {k: v for k, v in os.environ.items() if k not in LAUNCH_VARS and k != "OMP_NUM_THREADS"}
    env |= {"PATH": f"{BIN}{os.pathsep}{env['PATH']}", "PYTHONPATH": str(ROOT), "PYTHONUNBUFFERED": "1"}  # the activated venv
    assert SBATCH in (ROOT / "README.md").read_text()

    first = submit(cluster, job, env)
    latest = job / "runs" / "job" / "checkpoints" / "latest"
    wait_for(cluster, first, job, lambda: latest.is_file() or cluster.job_state(first) not in ("PENDING", "RUNNING"))
    assert cluster.command("scancel", first).returncode == 0
    wait_for(cluster, first, job, lambda: cluster.job_state(first) in ("CANCELLED", "GONE"), timeout=60)
    log = (job / f"aam-ds-pretrain-{first}.out").read_text()
    port = 20000 + int(first) % 10000
    assert f"aam-ds: 2 nodes x 1 ranks, master node001:{port}, hostfile {job}/hostfile.{first}, OMP_NUM_THREADS=1" in log, log[-3000:]
    assert (job / f"hostfile.{first}").read_text() == "node001 slots=1\nnode002 slots=1\n"
    kept = kept_step(job)

    second = submit(cluster, job, env, "--resume")
    wait_for(cluster, second, job, lambda: cluster.job_state(second) not in ("PENDING", "RUNNING", "COMPLETING"))
    log = (job / f"aam-ds-pretrain-{second}.out").read_text()
    assert cluster.job_state(second) == "COMPLETED", log[-4000:]
    assert resumed_losses(job, kept) == expected


def test_sbatch_script_outside_slurm_says_so(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_")}
    result = subprocess.run(
        ["bash", str(ROOT / "launch" / "slurm_pretrain.sbatch"), "run.yaml"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 2 and not list(tmp_path.iterdir())
    assert result.stderr.startswith(
        "error: launch/slurm_pretrain.sbatch runs inside a SLURM job (SLURM_JOB_ID / "
        "SLURM_JOB_NODELIST are unset). Fix: submit it with 'sbatch "
    ), result.stderr
