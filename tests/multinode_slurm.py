"""A real SLURM cluster of two nodes on one machine for the multi-node tests: munged, slurmctld and
two slurmd daemons (``slurmd -N node001`` on 127.0.0.1, ``-N node002`` on 127.0.0.2, one CPU each),
Debian's slurm-wlm 22.05, with a minimal configuration written into a temporary folder (no
cgroups: ``proctrack/linuxproc``, ``task/none``; no accounting). Commands reach it through
``SLURM_CONF``. :func:`start_cluster` skips the test with the reason when it cannot run.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

import psutil
import pytest
from multinode_nodes import NODES, SETUP, free_port_on_both

DAEMONS = ("munged", "slurmctld", "slurmd", "sbatch", "scontrol", "sinfo", "squeue", "scancel")


@dataclass
class Cluster:
    """The daemons and the environment (``SLURM_CONF``) that SLURM's commands need to reach them."""

    folder: Path
    env: dict[str, str]
    daemons: list[subprocess.Popen] = field(default_factory=list)

    def command(self, *argv: str, cwd: Path | None = None, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
        return subprocess.run(list(argv), cwd=cwd, env={**(env or os.environ), **self.env}, capture_output=True, text=True, timeout=60)

    def job_state(self, job_id: str) -> str:
        """The job's state (PENDING, RUNNING, COMPLETED, CANCELLED, FAILED, ...) as slurmctld has it."""
        out = self.command("scontrol", "show", "job", job_id).stdout
        return next((word.split("=", 1)[1] for word in out.split() if word.startswith("JobState=")), "GONE")

    def stop(self) -> None:
        """Cancel what is left of the jobs (their steps run under slurmstepd, outside the daemons'
        process trees), then SIGKILL the daemons."""
        if self.command("scancel", "--full", "--partition=debug").returncode == 0:
            deadline = time.monotonic() + 20
            while self.command("squeue", "-h").stdout.strip() and time.monotonic() < deadline:
                time.sleep(0.3)
        for daemon in reversed(self.daemons):
            try:
                for proc in [*psutil.Process(daemon.pid).children(recursive=True), psutil.Process(daemon.pid)]:
                    proc.send_signal(signal.SIGKILL)
            except psutil.NoSuchProcess:
                pass
            daemon.wait(10)


def _config(folder: Path, ports: dict[str, int], munge_socket: Path) -> str:
    nodes = "".join(
        f"NodeName={name} NodeHostname={os.uname().nodename} NodeAddr={address} Port={ports[name]} CPUs=1 State=UNKNOWN\n"
        for name, address in NODES.items()
    )
    return (
        f"ClusterName=aamtest\nSlurmctldHost={os.uname().nodename}(127.0.0.1)\nSlurmctldPort={ports['ctld']}\n"
        f"AuthType=auth/munge\nAuthInfo=socket={munge_socket}\nCredType=cred/munge\nSlurmUser=root\nSlurmdUser=root\n"
        f"StateSaveLocation={folder / 'state'}\nSlurmdSpoolDir={folder / 'spool-%n'}\n"
        f"SlurmctldPidFile={folder / 'slurmctld.pid'}\nSlurmdPidFile={folder / 'slurmd-%n.pid'}\n"
        f"SlurmctldLogFile={folder / 'slurmctld.log'}\nSlurmdLogFile={folder / 'slurmd-%n.log'}\n"
        "ProctrackType=proctrack/linuxproc\nTaskPlugin=task/none\nJobAcctGatherType=jobacct_gather/none\n"
        "AccountingStorageType=accounting_storage/none\nSchedulerType=sched/builtin\nSelectType=select/cons_tres\n"
        "SelectTypeParameters=CR_CPU\nReturnToService=2\nMpiDefault=none\nKillWait=5\nMailProg=/bin/true\n"
        + nodes
        + "PartitionName=debug Nodes="
        + ",".join(NODES)
        + " Default=YES MaxTime=INFINITE State=UP\n"
    )


def _missing() -> list[str]:
    return [name for name in DAEMONS if not (shutil.which(name) or Path(f"/usr/sbin/{name}").is_file())]


def start_cluster(folder: Path) -> Cluster:
    """Start munged, slurmctld and the two slurmd in ``folder`` and wait until both nodes are idle."""
    if _missing():
        if os.geteuid() != 0:
            pytest.skip(f"needs SLURM ({', '.join(_missing())}): run scripts/setup_multinode.sh as root")
        result = subprocess.run(["bash", str(SETUP)], capture_output=True, text=True, timeout=600)
        if _missing():
            pytest.skip(f"scripts/setup_multinode.sh could not install SLURM: {result.stderr[-500:]}")
    if os.geteuid() != 0:
        pytest.skip("slurmd runs jobs as root here (SlurmdUser=root): run the tests as root")
    (folder / "state").mkdir()
    munge = folder / "munge"
    munge.mkdir(mode=0o755)
    key = munge / "munge.key"
    key.write_bytes(os.urandom(1024))
    key.chmod(0o600)
    ports = {"ctld": free_port_on_both(), **{name: free_port_on_both() for name in NODES}}
    conf = folder / "slurm.conf"
    conf.write_text(_config(folder, ports, munge / "socket"))
    cluster = Cluster(folder, {"SLURM_CONF": str(conf)})
    sbin = Path("/usr/sbin")
    commands = [
        [
            str(sbin / "munged"),
            "-F",
            "--force",
            f"--socket={munge / 'socket'}",
            f"--key-file={key}",
            f"--pid-file={munge / 'pid'}",
            f"--log-file={munge / 'log'}",
            f"--seed-file={munge / 'seed'}",
        ],
        [str(sbin / "slurmctld"), "-D", "-f", str(conf)],
        *([str(sbin / "slurmd"), "-D", "-N", name, "-f", str(conf)] for name in NODES),
    ]
    for argv in commands:
        cluster.daemons.append(
            subprocess.Popen(
                argv,
                env={**os.environ, **cluster.env},
                stdout=open(folder / "daemons.log", "a"),
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        )
        time.sleep(0.5 if argv[0].endswith("munged") else 0)
    deadline = time.monotonic() + 60
    while True:
        states = cluster.command("sinfo", "-h", "-N", "-o", "%N %t").stdout.split()
        if states.count("idle") == len(NODES):
            return cluster
        if time.monotonic() > deadline or any(d.poll() is not None for d in cluster.daemons):
            cluster.stop()
            pytest.fail(f"SLURM did not come up: {states} {(folder / 'daemons.log').read_text()[-1500:]}")
        time.sleep(0.3)
